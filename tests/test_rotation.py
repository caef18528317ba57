"""The rotation function end to end: real PostgreSQL (SCRAM over TCP, every statement logged), the Secrets
Manager API over HTTP (moto server), the Lambda handler called as the service calls it.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from helpers import assert_refused_insert, can_login, connect, select_titles
from service import ALL_STEPS, invoke, resume, rotate

from rotation import handler
from rotation.events import Step
from rotation.exceptions import (
    AdministrativeRoleRefused,
    CleartextPasswordRefused,
    ConfigurationError,
    ConnectionRejected,
    DatabaseUnreachable,
    InvalidEventError,
    LoginRefused,
    RotationStateError,
    SecretFormatError,
    SecretsManagerUnreachable,
    TLSError,
)
from rotation_tools.local.certificates import make_certificates

SINGLE, ALTERNATING = "single-user", "alternating-users"


@pytest.fixture
def user_secret(make_app_user, store_secret, master_arn, request):
    """Factory: (arn, secret) for a fresh app user, set up for ``strategy`` with any extra keys."""

    def factory(strategy: str = SINGLE, name: str | None = None, **extra: Any) -> tuple[str, dict[str, Any]]:
        secret = make_app_user(name)
        if strategy == ALTERNATING:
            secret["masterarn"] = master_arn
        secret.update(extra)
        return store_secret(secret), secret

    return factory


def current(sm, arn: str) -> dict[str, Any]:
    return sm.value(arn, "AWSCURRENT")


# --- the main story -------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
def test_consecutive_rotations(sm, user_secret, strategy):
    arn, original = user_secret(strategy, team="analytics", dbClusterIdentifier="demo-cluster")
    seen_passwords = {original["password"]}
    previous = original
    for round_ in range(3):
        rotate(sm, arn)
        new = current(sm, arn)
        assert new["password"] not in seen_passwords
        seen_passwords.add(new["password"])
        assert can_login(new), "the new AWSCURRENT logs in"
        assert select_titles(new) == ["Bananas"]
        assert_refused_insert(new)
        assert sm.value(arn, "AWSPREVIOUS") == previous
        assert {k: v for k, v in new.items() if k not in ("username", "password")} == {
            k: v for k, v in original.items() if k not in ("username", "password")
        }, "every other key survives"
        if strategy == SINGLE:
            assert new["username"] == original["username"]
            assert not can_login(previous), "the old single-user password is refused"
        else:
            expected = original["username"] + ("_clone" if round_ % 2 == 0 else "")
            assert new["username"] == expected
            assert can_login(previous), "alternating users: the previous user keeps working"
            assert_refused_insert(previous)
        previous = new
    stages = sm.stages(arn)
    assert sorted(label for labels in stages.values() for label in labels if label != "AWSPENDING") == [
        "AWSCURRENT", "AWSPREVIOUS"]


def test_alternating_clone_acts_as_the_original_role(sm, user_secret, pg, cluster):
    """Lesson 1: objects the clone creates belong to the original role, so they stay usable after the swap."""
    arn, original = user_secret(ALTERNATING)
    with psycopg.connect(**pg.superuser_conninfo(cluster["dbname"]), autocommit=True) as conn:
        schema = psycopg.sql.Identifier(f"s_{uuid.uuid4().hex[:6]}")
        conn.execute(psycopg.sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
            schema, psycopg.sql.Identifier(original["username"])))
    rotate(sm, arn)
    clone = current(sm, arn)
    assert clone["username"] == original["username"] + "_clone"
    with connect(clone) as conn:
        assert conn.execute("SELECT session_user, current_user").fetchone() == (clone["username"],
                                                                               original["username"])
        conn.execute(psycopg.sql.SQL("CREATE TABLE {}.made_by_clone (id int)").format(schema))
        owner = conn.execute(
            psycopg.sql.SQL("SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_clone'")).fetchone()[0]
    assert owner == original["username"]
    with connect(original) as conn:
        conn.execute(psycopg.sql.SQL("INSERT INTO {}.made_by_clone VALUES (1)").format(schema))


def test_single_user_rotation_through_the_admin_secret(sm, user_secret, pg, cluster, monkeypatch):
    """rds.restrict_password_commands: the user may not change its own password; the admin does it."""
    monkeypatch.setenv("ROTATION_STRATEGY", SINGLE)
    arn, original = user_secret(ALTERNATING)  # carries masterarn
    rotate(sm, arn)
    new = current(sm, arn)
    assert new["username"] == original["username"]
    assert can_login(new)
    assert not can_login(original)
    altered_by = re.findall(rf"\] (\S+)@\S+ LOG:  statement: ALTER ROLE \"?{re.escape(original['username'])}\b",
                            pg.server_log())
    assert altered_by == [cluster["username"]], "the master, not the user, changed the password"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        pytest.param("master", "refusing to use the admin secret", id="the-admin-itself"),
        pytest.param("other-app-user", "refusing to use the admin secret", id="another-users-role"),
    ],
)
def test_admin_secret_cannot_be_aimed_at_a_role_the_secret_does_not_own(
        sm, user_secret, make_app_user, cluster, monkeypatch, target, message):
    """Whoever can edit a user secret must not gain another role's password through the admin secret."""
    monkeypatch.setenv("ROTATION_STRATEGY", SINGLE)
    victim = cluster if target == "master" else make_app_user()
    arn, original = user_secret(ALTERNATING, username=victim["username"])  # the attacker's edit
    with pytest.raises(LoginRefused, match=message):
        rotate(sm, arn)
    assert can_login(victim), "the victim's password is untouched"
    assert can_login({**original, "username": victim["username"], "password": victim["password"]})


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        pytest.param("master", AdministrativeRoleRefused, "server-wide power", id="the-admin-itself"),
        pytest.param("superuser", AdministrativeRoleRefused, "it holds SUPER", id="a-superuser"),
    ],
)
def test_admin_secret_refuses_an_administrative_target_even_with_its_password(
        sm, user_secret, pg, cluster, monkeypatch, target, error, message):
    monkeypatch.setenv("ROTATION_STRATEGY", SINGLE)
    victim = cluster if target == "master" else {**cluster, "username": pg.superuser,
                                                 "password": pg.superuser_password}
    arn, _ = user_secret(ALTERNATING, username=victim["username"], password=victim["password"])
    with pytest.raises(error, match=message):
        rotate(sm, arn)
    assert can_login(victim)


# --- retries and crashes --------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
def test_every_step_repeated(sm, user_secret, strategy):
    arn, original = user_secret(strategy)
    token = sm.stage_pending(arn)
    for step in ALL_STEPS:
        invoke(step, arn, token)
        again = invoke(step, arn, token)
        if step in (Step.CREATE, Step.FINISH) or (step is Step.SET and strategy == SINGLE):
            assert again["changed"] is False, f"a repeated {step} reports no change"
    assert can_login(current(sm, arn))
    assert current(sm, arn)["password"] != original["password"]


@pytest.mark.parametrize("done", [1, 2, 3], ids=["after-create", "after-set", "after-test"])
@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
def test_interrupted_rotation_resumes_with_the_same_token(sm, user_secret, strategy, done):
    arn, original = user_secret(strategy)
    token = rotate(sm, arn, steps=ALL_STEPS[:done])
    if strategy == ALTERNATING or done < 2:
        assert can_login(current(sm, arn)), "AWSCURRENT keeps working while the rotation is unfinished"
    # else: the documented single-user window: the password changed, AWSCURRENT not moved yet.
    resume(arn, token)
    assert can_login(current(sm, arn))
    assert sm.value(arn, "AWSPREVIOUS") == original


def test_step_after_the_rotation_finished_changes_nothing(sm, user_secret):
    arn, _ = user_secret()
    token = rotate(sm, arn)
    after = current(sm, arn)
    for step in ALL_STEPS:
        assert invoke(step, arn, token)["changed"] is False
    assert current(sm, arn) == after
    assert can_login(after)


# --- bad input: a clear error, and AWSCURRENT keeps working ---------------------------------------------

@pytest.mark.parametrize(
    ("event_change", "error", "message"),
    [
        pytest.param({"Step": "dropSecret"}, InvalidEventError, "unknown Step 'dropSecret'", id="unknown-step"),
        pytest.param({"ClientRequestToken": None}, InvalidEventError, "missing the key 'ClientRequestToken'",
                     id="no-token"),
        pytest.param({"ClientRequestToken": "not-a-version"}, RotationStateError,
                     "token not-a-version is not a version", id="unknown-token"),
    ],
)
def test_malformed_events(sm, user_secret, event_change, error, message):
    arn, original = user_secret()
    token = sm.stage_pending(arn)
    event = {"Step": "createSecret", "SecretId": arn, "ClientRequestToken": token, **event_change}
    with pytest.raises(error, match=message):
        handler.rotate({k: v for k, v in event.items() if v is not None}, None)
    assert current(sm, arn) == original
    assert can_login(original)


def test_token_that_is_current_but_not_pending_is_refused(sm, user_secret):
    arn, _ = user_secret()
    current_version = next(v for v, labels in sm.stages(arn).items() if "AWSCURRENT" in labels)
    rotate(sm, arn)
    with pytest.raises(RotationStateError, match="is not staged AWSPENDING"):
        invoke(Step.SET, arn, current_version)  # now AWSPREVIOUS


def test_rotation_not_enabled_is_refused(sm, store_secret, make_app_user):
    secret = make_app_user()
    arn = store_secret(secret)
    version = next(iter(sm.stages(arn)))
    with pytest.raises(RotationStateError, match="rotation is not enabled"):
        invoke(Step.CREATE, arn, version)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"engine": "mysql"}, "engine 'mysql'", id="wrong-engine"),
        pytest.param({"engine": None}, "missing the key 'engine'", id="no-engine"),
        pytest.param({"host": None}, "missing the key 'host'", id="no-host"),
        pytest.param({"port": "five"}, "'port' must be a TCP port", id="bad-port"),
        pytest.param({"ssl": "prefer"}, "'ssl' must be one of", id="downgrading-sslmode"),
    ],
)
def test_malformed_secrets_fail_before_touching_anything(sm, store_secret, make_app_user, change, message):
    secret = make_app_user()
    broken = {k: v for k, v in {**secret, **change}.items() if v is not None}
    arn = store_secret(broken)
    token = sm.stage_pending(arn)
    with pytest.raises(SecretFormatError, match=message) as raised:
        invoke(Step.CREATE, arn, token)
    assert arn in str(raised.value)
    assert secret["password"] not in str(raised.value)
    assert current(sm, arn) == broken
    assert can_login(secret), "the database password is untouched"


def test_alternating_without_masterarn_names_the_missing_key(sm, user_secret, monkeypatch):
    monkeypatch.setenv("ROTATION_STRATEGY", ALTERNATING)
    arn, original = user_secret(SINGLE)
    with pytest.raises(SecretFormatError, match="no 'masterarn' key"):
        rotate(sm, arn)
    assert current(sm, arn) == original


def test_pending_version_redirected_to_another_host_is_refused(sm, user_secret):
    arn, original = user_secret()
    token = rotate(sm, arn, steps=[Step.CREATE])
    pending = sm.value(arn, "AWSPENDING", token)
    # Someone with write access to the secret, but not the database, rewrites the pending version.
    sm.client().put_secret_value(SecretId=arn, ClientRequestToken=token, VersionStages=["AWSPENDING"],
                                 SecretString=json.dumps({**pending, "dbname": "postgres"}))
    with pytest.raises(RotationStateError, match=r"it points at .*/postgres"):
        invoke(Step.SET, arn, token)
    assert can_login(original)


@pytest.mark.parametrize(
    "name",
    ['Quote"Role', "MixedCase", "dash-role", "semi;colon; DROP ROLE master_user", "sp ace", "émoji_ü"],
)
@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
def test_awkward_role_names_rotate_and_inject_nothing(sm, user_secret, pg, strategy, name):
    arn, original = user_secret(strategy, name=f"{name}_{uuid.uuid4().hex[:4]}")
    rotate(sm, arn)
    rotate(sm, arn)
    new = current(sm, arn)
    assert new["username"] == original["username"]
    assert can_login(new)
    assert_refused_insert(new)
    with psycopg.connect(**pg.superuser_conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'master_user'").fetchone() is not None


# --- secrets stay secret --------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
def test_no_password_in_function_logs_metrics_or_server_log(sm, user_secret, pg, cluster, capsys, strategy):
    arn, original = user_secret(strategy)
    rotate(sm, arn)
    rotate(sm, arn)
    output = capsys.readouterr().out
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(line.get("message", "").startswith("stored new credentials") for line in lines)
    assert any("_aws" in line and "RotationStepSucceeded" in line for line in lines), "EMF metrics emitted"
    log_keys = {"step", "secret_arn", "token", "strategy", "username"}
    assert any(log_keys <= line.keys() for line in lines)
    passwords = {original["password"], current(sm, arn)["password"], sm.value(arn, "AWSPREVIOUS")["password"],
                 cluster["password"]}
    server_log = pg.server_log()
    assert "ALTER ROLE" in server_log, "the server log really records statements"
    for password in passwords:
        assert password not in output
        assert password not in server_log
    assert re.search(r"PASSWORD 'SCRAM-SHA-256\$4096:", server_log), "only SCRAM verifiers reach the server"
    assert "SCRAM-SHA-256$" not in output, "verifiers stay out of the function's logs"


def test_failures_are_logged_with_their_kind(sm, user_secret, capsys):
    arn, _ = user_secret(engine="mysql")
    with pytest.raises(SecretFormatError):
        rotate(sm, arn)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    errors = [line for line in lines if line.get("level") == "ERROR"]
    assert errors and errors[0]["error"] == "SecretFormatError"
    assert any("RotationStepFailed" in line for line in lines)


# --- TLS and reachability -------------------------------------------------------------------------------

@pytest.fixture
def tls_user_secret(pg_tls, store_secret):
    from rotation_tools.local.aurora import create_app_role, setup_aurora_like

    master = setup_aurora_like(pg_tls, master=f"m_{uuid.uuid4().hex[:6]}", dbname=f"db_{uuid.uuid4().hex[:6]}")

    def factory(**extra: Any) -> tuple[str, dict[str, Any]]:
        secret = {**create_app_role(pg_tls, master, f"tls_{uuid.uuid4().hex[:8]}"), "host": "localhost", **extra}
        return store_secret(secret), secret

    return factory


def test_verify_full_with_the_ca_bundle_rotates(sm, tls_user_secret, pg_tls, monkeypatch):
    monkeypatch.setenv("PGSSLROOTCERT", str(pg_tls.ca_file))
    arn, original = tls_user_secret(ssl=True)
    rotate(sm, arn)
    new = current(sm, arn)
    with connect(new, sslmode="verify-full", sslrootcert=str(pg_tls.ca_file)) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True
    assert not can_login(original, sslmode="verify-full", sslrootcert=str(pg_tls.ca_file))


def test_no_ssl_key_means_verify_full_and_an_unknown_ca_is_refused(sm, tls_user_secret, tmp_path, monkeypatch):
    """No silent downgrade: without the right CA the rotation fails instead of connecting in plaintext."""
    other_ca = make_certificates(tmp_path)[0]
    monkeypatch.setenv("PGSSLROOTCERT", str(other_ca))
    arn, original = tls_user_secret()
    del original["ssl"]
    sm.client().put_secret_value(SecretId=arn, SecretString=json.dumps(original))
    with pytest.raises(TLSError, match="sslmode=verify-full"):
        rotate(sm, arn)
    assert current(sm, arn) == original


def test_ssl_true_against_a_server_without_tls_fails(sm, user_secret):
    arn, original = user_secret(ssl=True)
    with pytest.raises(TLSError, match=r"127.0.0.1:\d+ does not offer TLS but the secret requires it"):
        rotate(sm, arn)
    assert can_login({**original, "ssl": False})


def test_unreachable_database_fails_fast_naming_host_and_port(sm, user_secret, closed_port):
    arn, _ = user_secret(port=closed_port)
    token = rotate(sm, arn, steps=[Step.CREATE])
    started = time.monotonic()
    with pytest.raises(DatabaseUnreachable, match=f"127.0.0.1:{closed_port}"):
        invoke(Step.SET, arn, token)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_SECRETS_MANAGER", "SECRETS_MANAGER_ENDPOINT"])
def test_unreachable_secrets_manager_names_the_fix(monkeypatch, variable, closed_port):
    """A loopback endpoint is a local server that is not running; tests/test_cli_endpoints.py covers AWS's fix."""
    monkeypatch.delenv("SECRETS_MANAGER_ENDPOINT")
    monkeypatch.setenv(variable, f"http://127.0.0.1:{closed_port}")
    with pytest.raises(SecretsManagerUnreachable, match="is the local server running"):
        invoke(Step.CREATE, "arn:aws:secretsmanager:us-east-1:123456789012:secret:x", str(uuid.uuid4()))


def test_wrong_current_password_is_reported_as_a_refused_login(sm, user_secret, pg, cluster):
    arn, original = user_secret(ALTERNATING)
    with psycopg.connect(**pg.superuser_conninfo(), autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD NULL").format(
            psycopg.sql.Identifier(original["username"])))
    with pytest.raises(LoginRefused, match="refusing to use the admin secret"):
        rotate(sm, arn)


def test_ssl_false_rotates_in_plaintext_but_says_so(sm, user_secret, capsys):
    arn, _ = user_secret(ssl=False)
    rotate(sm, arn)
    warnings = [json.loads(line) for line in capsys.readouterr().out.splitlines()
                if line.startswith("{") and '"WARNING"' in line]
    assert any('without TLS because the secret says "ssl": false' in line["message"] for line in warnings)


@pytest.fixture
def cleartext_password_server() -> Iterator[tuple[int, list[bytes]]]:
    """A stand-in server (or an impostor on a plaintext path) that asks for the password in cleartext."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            (length,) = struct.unpack("!I", conn.recv(4))
            received.append(conn.recv(length - 4))  # the startup packet
            conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
            while chunk := conn.recv(4096):
                received.append(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], received
    listener.close()
    thread.join(timeout=5)


def test_the_password_is_never_sent_in_cleartext(sm, user_secret, cleartext_password_server):
    port, received = cleartext_password_server
    arn, original = user_secret(port=port)
    with pytest.raises(CleartextPasswordRefused, match=r"refused to send the password of user .* in cleartext"):
        rotate(sm, arn)
    sent = b"".join(received)
    assert original["username"].encode() in sent, "the stand-in really was asked to authenticate the user"
    assert original["password"].encode() not in sent


def test_an_existing_clone_keeps_working_as_itself(sm, user_secret, pg, cluster):
    """A clone made by AWS's function may own objects: adopting it must not make it act as the original."""
    arn, original = user_secret(ALTERNATING)
    clone = f"{original['username']}_clone"
    with connect(cluster) as conn:
        conn.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
            psycopg.sql.Identifier(clone), psycopg.sql.Identifier(original["username"])))
    with psycopg.connect(**pg.superuser_conninfo(cluster["dbname"]), autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE TABLE {} (id int)").format(psycopg.sql.Identifier(f"t_{clone}")))
        conn.execute(psycopg.sql.SQL("ALTER TABLE {} OWNER TO {}").format(
            psycopg.sql.Identifier(f"t_{clone}"), psycopg.sql.Identifier(clone)))
    rotate(sm, arn)
    new = current(sm, arn)
    assert new["username"] == clone
    with connect(new) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == clone
        conn.execute(psycopg.sql.SQL("INSERT INTO {} VALUES (1)").format(psycopg.sql.Identifier(f"t_{clone}")))


def test_a_setting_the_admin_may_not_copy_does_not_block_rotation(sm, user_secret, pg, cluster, capsys):
    arn, original = user_secret(ALTERNATING)
    with psycopg.connect(**pg.superuser_conninfo(), autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("ALTER ROLE {} SET log_statement = 'none'").format(
            psycopg.sql.Identifier(original["username"])))
    rotate(sm, arn)
    assert can_login(current(sm, arn))
    assert "setting 'log_statement' of role" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"dbname": "no_such_db"}, "database 'no_such_db' does not exist", id="missing-database"),
    ],
)
def test_a_rejected_connection_is_not_blamed_on_the_password(sm, user_secret, change, message):
    arn, original = user_secret(**change)
    with pytest.raises(ConnectionRejected, match=message):
        rotate(sm, arn)
    assert current(sm, arn) == original


def test_a_missing_region_is_a_configuration_error(monkeypatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="no AWS region configured"):
        invoke(Step.CREATE, "arn:aws:secretsmanager:us-east-1:123456789012:secret:x", str(uuid.uuid4()))


def test_alternating_users_never_reset_an_administrative_alternate(sm, user_secret, pg, cluster):
    """A role named like the clone but holding administrative attributes is not the clone to reset."""
    arn, original = user_secret(ALTERNATING)
    clone = psycopg.sql.Identifier(f"{original['username']}_clone")
    with psycopg.connect(**pg.superuser_conninfo(), autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD NULL").format(clone))
    with pytest.raises(AdministrativeRoleRefused, match=r"refusing to change role .* it holds CREATEROLE"):
        rotate(sm, arn)
    assert current(sm, arn) == original
    assert can_login(original)
