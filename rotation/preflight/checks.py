"""The checks, in the order a rotation walks its path, and the Preflight that runs them under a deadline."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.config import Config
from botocore.exceptions import NoCredentialsError

from rotation import wiring
from rotation.config import Settings
from rotation.credentials import DatabaseCredentials, parse_secret_string
from rotation.database import PostgresDatabase, one_row
from rotation.events import PreflightEvent
from rotation.exceptions import (
    AdminEndpointUnknown,
    ConfigurationError,
    DatabaseUnreachable,
    ForeignEndpoint,
    LoginRefused,
    RdsApiError,
    RotationError,
    SecretsManagerError,
    SecretsManagerUnreachable,
    TLSError,
)
from rotation.observability import logger
from rotation.policy import AdminServer
from rotation.ports import AWSCURRENT, AWSPENDING, SecretMetadata
from rotation.preflight.probes import (
    NETWORK_TIMEOUT_S,
    SSL_REQUEST,
    TLS_FIX,
    CheckTimedOut,
    tls_handshake,
    within,
)
from rotation.preflight.report import CheckResult, Finding, PreflightReport, Status, fail, ok, skip, warn
from rotation.protocol import AlternatingUsers, SecretReads, Strategy, choose_strategy, original_role, toggle_clone
from rotation.rds_directory import RDS_API_FIX
from rotation.secrets_store import NO_ROUTE_FIX, SecretsManagerStore, unreachable_fix

#: The report must come back within 10 s; no check starts after this much time, and a running one is cut off.
REPORT_BUDGET_S = 9.0
#: A check doing one or two network round trips; above NETWORK_TIMEOUT_S so the check's own timeout, which
#: names the problem, normally fires before the deadline guard's generic one.
CHECK_LIMIT_S = 3.0
#: Below this, starting another network check would only produce a guard timeout.
MIN_CHECK_S = 0.5

#: One attempt, short timeouts: diagnosis, unlike rotation, must not retry its way past the report budget.
PREFLIGHT_CLIENT_CONFIG = Config(
    connect_timeout=NETWORK_TIMEOUT_S,
    read_timeout=NETWORK_TIMEOUT_S,
    retries={"total_max_attempts": 1, "mode": "standard"},
    user_agent_extra="aurora-postgres-rotation-preflight",
)

UNREADABLE_FIX = (
    "check the secret id, and that the function's execution role may secretsmanager:DescribeSecret and "
    "secretsmanager:GetSecretValue on it (and kms:Decrypt when it uses a customer managed key)"
)
MALFORMED_FIX = (
    "store the secret as 'Amazon RDS database credentials' JSON: engine, host, port, username, password, dbname "
    "(and masterarn, the admin secret's ARN, for alternating users)"
)
DNS_FIX = (
    "check the secret's host key; from a VPC, the VPC needs DNS resolution and DNS hostnames enabled, and a "
    "private hosted zone must be associated with it"
)
NETWORK_FIX = (
    "check the security groups (the database's must allow inbound TCP on its port from the function's), the "
    "function's subnets and their route tables and network ACLs (they must reach the database's subnets)"
)
PLAINTEXT_FIX = (
    'set "ssl": true in the secret (verify-full) and PGSSLROOTCERT to the CA bundle (for Aurora, the RDS '
    "global bundle)"
)
ADMIN_READ_FIX = (
    "the execution role needs secretsmanager:GetSecretValue on the masterarn secret (and kms:Decrypt when it "
    "uses a customer managed key); the masterarn key must hold that secret's full ARN"
)
#: Reports go to whoever may invoke the function: they name no admin user or host.
ADMIN_NAME_IN_REPORTS = "<admin user>"
CREATEROLE_FIX = (
    "point masterarn at the cluster's master user secret (on Aurora it has CREATEROLE through rds_superuser), "
    "or ALTER ROLE {admin} CREATEROLE as a superuser"
)


@dataclass(slots=True)
class _Facts:
    """What earlier checks established; a later check whose prerequisite is missing skips and says why."""

    secret_id: str
    env: Mapping[str, str]
    settings: Settings = field(default_factory=Settings)
    store: SecretsManagerStore | None = None
    #: Why the Secrets Manager client could not be built (no region), for the endpoint check to report.
    client_error: ConfigurationError | None = None
    #: AWSCURRENT logged in at the secret's own address (current_login).
    current_logs_in: bool = False
    metadata: SecretMetadata | None = None
    describe_error: SecretsManagerError | None = None
    current_raw: str | None = field(default=None, repr=False)
    current: DatabaseCredentials | None = None
    strategy: Strategy | None = None
    address: str | None = None
    postgres_answers: bool = False
    tls_offered: bool | None = None
    admin: DatabaseCredentials | None = None
    admin_server: AdminServer | None = None
    admin_row: tuple[int, bool, bool] | None = None
    #: role name -> (is superuser, admin holds ADMIN OPTION on it)
    target_roles: Mapping[str, tuple[bool, bool]] = field(default_factory=dict)


def _fix_for(exc: RotationError, default: str | None, endpoint: str | None) -> str | None:
    if isinstance(exc, SecretsManagerUnreachable):
        return unreachable_fix(endpoint)
    if isinstance(exc, DatabaseUnreachable):
        return NETWORK_FIX
    if isinstance(exc, TLSError):
        return TLS_FIX
    return default


class Preflight:
    """Runs the checks for one secret. ``env`` defaults to the process environment, as the handler's settings."""

    def __init__(self, env: Mapping[str, str] | None = None, *, budget_s: float = REPORT_BUDGET_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._env = os.environ if env is None else env
        self._budget_s = budget_s
        self._clock = clock
        #: (name, check, fix for an error the check does not handle itself)
        self._checks: tuple[tuple[str, Callable[[_Facts], Finding], str | None], ...] = (
            ("configuration", self._configuration, "fix the function's environment variables"),
            ("secrets_manager_endpoint", self._secrets_manager_endpoint, NO_ROUTE_FIX),
            ("secret_readable", self._secret_readable, UNREADABLE_FIX),
            ("secret_well_formed", self._secret_well_formed, MALFORMED_FIX),
            ("rotation_state", self._rotation_state, None),
            ("database_host_resolves", self._host_resolves, DNS_FIX),
            ("database_port_answers", self._port_answers, NETWORK_FIX),
            ("database_tls", self._tls, TLS_FIX),
            ("current_login", self._current_login, None),
            ("admin_secret_readable", self._admin_secret_readable, ADMIN_READ_FIX),
            ("admin_login", self._admin_login, None),
            ("admin_privileges", self._admin_privileges, None),
        )

    def run(self, secret_id: str) -> PreflightReport:
        started = self._clock()
        deadline = started + self._budget_s
        facts = _Facts(secret_id=secret_id, env=self._env)
        results = []
        for name, check, default_fix in self._checks:
            check_started = self._clock()
            remaining = deadline - check_started
            if remaining < MIN_CHECK_S:
                finding = skip(f"the preflight's {self._budget_s:.0f} s budget is spent")
            else:
                finding = self._run_one(name, check, facts, min(CHECK_LIMIT_S, remaining), default_fix)
            for key, value in finding.learned.items():
                setattr(facts, key, value)
            results.append(CheckResult(
                name=name,
                status=finding.status,
                duration_ms=round((self._clock() - check_started) * 1000, 1),
                # Built from fields that cannot hold a password (names, addresses, versions, our own errors'
                # messages, which never quote one); never searched and replaced: marks left where a short
                # password occurred would spell out its positions.
                detail=finding.detail,
                fix=finding.fix,
            ))
        return PreflightReport(
            secret_id=secret_id,
            checks=tuple(results),
            duration_ms=round((self._clock() - started) * 1000, 1),
            secret_arn=facts.metadata.arn if facts.metadata else None,
        )

    @staticmethod
    def _run_one(name: str, check: Callable[[_Facts], Finding], facts: _Facts, limit: float,
                 default_fix: str | None) -> Finding:
        try:
            return within(limit, lambda: check(facts))
        except CheckTimedOut:
            return fail(f"no result within {limit:.1f} s", default_fix)
        except RotationError as exc:
            return fail(str(exc), _fix_for(exc, default_fix, facts.store.endpoint if facts.store else None))
        except Exception as exc:
            # The message of an unexpected exception is not ours to vet for secrets, and the report goes into the
            # log and the Lambda response: name the type only, and log the traceback for whoever debugs it.
            logger.exception(f"preflight check {name} failed unexpectedly",
                             extra={"error": type(exc).__name__, "check": name})
            return fail(f"unexpected {type(exc).__name__}; its traceback is in the log", default_fix)

    # ------------------------------------------------------------------------------------------ Secrets Manager

    @staticmethod
    def _configuration(facts: _Facts) -> Finding:
        settings = Settings.from_env(facts.env)
        endpoint = settings.secrets_manager_endpoint or facts.env.get("AWS_ENDPOINT_URL_SECRETS_MANAGER")
        # The client is built here, not in the endpoint check: loading the SDK's service model takes a second or
        # two on a cold, busy container, which must not eat into the network check's own time limit.
        built = _secrets_store(settings)
        return ok(
            f"strategy {settings.strategy.value}, PGCONNECT_TIMEOUT {settings.connect_timeout} s, "
            f"CA bundle {settings.ssl_root_cert or 'system trust store'}, "
            f"Secrets Manager endpoint {endpoint or 'resolved by boto3'}",
            settings=settings, **built,
        )

    @staticmethod
    def _secrets_manager_endpoint(facts: _Facts) -> Finding:
        # DescribeSecret doubles as the reachability probe: any HTTP answer, even an error, proves the route.
        store, error = facts.store, facts.client_error
        if store is None and error is None:  # the configuration check failed before building it: the defaults
            built = _secrets_store(facts.settings)
            store, error = built.get("store"), built.get("client_error")
        if error is not None or store is None:
            return fail(str(error),
                        "set AWS_REGION (Lambda sets it for you; locally, a profile with a region works too)")
        try:
            metadata = store.describe(facts.secret_id)
        except SecretsManagerUnreachable as exc:
            return fail(f"cannot reach the Secrets Manager endpoint {store.endpoint}: {_unreachable_why(exc)}",
                        unreachable_fix(store.endpoint))
        except SecretsManagerError as exc:
            if isinstance(exc.__cause__, NoCredentialsError):
                return fail(str(exc), "give the function an execution role (locally: a profile or AWS_* variables)")
            return ok(f"{store.endpoint} answered (DescribeSecret returned an error, see secret_readable)",
                      store=store, describe_error=exc)
        return ok(f"{store.endpoint} answered DescribeSecret", store=store, metadata=metadata)

    @staticmethod
    def _secret_readable(facts: _Facts) -> Finding:
        if facts.describe_error is not None:
            return fail(str(facts.describe_error), UNREADABLE_FIX)
        if facts.store is None or facts.metadata is None:
            return skip("Secrets Manager did not answer")
        raw = facts.store.get_secret_string(facts.metadata.arn, AWSCURRENT)
        return ok(f"DescribeSecret and GetSecretValue (AWSCURRENT) succeeded for {facts.metadata.arn}",
                  current_raw=raw)

    @staticmethod
    def _secret_well_formed(facts: _Facts) -> Finding:
        if facts.current_raw is None or facts.metadata is None:
            return skip("the AWSCURRENT value could not be read")
        source = f"AWSCURRENT of secret {facts.metadata.arn}"
        creds = DatabaseCredentials.from_secret(parse_secret_string(facts.current_raw, source), source)
        strategy = choose_strategy(facts.settings.strategy, creds, facts.metadata.arn)
        admin = f", admin secret {creds.masterarn}" if creds.masterarn else ""
        return ok(f"user {creds.username!r} at {creds.address}/{creds.dbname}, sslmode={creds.sslmode}, "
                  f"strategy {strategy.name}{admin}", current=creds, strategy=strategy)

    @staticmethod
    def _rotation_state(facts: _Facts) -> Finding:
        metadata = facts.metadata
        if metadata is None:
            return skip("the secret could not be described")
        current = metadata.version_with(AWSCURRENT)
        pending = metadata.version_with(AWSPENDING)
        if pending is not None and pending != current:
            return warn(
                f"AWSPENDING is on version {pending}, not on the AWSCURRENT version {current}: a rotation is "
                "running now, or a previous one did not complete, and the service refuses new rotations until "
                "it does",
                f"if no rotation is running, run rotation repair --secret-id {facts.secret_id}: it explains what "
                "the failed rotation left and fixes it",
            )
        if not metadata.rotation_enabled:
            return warn(
                f"rotation is not enabled for this secret (AWSCURRENT is version {current})",
                "turn rotation on with this function (the console's Rotation configuration, RotateSecret with "
                "RotationLambdaARN, or a RotationSchedule in the template)",
            )
        return ok(f"rotation enabled, no rotation in progress; AWSCURRENT is version {current}")

    # ------------------------------------------------------------------------------------------ network path

    @staticmethod
    def _host_resolves(facts: _Facts) -> Finding:
        creds = facts.current
        if creds is None:
            return skip("no well-formed AWSCURRENT secret to take the host from")
        try:
            infos = socket.getaddrinfo(creds.host, creds.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return fail(f"{creds.host} does not resolve: {exc.strerror}", DNS_FIX)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        return ok(f"{creds.host} resolves to {', '.join(addresses)}", address=addresses[0])

    @staticmethod
    def _port_answers(facts: _Facts) -> Finding:
        creds = facts.current
        if creds is None or facts.address is None:
            return skip("the database host did not resolve")
        where = f"{facts.address}:{creds.port}"
        try:
            sock = socket.create_connection((facts.address, creds.port), timeout=NETWORK_TIMEOUT_S)
        except TimeoutError:
            return fail(f"no answer from {where} within {NETWORK_TIMEOUT_S} s: packets are dropped on the way",
                        NETWORK_FIX)
        except ConnectionRefusedError:
            return fail(f"{where} refused the connection: nothing listens on that port",
                        "check the secret's port, and that the cluster or instance is available (not stopped)")
        except OSError as exc:
            return fail(f"cannot connect to {where}: {exc.strerror or exc}", NETWORK_FIX)
        with sock:
            try:
                sock.sendall(SSL_REQUEST)
                answer = sock.recv(1)
            except TimeoutError:
                return fail(
                    f"{where} accepted the TCP connection but no PostgreSQL answered within {NETWORK_TIMEOUT_S} s",
                    "something accepts connections on this port without speaking PostgreSQL: check the port, and "
                    "whether a proxy or load balancer in between has a healthy target",
                )
            except OSError as exc:
                return fail(f"{where} dropped the connection: {exc.strerror or exc}", NETWORK_FIX)
        if answer not in (b"S", b"N"):
            return fail(f"{where} answered, but not as PostgreSQL does", "check the secret's host and port")
        offered = answer == b"S"
        return ok(f"PostgreSQL answers at {where} (TLS {'offered' if offered else 'not offered'})",
                  postgres_answers=True, tls_offered=offered)

    @staticmethod
    def _tls(facts: _Facts) -> Finding:
        creds = facts.current
        if creds is None:
            return skip("no well-formed AWSCURRENT secret")
        if creds.sslmode == "disable":
            return warn("the secret's ssl key is false: the database connection is not encrypted", PLAINTEXT_FIX)
        if not facts.postgres_answers or facts.address is None:
            return skip("the database port did not answer")
        if not facts.tls_offered:
            return fail(f"the server at {creds.address} does not offer TLS, but sslmode={creds.sslmode} requires it",
                        "enable ssl on the server, or check that host and port are the database's "
                        "(Aurora always offers TLS)")
        return tls_handshake(creds, facts.address, facts.settings.ssl_root_cert)

    # ------------------------------------------------------------------------------------------ logins

    @staticmethod
    def _database(facts: _Facts) -> PostgresDatabase:
        return wiring.database(facts.settings, connect_timeout=NETWORK_TIMEOUT_S, retries=False)

    def _current_login(self, facts: _Facts) -> Finding:
        creds = facts.current
        if creds is None:
            return skip("no well-formed AWSCURRENT secret")
        if not facts.postgres_answers:
            return skip("the database port did not answer")
        try:
            with self._database(facts).connect(creds) as conn:
                version, = one_row(conn.execute("SELECT current_setting('server_version')"), "the server version")
        except LoginRefused as exc:
            return fail(
                str(exc),
                f"AWSCURRENT's password is not the database's: if a rotation stopped half-way, rotation repair "
                f"--secret-id {facts.secret_id} explains the state and fixes it; otherwise set the role's password "
                "as an admin and store the same password in the secret",
            )
        return ok(f"AWSCURRENT logs in as {creds.username!r} at {creds.address}/{creds.dbname} through libpq "
                  f"(sslmode={creds.sslmode}, PostgreSQL {version})",
                  current_logs_in=True)

    @staticmethod
    def _admin_secret_readable(facts: _Facts) -> Finding:
        creds = facts.current
        if creds is None or facts.store is None or facts.metadata is None:
            return skip("no well-formed AWSCURRENT secret")
        if not creds.masterarn:
            return skip("no masterarn: single-user rotation, the user changes its own password")
        # The rotation's own read and policy: the admin's server from the admin side only, and the user secret
        # pointing at it. Whoever invokes the preflight learns whether that holds, not who or where the admin is.
        try:
            access = SecretReads(facts.store, facts.metadata, facts.settings, wiring.directory).admin(creds)
        except ForeignEndpoint:
            return fail("admin secret readable, but the user secret does not point at the admin's server or another "
                        "endpoint of its cluster: the rotation refuses to use the admin for it",
                        "point the user secret's host and port at the cluster's endpoint (writer, reader, instance "
                        "or custom, as the RDS API lists them)")
        except AdminEndpointUnknown:
            return fail("admin secret readable; admin endpoint resolved: no (the admin secret names no host and "
                        "is not tagged as RDS-managed)", "add host/port to the admin secret, or set ADMIN_ENDPOINT "
                        "on the function")
        except RdsApiError as exc:
            return fail(f"admin secret readable; admin endpoint resolved: no (the RDS API: {type(exc).__name__})",
                        RDS_API_FIX)
        return ok("admin secret readable; admin endpoint resolved: yes; the user secret points at the admin's "
                  "cluster", admin=access.creds, admin_server=access.server)

    def _admin_login(self, facts: _Facts) -> Finding:
        admin, server, creds = facts.admin, facts.admin_server, facts.current
        if admin is None or server is None or creds is None:
            return skip("no readable admin secret")
        if server.endpoint == creds.endpoint and not facts.postgres_answers:
            return skip("the database port did not answer")
        roles = _target_roles(creds, facts.strategy)
        database = self._database(facts)
        # The rotation's confused-deputy guard, here too: the admin logs in only for a secret whose AWSCURRENT
        # has just logged in on the admin's own server.
        # current_login made that very login already when the admin's server and TLS are the secret's own.
        proven = facts.current_logs_in and server.login(creds) == creds
        if not proven and not database.can_login(server.login(creds)):
            return fail("AWSCURRENT does not log in on the admin's server; the admin secret is not used for it",
                        "the secret's password must be the database's (rotation repair explains a stuck rotation)")
        try:
            with database.connect(admin, as_admin=True) as conn:
                admin_row = one_row(conn.execute(
                    "SELECT current_setting('server_version_num')::int, rolsuper, rolcreaterole "
                    "FROM pg_roles WHERE rolname = current_user"
                ), "the admin's attributes")
                # 'USAGE WITH ADMIN OPTION' asks for ADMIN OPTION only (any privilege word gives the same
                # answer); a superuser always has it.
                target_rows = conn.execute(
                    "SELECT rolname, rolsuper, pg_has_role(current_user, oid, 'USAGE WITH ADMIN OPTION') "
                    "FROM pg_roles WHERE rolname = ANY(%s)",
                    (list(roles),),
                ).fetchall()
        except LoginRefused:
            return fail("the admin secret's password is refused on the admin's server",
                        "correct the admin secret (for an RDS-managed master secret, check that its rotation "
                        "completed)")
        return ok("admin secret logs in on the admin's server (SCRAM only)", admin_row=tuple(admin_row),
                  target_roles={name: (bool(is_super), bool(has_admin)) for name, is_super, has_admin in target_rows})

    @staticmethod
    def _admin_privileges(facts: _Facts) -> Finding:
        admin, creds = facts.admin, facts.current
        if admin is None or creds is None or facts.admin_row is None:
            return skip("the admin secret did not log in")
        return _judge_admin_privileges(creds, facts.strategy, facts.admin_row, facts.target_roles)


def _secrets_store(settings: Settings) -> dict[str, Any]:
    """The preflight's store, or why it cannot be built (no region), as facts for the next checks."""
    try:
        return {"store": wiring.store(settings, PREFLIGHT_CLIENT_CONFIG)}
    except ConfigurationError as exc:  # no region: secrets_manager_client says so, naming AWS_REGION
        return {"client_error": exc}


def _unreachable_why(exc: SecretsManagerUnreachable) -> str:
    cause = type(exc.__cause__).__name__
    return {
        "ConnectTimeoutError": f"no answer to the connection attempt within {NETWORK_TIMEOUT_S} s (packets are "
                               "dropped: no route)",
        "ReadTimeoutError": f"the connection opened but no answer came within {NETWORK_TIMEOUT_S} s",
        "EndpointConnectionError": "the connection failed (refused, or the name does not resolve)",
    }.get(cause, cause)


def _target_roles(creds: DatabaseCredentials, strategy: Strategy | None) -> tuple[str, ...]:
    """The roles the admin must be able to alter: the user, or for alternating users the original and its clone."""
    if isinstance(strategy, AlternatingUsers):
        original = original_role(creds.username)
        return original, toggle_clone(original)
    return (creds.username,)


def _judge_admin_privileges(creds: DatabaseCredentials, strategy: Strategy | None,
                            admin_row: tuple[int, bool, bool], roles: Mapping[str, tuple[bool, bool]]) -> Finding:
    admin = ADMIN_NAME_IN_REPORTS
    version_num, is_super, can_create = admin_row
    major = version_num // 10000
    if is_super:
        return ok(f"{admin!r} is a superuser: it may create roles and change any role's password")
    if not can_create:
        return fail(f"{admin!r} has neither CREATEROLE nor SUPERUSER: it cannot create roles or change another "
                    "role's password", CREATEROLE_FIX.format(admin=admin))
    alternating = isinstance(strategy, AlternatingUsers)
    problems, notes, grants = [], [], []
    for role in _target_roles(creds, strategy):
        if role not in roles:
            if alternating and role != original_role(role):
                notes.append(f"{role!r} does not exist yet; the first rotation creates it")
            else:
                problems.append(f"role {role!r} does not exist")
            continue
        role_is_super, has_admin_option = roles[role]
        if role_is_super:
            problems.append(f"{role!r} is a superuser, whose password only a superuser may change")
        elif major >= 16 and not has_admin_option:
            problems.append(f"{admin!r} lacks ADMIN OPTION on {role!r}, which PostgreSQL {major} requires of a "
                            "CREATEROLE role to change its password or grant its membership")
            grants.append(f"GRANT {role} TO {admin} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE")
    if problems:
        fix = "; ".join(grants) + " (as the role's creator or a superuser)" if grants else (
            "point masterarn at a role that may administer the user (on Aurora, the master user that created it)")
        return fail("; ".join(problems), fix)
    rule = ("and ADMIN OPTION on " + ", ".join(repr(r) for r in roles)) if major >= 16 else \
        f"(enough before PostgreSQL 16; this is {major})"
    detail = f"{admin!r} has CREATEROLE {rule}"
    return ok("; ".join([detail, *notes]))


def diagnose(secret_id: str, env: Mapping[str, str] | None = None) -> PreflightReport:
    """Run every check for ``secret_id``; never raises for what it finds, only reports it."""
    return Preflight(env).run(secret_id)


def run_preflight(event: PreflightEvent) -> dict[str, Any]:
    """The handler's ``{"Preflight": true}`` answer: the report as a dict, also logged (without secrets)."""
    report = diagnose(event.secret_id)
    payload = report.to_dict()
    log = logger.warning if report.status is Status.FAIL else logger.info
    log(report.summary(), extra={"preflight": payload})
    return payload
