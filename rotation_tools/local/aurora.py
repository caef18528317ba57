"""Make a local server look like a fresh Aurora PostgreSQL cluster to the rotation function.

What matters for rotation is the master user: on Aurora it is *not* a superuser but a CREATEROLE/CREATEDB role
in ``rds_superuser``. Since PostgreSQL 16 such a role may change the password of a role only if it holds ADMIN
OPTION on it, which it gets by creating the role itself. So application roles are created here by the master,
as a DBA would on Aurora, and tests that pass here exercise the same privilege rules as production.

Passwords are sent as SCRAM verifiers computed on the client, so even this setup code never puts a plaintext
password into the server's statement log (which the tests inspect for leaks).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from rotation_tools.local import LocalToolError
from rotation_tools.local.postgres import PostgresServer, running_server

CLUSTER_IDENTIFIER = "demo-cluster"
_MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: longer names are silently truncated by the server


def _psycopg() -> Any:
    try:
        import psycopg
        import psycopg.sql
    except ImportError as exc:  # pragma: no cover - psycopg is a runtime dependency
        raise LocalToolError("psycopg is missing: `pip install 'psycopg[binary]'`") from exc
    return psycopg


def _check_identifier(name: str, what: str) -> None:
    if not name or len(name.encode()) > _MAX_IDENTIFIER_BYTES:
        raise ValueError(f"{what} must be 1 to {_MAX_IDENTIFIER_BYTES} bytes long, got {name!r}")


def secret_conninfo(secret: Mapping[str, Any], *, ca_file: str | None = None, **extra: Any) -> dict[str, Any]:
    """``psycopg.connect`` keyword arguments for an RDS-format secret dict.

    A secret with ``"ssl": true`` is connected with ``verify-full``; the CA is ``ca_file`` or, for a server
    this process started, that server's CA. There is deliberately no fallback to an unverified connection.
    """
    info: dict[str, Any] = {
        "host": secret["host"],
        "port": int(secret.get("port", 5432)),
        "user": secret["username"],
        "password": secret["password"],
        "dbname": secret.get("dbname") or "postgres",
        "connect_timeout": 5,
    }
    if str(secret.get("ssl", "")).lower() in ("true", "1"):
        if ca_file is None:
            server = running_server(info["port"], info["host"])
            if server is None or server.ca_file is None:
                raise LocalToolError(
                    f"secret for {info['user']}@{info['host']}:{info['port']} asks for TLS but no CA file is known; "
                    f"pass ca_file= (the server's PostgresServer.ca_file)"
                )
            ca_file = str(server.ca_file)
        info.update(sslmode="verify-full", sslrootcert=str(ca_file))
    else:
        info.update(sslmode="disable")
    info.update(extra)
    return info


def _secret_for(server: PostgresServer, username: str, password: str, dbname: str) -> dict[str, Any]:
    return {
        "engine": "postgres",
        "host": server.host,
        "port": server.port,
        "username": username,
        "password": password,
        "dbname": dbname,
        "dbClusterIdentifier": CLUSTER_IDENTIFIER,
        "ssl": server.ssl,
    }


def setup_aurora_like(server: PostgresServer, *, master: str = "master_user", dbname: str = "appdb") -> dict[str, Any]:
    """Create the master user, its database and a ``films`` table; return the master secret (RDS format).

    Safe to call again on the same server: the master then gets a new password (returned) and existing
    objects are kept, which is what re-running ``rotation demo`` against a kept server needs.
    """
    _check_identifier(master, "master user name")
    _check_identifier(dbname, "database name")
    psycopg = _psycopg()
    sql = psycopg.sql
    # On use, like psycopg: the rotation function's own helpers (the verifier is computed client-side).
    from rotation.database import role_exists, scram_verifier

    password = secrets.token_urlsafe(24)

    with server.connect() as conn:
        # Aurora's rds_superuser and rds_password group roles, so policies and tests can refer to them. On
        # Aurora rds_superuser can signal other non-superusers' backends; pg_signal_backend is that right.
        for group in ("rds_superuser", "rds_password"):
            if not role_exists(conn, group):
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group)))
        conn.execute("GRANT pg_signal_backend TO rds_superuser")
        conn.execute("GRANT rds_password TO rds_superuser WITH ADMIN OPTION")

        verifier = sql.Literal(scram_verifier(conn, master, password))
        if role_exists(conn, master):
            conn.execute(
                sql.SQL("ALTER ROLE {} WITH LOGIN NOSUPERUSER CREATEROLE CREATEDB PASSWORD {}").format(
                    sql.Identifier(master), verifier
                )
            )
        else:
            conn.execute(
                sql.SQL("CREATE ROLE {} WITH LOGIN NOSUPERUSER CREATEROLE CREATEDB PASSWORD {}").format(
                    sql.Identifier(master), verifier
                )
            )
        conn.execute(sql.SQL("GRANT rds_superuser TO {}").format(sql.Identifier(master)))
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(master)))

    secret = _secret_for(server, master, password, dbname)
    # The table belongs to the master, as it would when an application's schema is deployed with the master
    # credentials; app roles then need explicit grants, which is what the read-only tests check.
    with psycopg.connect(**secret_conninfo(secret, ca_file=_ca(server)), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS films ("
            " code char(5) PRIMARY KEY,"
            " title varchar(40) NOT NULL,"
            " did integer NOT NULL,"
            " date_prod date,"
            " kind varchar(10),"
            " len interval hour to minute)"
        )
        conn.execute(
            "INSERT INTO films VALUES ('UA502', 'Bananas', 105, '1971-07-13', 'Comedy', '82 minutes') "
            "ON CONFLICT (code) DO NOTHING"
        )
    return secret


def _ca(server: PostgresServer) -> str | None:
    return str(server.ca_file) if server.ca_file else None


def _qualified(name: str) -> Any:
    sql = _psycopg().sql
    schema, _, table = name.rpartition(".")
    return sql.Identifier(schema or "public", table)


def create_app_role(
    server: PostgresServer,
    master_secret: Mapping[str, Any],
    username: str,
    *,
    select_on: Iterable[str] = ("public.films",),
    login: bool = True,
) -> dict[str, Any]:
    """Create an application role *as the master* and return its secret (RDS format, same host and database).

    Created by the master so that the master holds ADMIN OPTION on it (PostgreSQL 16+), exactly the situation
    in which a multi-user rotation through the master secret has to work on Aurora. ``login=False`` makes a
    role whose correct password is still refused, for testing how rotation reports that.
    """
    _check_identifier(username, "role name")
    psycopg = _psycopg()
    sql = psycopg.sql
    from rotation.database import scram_verifier

    password = secrets.token_urlsafe(24)
    dbname = master_secret.get("dbname") or "postgres"
    tables = [_qualified(name) for name in select_on]
    schemas = sorted({name.rpartition(".")[0] or "public" for name in select_on})

    with psycopg.connect(**secret_conninfo(master_secret, ca_file=_ca(server)), autocommit=True) as conn:
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE ROLE {} WITH {} PASSWORD {}").format(
                    sql.Identifier(username),
                    sql.SQL("LOGIN" if login else "NOLOGIN"),
                    sql.Literal(scram_verifier(conn, username, password)),
                )
            )
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname), sql.Identifier(username))
            )
            for schema in schemas:
                conn.execute(
                    sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(username))
                )
            for table in tables:
                conn.execute(sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(table, sql.Identifier(username)))

    secret = _secret_for(server, username, password, dbname)
    secret["dbClusterIdentifier"] = master_secret.get("dbClusterIdentifier", CLUSTER_IDENTIFIER)
    return secret


__all__ = ["CLUSTER_IDENTIFIER", "create_app_role", "secret_conninfo", "setup_aurora_like"]


#: libpq reports authentication failures without a SQLSTATE, so the message is all there is to match. A missing
#: role gives the same message on purpose (the server does not reveal which roles exist).
_REFUSED_LOGIN = ("password authentication failed", "is not permitted to log in")


def login_accepted(secret: Mapping[str, Any], **overrides: Any) -> bool:
    """True if the server accepts the secret's credentials, False if it refuses them; anything else raises.

    A server that is down, or a TLS failure, must not count as "the old password is refused".
    """
    psycopg = _psycopg()
    try:
        with psycopg.connect(**secret_conninfo(secret, **overrides), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        if any(message in str(exc) for message in _REFUSED_LOGIN):
            return False
        raise
    return True
