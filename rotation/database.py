"""PostgreSQL behind the :class:`~rotation.ports.Database` interface, on psycopg 3.

Each method opens its own short connection, does one idempotent thing and closes it, so any method can be
retried after any failure. Passwords reach the server only as SCRAM-SHA-256 verifiers computed here by
libpq: statement logs, pg_stat_statements and audit extensions never see a plaintext password.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import NotRequired, TypedDict, TypeVar

import psycopg
from psycopg import sql

from rotation.credentials import DatabaseCredentials
from rotation.exceptions import (
    AdministrativeRoleRefused,
    AuthenticationMethodRejected,
    CleartextPasswordRefused,
    ConnectionRejected,
    DatabaseError,
    DatabaseUnreachable,
    LoginRefused,
    PrivilegeError,
    TLSError,
    VerificationError,
)
from rotation.observability import logger
from rotation.policy import ADMINISTRATIVE_ATTRIBUTES, POWERFUL_ROLES, alternate_role_mark
from rotation.transient import Budget, Transient, classify, retry_transient

APPLICATION_NAME = "secrets-rotation"
#: How often testSecret on a reader tries again while the password change replicates.
_REPLICA_POLL_S = 0.2
T = TypeVar("T")
_Row = TypeVar("_Row")
_TLS_MARKERS = ("ssl", "certificate", "tls")
_UNREACHABLE_MARKERS = {
    "timeout expired": "no answer within {timeout} s: check the security groups, subnets and route tables",
    "connection refused": "the TCP connection was refused: is the server running and the port right?",
    "could not translate host name": "the host name does not resolve (DNS)",
    "name or service not known": "the host name does not resolve (DNS)",
    "no route to host": "no route to the host: check subnets and route tables",
    "network is unreachable": "network unreachable: check subnets and route tables",
}


class ConnectParams(TypedDict):
    """libpq's connection parameters, as :meth:`PostgresDatabase.connect` passes them to ``psycopg.connect``."""

    host: str
    port: int
    dbname: str
    user: str
    password: str
    connect_timeout: int
    sslmode: str
    application_name: str
    require_auth: str
    channel_binding: NotRequired[str]
    hostaddr: NotRequired[str]
    sslrootcert: NotRequired[str]
    options: NotRequired[str]


def one_row(cursor: psycopg.Cursor[_Row], purpose: str) -> _Row:
    """The row of a query that always returns one; a clear error naming ``purpose`` if it returned none."""
    row = cursor.fetchone()
    if row is None:
        raise DatabaseError(f"the query for {purpose} returned no row")
    return row


def scram_verifier(conn: psycopg.Connection, username: str, password: str) -> str:
    """Compute the SCRAM-SHA-256 verifier client-side; the server stores it as is."""
    return conn.pgconn.encrypt_password(password.encode(), username.encode(), b"scram-sha-256").decode()


def _server_reason(exc: Exception, creds: DatabaseCredentials) -> str:
    """The server's or libpq's own words; withheld whole if they could contain the password.

    Never a search-and-replace: with a short password, the positions of the marks would spell where its
    characters occur. libpq does not quote passwords, so this only ever withholds a message by coincidence.
    """
    text = str(exc).strip().splitlines()
    reason = text[-1] if text else type(exc).__name__
    reason = re.sub(r"^(connection failed: )?", "", reason)
    if creds.password and creds.password in reason:
        return f"{type(exc).__name__} (libpq's message withheld: it contains the password's characters)"
    return reason


def classify_connect_error(exc: psycopg.OperationalError, creds: DatabaseCredentials,
                           timeout: int) -> DatabaseError:
    """Turn libpq's connection failure into the one of our errors an operator can act on."""
    message = str(exc).lower()
    who = f"user {creds.username!r} at {creds.address}/{creds.dbname}"
    # Authentication failures carry no SQLSTATE: the message is all there is.
    if "password authentication failed" in message:
        return LoginRefused(f"login refused for {who}: wrong password or no such role")
    if "authentication failed" in message:
        # PAM (rds_iam), LDAP, ident, GSS, RADIUS, certificates: no password this rotation sets can change that.
        method = message.split("authentication failed", 1)[0].split()[-1:] or ["another"]
        return AuthenticationMethodRejected(
            f"login refused for {who} by {method[0]} authentication, not by a password: pg_hba.conf or the role "
            "(for instance membership of rds_iam) selects another method; a password rotation cannot work for it"
        )
    if "server requested a cleartext password" in message or 'auth method "password"' in message:
        return CleartextPasswordRefused(
            f"refused to send the password of user {creds.username!r} in cleartext: {creds.address} asked for "
            "password authentication; configure scram-sha-256 in pg_hba.conf (or check who answers on that address)"
        )
    if "authentication method requirement" in message or "channel binding" in message:
        return AuthenticationMethodRejected(
            f"refused to log in as {who} with an exchange that could be relayed: admin logins use SCRAM-SHA-256 "
            "only, with channel binding over TLS; store the admin's password as a SCRAM verifier "
            f"(password_encryption = scram-sha-256) and check who answers on {creds.address}"
        )
    if "no pg_hba.conf entry" in message or "pg_hba.conf rejects" in message:
        return ConnectionRejected(f"connection rejected for {who}: pg_hba.conf has no entry admitting it "
                                  f"(sslmode={creds.sslmode})")
    if "does not exist" in message and "database" in message:
        return ConnectionRejected(f"connection rejected for {who}: database {creds.dbname!r} does not exist")
    for marker, explanation in _UNREACHABLE_MARKERS.items():
        if marker in message:
            return DatabaseUnreachable(f"cannot reach {creds.address}: {explanation.format(timeout=timeout)}")
    if "does not support ssl" in message:
        return TLSError(
            f"{creds.address} does not offer TLS but the secret requires it (sslmode={creds.sslmode}); enable TLS "
            "on the server, or set \"ssl\": false in the secret if an unencrypted connection is acceptable"
        )
    if any(marker in message for marker in _TLS_MARKERS):
        return TLSError(
            f"TLS to {creds.address} failed with sslmode={creds.sslmode}: {_server_reason(exc, creds)}. "
            "Set PGSSLROOTCERT to the CA bundle that signed the server certificate (for RDS/Aurora, the RDS "
            "global bundle), or set the secret's 'ssl' key explicitly"
        )
    return DatabaseError(f"could not connect as {who}: {_server_reason(exc, creds)}")


def transient_kind(failure: BaseException, *, writes: bool) -> Transient | None:
    """Whether a failure (ours, raised from psycopg's) is one a failover or a connection storm explains."""
    cause: BaseException | None = failure
    while cause is not None and not isinstance(cause, psycopg.Error):
        cause = cause.__cause__
    if cause is None:
        return None
    return classify(cause.sqlstate, str(cause), writes=writes)


class PostgresDatabase:
    """Every method is idempotent and retried, as a whole (connection and statements), on transient failures
    (rotation.transient) while ``retry_budget_s`` lasts; the budget is shared by all calls on one instance, which
    the handler builds per invocation. 0 (the default, for the local tools and the preflight) means one attempt."""

    def __init__(self, connect_timeout: int = 5, ssl_root_cert: str | None = None,
                 host_addresses: Mapping[str, str] | None = None, retry_budget_s: float = 0.0) -> None:
        self._timeout = connect_timeout
        self._ssl_root_cert = ssl_root_cert
        self._budget = Budget(retry_budget_s)
        #: Transient failures ridden out by this adapter; the storm benchmark and the logs read it.
        self.transient_retries = 0
        # Host name -> IP address, passed to libpq as hostaddr so that `host` still serves the TLS name check.
        # A seam for tests that give loopback servers Aurora-style names; production resolves names by DNS.
        self._host_addresses = {name.lower(): address for name, address in (host_addresses or {}).items()}
        #: Connection attempts made by this adapter; the benchmark reads it.
        self.connection_attempts = 0

    def connect_params(self, creds: DatabaseCredentials, *, read_write: bool = False,
                       as_admin: bool = False) -> ConnectParams:
        params: ConnectParams = {
            "host": creds.host,
            "port": creds.port,
            "dbname": creds.dbname,
            "user": creds.username,
            "password": creds.password,
            "connect_timeout": self._timeout,
            "sslmode": creds.sslmode,
            "application_name": APPLICATION_NAME,
            # Never answer a server (or an impostor on a plaintext path) that asks for the cleartext password;
            # SCRAM and md5 exchanges do not reveal it.
            "require_auth": "!password",
        }
        if as_admin:
            # The admin's password is the key to every role: only SCRAM, whose exchange never reveals it, and over
            # TLS bound to the channel, so a relay between us and the server cannot splice in its own session.
            params["require_auth"] = "scram-sha-256"
            if creds.sslmode != "disable":
                params["channel_binding"] = "require"
        address = self._host_addresses.get(creds.host.lower())
        if address is not None:
            params["hostaddr"] = address
        if creds.sslmode in {"verify-ca", "verify-full"}:
            # "system" is libpq's (16+) name for the platform trust store; never a hard-coded path.
            params["sslrootcert"] = self._ssl_root_cert or "system"
        if read_write:
            # A read-only login (default_transaction_read_only = on, as the bootstrap may set) still changes its
            # own password; set in the startup packet, this costs no round trip of its own.
            params["options"] = "-c default_transaction_read_only=off"
        return params

    @contextmanager
    def connect(self, creds: DatabaseCredentials, *, read_write: bool = False,
                as_admin: bool = False) -> Iterator[psycopg.Connection]:
        self.connection_attempts += 1
        if creds.sslmode == "disable":
            logger.warning(f'connecting to {creds.address} without TLS because the secret says "ssl": false')
        try:
            conn = psycopg.connect(**self.connect_params(creds, read_write=read_write, as_admin=as_admin),
                                   autocommit=True)
        except psycopg.OperationalError as exc:
            raise classify_connect_error(exc, creds, self._timeout) from exc
        try:
            yield conn
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PrivilegeError(f"user {creds.username!r} at {creds.address}: {_diag(exc)}") from exc
        except psycopg.Error as exc:
            raise DatabaseError(f"as user {creds.username!r} at {creds.address}: {_diag(exc)}") from exc
        finally:
            conn.close()

    def _retrying(self, operation: Callable[[], T], creds: DatabaseCredentials, what: str, *, writes: bool) -> T:
        described = f"{what} as user {creds.username!r} at {creds.address}"

        def on_retry(kind: Transient, delay: float, failure: BaseException) -> None:
            self.transient_retries += 1
            # The kind and our own error code only: the failure's text is the server's, and it is not needed here.
            logger.warning(f"transient failure ({kind.value}, {type(failure).__name__}) trying to {described}; "
                           f"retrying in {delay:.2f} s")

        return retry_transient(operation, classify_failure=functools.partial(transient_kind, writes=writes),
                               budget=self._budget, what=f"could not {described}", on_retry=on_retry)

    def can_login(self, creds: DatabaseCredentials) -> bool:
        def attempt() -> bool:
            try:
                with self.connect(creds):
                    return True
            except LoginRefused:
                return False

        return self._retrying(attempt, creds, "log in", writes=False)

    def change_own_password(self, creds: DatabaseCredentials, new_password: str) -> None:
        def attempt() -> None:
            with self.connect(creds, read_write=True) as conn:
                _alter_password(conn, creds.username, new_password)

        self._retrying(attempt, creds, "change its own password", writes=True)

    def set_password(self, admin: DatabaseCredentials, username: str, new_password: str) -> None:
        def attempt() -> None:
            with self.connect(admin, as_admin=True) as conn:
                if not refuse_administrative(conn, [username]):
                    raise PrivilegeError(f"role {username!r} does not exist at {admin.address}/{admin.dbname}")
                _alter_password(conn, username, new_password)

        self._retrying(attempt, admin, f"set the password of {username!r}", writes=True)

    def ensure_login_role(self, admin: DatabaseCredentials, username: str, new_password: str,
                          acts_as: str | None) -> bool:
        def attempt() -> bool:
            with self.connect(admin, as_admin=True) as conn, conn.transaction():
                # The transaction makes create + membership + settings one unit: a crash leaves either no
                # role or a complete one, and the retry takes the same path again.
                role = sql.Identifier(username)
                verifier = sql.Literal(scram_verifier(conn, username, new_password))
                # The clone joins the original: the original must be as harmless as the clone itself.
                existing = refuse_administrative(conn, [username, *([acts_as] if acts_as else [])])
                created = username not in existing
                if created:
                    conn.execute(sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {}").format(role, verifier))
                else:
                    conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(role, verifier))
                if acts_as is not None:
                    _grant_membership(conn, username, acts_as)
                    if created:
                        # The mark the bootstrap's Delete checks: this role was made for ``acts_as``, by us.
                        conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(
                            role, sql.Literal(alternate_role_mark(acts_as))))
                        # Only a clone we create starts acting as the original: one that exists already (made by
                        # AWS's function, say) may own objects that its sessions must keep reaching as themselves.
                        _act_as(conn, username, acts_as)
                return created

        return self._retrying(attempt, admin, f"create or reset {username!r}", writes=True)

    def verify(self, creds: DatabaseCredentials, member_of: str | None, *, replica_wait_s: float = 0.0) -> None:
        """Prove the login and, for alternating users, the membership.

        ``replica_wait_s``: ``creds`` point at a reader, to which the change made on the writer travels by
        replication; a refusal there is tried again for that long before it counts.
        """
        deadline = time.monotonic() + replica_wait_s
        while True:
            try:
                self._retrying(lambda: self._verify_once(creds, member_of), creds, "log in with the pending secret",
                               writes=False)
                return
            except (LoginRefused, VerificationError) as exc:
                if time.monotonic() + _REPLICA_POLL_S > deadline:
                    if replica_wait_s:
                        raise type(exc)(f"{exc} (after waiting {replica_wait_s:.0f} s for the change made on the "
                                        "writer to reach this reader)") from exc
                    raise
                time.sleep(_REPLICA_POLL_S)

    def _verify_once(self, creds: DatabaseCredentials, member_of: str | None) -> None:
        with self.connect(creds) as conn:
            session_user, holds = one_row(conn.execute(
                "SELECT session_user::text, "
                "CASE WHEN %(role)s::text IS NULL THEN true "
                "     WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(role)s) THEN NULL "
                "     ELSE pg_has_role(session_user, %(role)s, 'USAGE') END",
                {"role": member_of if member_of != creds.username else None},
            ), "the pending secret's session user and memberships")
        if session_user != creds.username:
            raise VerificationError(
                f"logged in with the pending secret but the session user is {session_user!r}, "
                f"not {creds.username!r}"
            )
        if holds is None:
            raise VerificationError(f"role {member_of!r}, whose privileges {creds.username!r} should hold, "
                                    f"does not exist at {creds.address}")
        if not holds:
            raise VerificationError(f"user {creds.username!r} does not hold the privileges of {member_of!r}")


def _diag(exc: psycopg.Error) -> str:
    diag = exc.diag
    parts = [diag.message_primary or type(exc).__name__]
    if diag.message_detail:
        parts.append(diag.message_detail)
    if diag.sqlstate:
        parts.append(f"(SQLSTATE {diag.sqlstate})")
    return " ".join(parts)


def role_exists(conn: psycopg.Connection, username: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (username,)).fetchone() is not None


# Every role the targets belong to, directly or through others (the targets included), that holds power over
# the server or over other roles: an administrative attribute, one of the powerful groups, or the admin's own role.
_ADMINISTRATIVE_CLOSURE = sql.SQL("""
WITH RECURSIVE closure(target, oid) AS (
    SELECT r.rolname::text, r.oid FROM pg_roles r WHERE r.rolname = ANY(%(targets)s)
  UNION
    SELECT c.target, m.roleid FROM pg_auth_members m JOIN closure c ON m.member = c.oid
)
SELECT c.target, r.rolname::text, {attributes}, r.rolname = ANY(%(powerful)s) OR r.rolname = current_user
  FROM closure c JOIN pg_roles r ON r.oid = c.oid
""").format(attributes=sql.SQL(", ").join(sql.SQL("r.") + sql.Identifier(a) for a in ADMINISTRATIVE_ATTRIBUTES))


def refuse_administrative(conn: psycopg.Connection, targets: list[str]) -> set[str]:
    """The targets that exist; raises when one of them is administrative, by attribute or membership.

    The admin secret changes application users' passwords, never an administrator's: a user secret edited to
    name one (or a role that belongs to one, however indirectly) would otherwise hand its power to whoever can
    read the user secret.
    """
    existing: set[str] = set()
    for target, role, *flags, powerful in conn.execute(
            _ADMINISTRATIVE_CLOSURE, {"targets": targets, "powerful": sorted(POWERFUL_ROLES)}).fetchall():
        existing.add(target)
        held = [attribute.removeprefix("rol").upper()
                for attribute, flag in zip(ADMINISTRATIVE_ATTRIBUTES, flags, strict=True) if flag]
        if powerful:
            held.append("server-wide power (the admin's own role or a role such as rds_superuser or "
                        "pg_write_all_data)")
        if held:
            through = "" if role == target else f" through its membership of {role!r}"
            raise AdministrativeRoleRefused(
                f"refusing to change role {target!r} with the admin secret: it holds {', '.join(held)}{through}; "
                "the admin secret only rotates application roles"
            )
    return existing


def _alter_password(conn: psycopg.Connection, username: str, new_password: str) -> None:
    verifier = scram_verifier(conn, username, new_password)
    conn.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(sql.Identifier(username), sql.Literal(verifier)))


def _grant_membership(conn: psycopg.Connection, username: str, original: str) -> None:
    """Membership gives the alternate user the original's privileges."""
    is_member, = one_row(conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (username, original)),
                         f"whether {username!r} is a member of {original!r}")
    if not is_member:
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(original), sql.Identifier(username)))


def _act_as(conn: psycopg.Connection, username: str, original: str) -> None:
    """Make a newly created alternate user work *as* the original role.

    ``SET role`` as a per-role default makes objects the alternate creates belong to the original role, so
    nothing becomes unreachable after the next swap (AWS's clones own what they create). The original's own
    per-role settings (``default_transaction_read_only``, say) are copied, since they apply by login role;
    one the admin may not set (a superuser-only parameter) stays with the original, with a warning, rather
    than failing every rotation.
    """
    member = sql.Identifier(username)
    settings = conn.execute(
        "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
        "WHERE r.rolname = %s AND s.setdatabase = 0",
        (original,),
    ).fetchall()
    for (setting,) in settings:
        name, _, value = setting.partition("=")
        # A list-valued setting (search_path) is stored pre-quoted; re-setting it from one literal would turn
        # the list into a single element, so those stay with the original role.
        if name.lower() == "role" or "," in value:
            continue
        statement = sql.SQL("ALTER ROLE {} SET {} = {}").format(
            member, sql.Identifier(*name.split(".")), sql.Literal(value))
        try:
            with conn.transaction():  # a savepoint: one refused setting must not undo the role
                conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            logger.warning(f"setting {name!r} of role {original!r} not copied to {username!r}: the admin may not "
                           "set it")
    conn.execute(sql.SQL("ALTER ROLE {} SET role = {}").format(member, sql.Literal(original)))
