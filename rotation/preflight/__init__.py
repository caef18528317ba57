"""Preflight: why would rotating this secret fail? One invocation, one report, back within ten seconds.

Invoked as ``{"Preflight": true, "SecretId": ...}`` (the console's Test button) or locally as
``rotation doctor``. The checks walk the path a rotation takes, in order: the Secrets Manager endpoint, the
secret, its rotation state, the database's name, port and TLS, the AWSCURRENT login and, when the secret has
a ``masterarn``, the admin secret and its role privileges. A failing check says what to change.

Why the timeouts are short and every check runs under a deadline: the most common failure, a function in a
private subnet with no route to Secrets Manager, otherwise shows up only as a Lambda timeout whose last log
line is "Found credentials in environment variables". Each network wait is bounded (2 s, libpq's minimum
connect timeout), a check that still overruns is abandoned on its thread, and no check starts once the report
budget is spent, so the report always arrives, whatever hangs.

Everything here is read-only: DescribeSecret, GetSecretValue, DNS, TCP, a TLS handshake, logins and catalog
queries. Details and fixes never carry a password.
"""

from rotation.preflight.checks import REPORT_BUDGET_S, Preflight, diagnose, run_preflight
from rotation.preflight.report import CheckResult, Finding, PreflightReport, Status

__all__ = ["REPORT_BUDGET_S", "CheckResult", "Finding", "Preflight", "PreflightReport", "Status", "diagnose",
           "run_preflight"]
