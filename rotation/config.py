"""The function's settings, read from the environment once per invocation."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rotation.credentials import SSL_MODES
from rotation.exceptions import ConfigurationError
from rotation.passwords import PasswordPolicy
from rotation.topology import Endpoint

DEFAULT_CONNECT_TIMEOUT = 5
# libpq rounds anything below 2 seconds up to 2; say so instead of pretending.
MIN_CONNECT_TIMEOUT = 2

# The time budget of one rotation step, so that a step fails with its own message before Lambda's timeout ends
# it without a word. Worst case: one Secrets Manager call that exhausts its attempts, then one database connect
# that waits the whole PGCONNECT_TIMEOUT, then the rest of the step.
#: rotation/secrets_store.py's client: 3 attempts, each ending at the 3 s connect timeout or the 5 s read
#: timeout, with at most 50 ms x 2^(n-1) between attempts (timeouts are not throttles).
#: tests/test_template.py checks this figure against that client's configuration.
SECRETS_MANAGER_WORST_CASE_MS = 3 * 5_000 + 50 + 100
#: Everything else: the step's other calls and SQL, a slow TLS handshake, logging.
STEP_ALLOWANCE_MS = 2_000


#: Where the build (Makefile) puts a CA bundle dropped into certs/: next to the package, /var/task/certs on Lambda.
BUNDLED_CA = Path(__file__).resolve().parent.parent / "certs" / "global-bundle.pem"


def default_ssl_root_cert(env: Mapping[str, str]) -> str | None:
    """PGSSLROOTCERT when set; else the RDS bundle shipped in the artifact; else None (system trust store).

    RDS and Aurora certificates are signed by Amazon RDS CAs that no system trust store carries, so a
    bundled file is picked up without anyone having to know its path.
    """
    if env.get("PGSSLROOTCERT"):
        return env["PGSSLROOTCERT"]
    return str(BUNDLED_CA) if BUNDLED_CA.is_file() else None


def parse_endpoint(raw: str, variable: str) -> Endpoint:
    """``host[:port]`` (``[v6-address]:port`` for IPv6), port 5432 by default."""
    text = raw.strip()
    host, port = text, "5432"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigurationError(f"{variable} must be host[:port], got {raw!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or "," in host or any(c.isspace() for c in host) or not port.isdecimal() \
            or not 1 <= int(port) <= 65535:
        raise ConfigurationError(f"{variable} must be one host[:port] (port 1-65535), got {raw!r}")
    return Endpoint(host, int(port))


class StrategyName(enum.StrEnum):
    AUTO = "auto"
    SINGLE_USER = "single-user"
    ALTERNATING_USERS = "alternating-users"


@dataclass(frozen=True, slots=True)
class Settings:
    strategy: StrategyName = StrategyName.AUTO
    password_policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    #: The CA bundle for ``verify-full``; None means the system trust store.
    ssl_root_cert: str | None = None
    #: AWS's functions honour SECRETS_MANAGER_ENDPOINT; boto3 itself does not.
    secrets_manager_endpoint: str | None = None
    #: ADMIN_ENDPOINT: the admin's server when its secret names none (RDS-managed) and the RDS API is not used.
    admin_endpoint: Endpoint | None = None
    #: ADMIN_SSLMODE: TLS for an admin endpoint that comes from ADMIN_ENDPOINT or the RDS API (never from a
    #: user secret).
    admin_sslmode: str = "verify-full"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        raw_strategy = env.get("ROTATION_STRATEGY", StrategyName.AUTO.value).strip().lower() or "auto"
        try:
            strategy = StrategyName(raw_strategy)
        except ValueError:
            allowed = ", ".join(s.value for s in StrategyName)
            raise ConfigurationError(f"ROTATION_STRATEGY must be one of {allowed}, got {raw_strategy!r}") from None
        raw_timeout = env.get("PGCONNECT_TIMEOUT", str(DEFAULT_CONNECT_TIMEOUT)).strip()
        try:
            timeout = int(raw_timeout)
        except ValueError:
            raise ConfigurationError(f"PGCONNECT_TIMEOUT must be whole seconds, got {raw_timeout!r}") from None
        if timeout < MIN_CONNECT_TIMEOUT:
            raise ConfigurationError(f"PGCONNECT_TIMEOUT must be at least {MIN_CONNECT_TIMEOUT} seconds")
        raw_admin_endpoint = env.get("ADMIN_ENDPOINT", "").strip()
        admin_sslmode = env.get("ADMIN_SSLMODE", "verify-full").strip().lower() or "verify-full"
        if admin_sslmode not in SSL_MODES:
            raise ConfigurationError(f"ADMIN_SSLMODE must be one of {', '.join(sorted(SSL_MODES))}, "
                                     f"got {admin_sslmode!r}")
        return cls(
            admin_endpoint=parse_endpoint(raw_admin_endpoint, "ADMIN_ENDPOINT") if raw_admin_endpoint else None,
            admin_sslmode=admin_sslmode,
            strategy=strategy,
            password_policy=PasswordPolicy.from_env(env),
            connect_timeout=timeout,
            ssl_root_cert=default_ssl_root_cert(env),
            secrets_manager_endpoint=env.get("SECRETS_MANAGER_ENDPOINT") or None,
        )


def time_budget_ms(connect_timeout_s: int) -> int:
    """The longest a rotation step may take before it fails with its own message."""
    return SECRETS_MANAGER_WORST_CASE_MS + connect_timeout_s * 1_000 + STEP_ALLOWANCE_MS


def check_time_budget(settings: Settings, remaining_ms: int) -> None:
    """Refuse to start a step that the function's timeout could cut short.

    A Lambda timeout ends the invocation with no message of ours, so a PGCONNECT_TIMEOUT too long for the
    function's Timeout would turn "cannot reach the database" into a silent 30 s hang.
    """
    needed_ms = time_budget_ms(settings.connect_timeout)
    if needed_ms <= remaining_ms:
        return
    longest_fitting = (remaining_ms - SECRETS_MANAGER_WORST_CASE_MS - STEP_ALLOWANCE_MS) // 1_000
    advice = (f"lower PGCONNECT_TIMEOUT to at most {longest_fitting} s or raise the function's Timeout"
              if longest_fitting >= MIN_CONNECT_TIMEOUT else "raise the function's Timeout")
    raise ConfigurationError(
        f"PGCONNECT_TIMEOUT={settings.connect_timeout} s does not fit the function's Timeout: a step may wait "
        f"{SECRETS_MANAGER_WORST_CASE_MS / 1000:g} s for Secrets Manager, {settings.connect_timeout} s for a "
        f"database connect and {STEP_ALLOWANCE_MS / 1000:g} s for the rest ({needed_ms / 1000:g} s), but "
        f"{remaining_ms / 1000:g} s remain; {advice} (template parameters PgConnectTimeout, RotationTimeout)"
    )
