"""The bootstrap function end to end: a real PostgreSQL whose master is a non-superuser CREATEROLE role (as on
Aurora), the Secrets Manager API over HTTP (moto server), and the Lambda handler called as Lambda calls it.

What a user cares about is asserted, not how: the new secret logs in, reads films, is refused writes with
SQLSTATE 42501 in a plain session (as the Query Editor's), can be rotated as is, and no password ever shows up
in a log. With ``ReadOnlyTransactions`` writes fail first with 25006 (the read-only default), then with 42501.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from cfn_responses import ResponseServer, custom_resource_event
from helpers import can_login, closed_port, connect, select_titles
from psycopg import sql
from service import ALL_STEPS, invoke, rotate

from rotation import cfn, handler
from rotation.bootstrap import service as bootstrap_service
from rotation.events import Step
from rotation.exceptions import (
    BootstrapError,
    DatabaseUnreachable,
    ForeignEndpoint,
    InvalidEventError,
    PrivilegeError,
    RotationError,
    SecretsManagerError,
    SecretsManagerUnreachable,
)
from rotation.secrets_store import secrets_manager_client
from rotation_tools.local.aurora import setup_aurora_like
from rotation_tools.local.lambda_context import LambdaContext
from rotation_tools.local.postgres import PostgresServer

SINGLE, ALTERNATING = "single-user", "alternating-users"
INSERT = "INSERT INTO films (code, title, did) VALUES ('XX001', 'Nope', 1)"


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def bootstrap(master_arn: str, username: str, sm) -> Callable[..., dict[str, Any]]:
    """Invoke the handler directly for ``username``; returns the secret it created or kept (AWSCURRENT)."""

    def invoke(**keys: Any) -> dict[str, Any]:
        event = {"MasterSecretId": master_arn, "Username": username, **keys}
        response = handler.bootstrap(event, LambdaContext("bootstrap", timeout_seconds=60))
        assert response["Username"] == event["Username"]
        return {**sm.value(response["SecretArn"]), "arn": response["SecretArn"], "group": response["GroupRole"]}

    return invoke


def credentials(secret: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in secret.items() if k not in ("arn", "group")}


def sqlstate_of(secret: dict[str, Any], statement: str, *, read_write: bool = False) -> str | None:
    """Run ``statement`` with the secret's login; None when it succeeds, else the SQLSTATE it failed with.

    ``read_write`` first turns a read-only default (``ReadOnlyTransactions``) off, as any session may: what is
    refused then is refused by the privileges themselves.
    """
    with connect(credentials(secret)) as conn:
        if read_write:
            conn.execute("SET default_transaction_read_only = off")
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            return exc.sqlstate
    return None


def master_execute(cluster: dict[str, Any], statement: sql.Composable | str) -> None:
    with connect(cluster) as conn:
        conn.execute(statement)


def existing_roles(pg: PostgresServer, *names: str) -> set[str]:
    with pg.connect(dbname="appdb") as conn:
        rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(names),)).fetchall()
    return {row[0] for row in rows}


def read_only_settings(pg: PostgresServer, *roles: str) -> dict[str, list[str]]:
    """Each role's own ``default_transaction_read_only`` settings (role-wide or for appdb), as stored."""
    with pg.connect(dbname="appdb") as conn:
        rows = conn.execute(
            "SELECT r.rolname::text, cfg FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "CROSS JOIN LATERAL unnest(s.setconfig) cfg WHERE r.rolname = ANY(%s) "
            "AND split_part(cfg, '=', 1) = 'default_transaction_read_only' ORDER BY 1, 2",
            (list(roles),),
        ).fetchall()
    return {role: [cfg for name, cfg in rows if name == role] for role in roles}


def direct_privileges(pg: PostgresServer, role: str) -> list[tuple[str, str]]:
    """Table privileges granted to ``role`` itself (not through a group) in appdb."""
    with pg.connect(dbname="appdb") as conn:
        return conn.execute(
            "SELECT c.relname::text, a.privilege_type FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a "
            "WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)",
            (role,),
        ).fetchall()


def role_attributes(pg: PostgresServer, role: str) -> dict[str, bool]:
    with pg.connect(dbname="appdb") as conn:
        login, createdb = conn.execute("SELECT rolcanlogin, rolcreatedb FROM pg_roles WHERE rolname = %s",
                                       (role,)).fetchone()
    return {"login": login, "createdb": createdb}


def secret_exists(sm, name: str) -> bool:
    try:
        sm.client().describe_secret(SecretId=name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ResourceNotFoundException":
            return False
        raise
    return True


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def assert_never_logged(passwords: list[str], pg: PostgresServer, captured: str) -> None:
    server_log = pg.server_log()
    for password in passwords:
        assert password not in server_log, "a password reached the PostgreSQL statement log"
        assert password not in captured, "a password reached the function's log"


def unused_port() -> int:
    """A port nobody listens on (released at once: the bootstrap only has to find it closed)."""
    with closed_port() as port:
        return port


# ------------------------------------------------------------------------- what the new login may do


@dataclass(frozen=True)
class Attempt:
    statement: str
    #: None: allowed. 42501: refused by privileges.
    sqlstate: str | None


# A plain session, as the Query Editor opens one: nothing SET first.
ATTEMPTS = {
    "select-films": Attempt("SELECT title FROM films", None),
    "insert-refused-by-privileges": Attempt(INSERT, "42501"),
    "update-refused-by-privileges": Attempt("UPDATE films SET title = 'x'", "42501"),
    "delete-refused-by-privileges": Attempt("DELETE FROM films", "42501"),
    "truncate-refused-by-privileges": Attempt("TRUNCATE films", "42501"),
    "create-table-refused-by-privileges": Attempt("CREATE TABLE public.mine (a int)", "42501"),
    "create-schema-refused-by-privileges": Attempt("CREATE SCHEMA mine", "42501"),
}


@pytest.mark.parametrize("attempt", ATTEMPTS.values(), ids=ATTEMPTS.keys())
def test_the_new_login_reads_and_cannot_write(bootstrap, pg, attempt: Attempt, capsys, caplog) -> None:
    secret = bootstrap()

    assert can_login(credentials(secret))
    assert sqlstate_of(secret, attempt.statement) == attempt.sqlstate
    assert_never_logged([secret["password"]], pg, capsys.readouterr().out + caplog.text)


def test_by_default_only_the_group_is_read_only_by_default(bootstrap, pg, username) -> None:
    secret = bootstrap()

    assert read_only_settings(pg, username, secret["group"]) == {
        username: [], secret["group"]: ["default_transaction_read_only=on"]}
    with connect(credentials(secret)) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "off"


@pytest.mark.parametrize("value", [True, "true", " TRUE "], ids=["boolean", "cloudformation-string", "padded"])
def test_read_only_transactions_refuse_writes_before_the_privileges_do(bootstrap, pg, username, value) -> None:
    secret = bootstrap(ReadOnlyTransactions=value)

    assert read_only_settings(pg, username, secret["group"]) == {
        username: ["default_transaction_read_only=on"], secret["group"]: ["default_transaction_read_only=on"]}
    assert select_titles(credentials(secret)) == ["Bananas"]
    assert sqlstate_of(secret, INSERT) == "25006", "the read-only default refuses first"
    assert sqlstate_of(secret, "CREATE TABLE public.mine (a int)") == "25006"
    assert sqlstate_of(secret, INSERT, read_write=True) == "42501", "past it, the privileges refuse"
    assert sqlstate_of(secret, "CREATE TABLE public.mine (a int)", read_write=True) == "42501"


def _set_by_an_administrator(bootstrap, cluster, username) -> dict[str, Any]:
    secret = bootstrap()
    master_execute(cluster, sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
        sql.Identifier(username)))
    return secret


@pytest.mark.parametrize("setup", [
    _set_by_an_administrator,
    lambda bootstrap, cluster, username: bootstrap(ReadOnlyTransactions=True),
], ids=["set-by-an-administrator", "set-by-an-earlier-read-only-transactions-run"])
def test_without_read_only_transactions_a_login_roles_setting_is_left(bootstrap, cluster, pg, username, setup,
                                                                       capsys) -> None:
    secret = setup(bootstrap, cluster, username)
    capsys.readouterr()

    again = bootstrap(ReadOnlyTransactions="false")

    assert again == secret
    assert read_only_settings(pg, username)[username] == ["default_transaction_read_only=on"], "not removed"
    assert sqlstate_of(secret, INSERT) == "25006"
    assert sqlstate_of(secret, INSERT, read_write=True) == "42501"
    messages = [line.get("message", "") for line in log_lines(capsys)]
    assert any(username in message and "left as it is" in message for message in messages)
    assert "bootstrap complete; nothing to change" in messages


# ------------------------------------------------------------------------------------- idempotency


def test_a_second_run_changes_nothing(bootstrap, sm, capsys) -> None:
    first = bootstrap()
    versions = sm.stages(first["arn"])
    capsys.readouterr()

    second = bootstrap()

    assert second == first
    assert sm.stages(first["arn"]) == versions, "no new secret version"
    assert can_login(credentials(first))
    assert any(line["message"] == "bootstrap complete; nothing to change" for line in log_lines(capsys))


@dataclass(frozen=True)
class Drift:
    """Something changed behind the bootstrap's back, and what the re-run must restore."""

    damage: Callable[[dict[str, Any], dict[str, Any]], None]  # (master secret, user secret)
    logged: str
    #: Bootstrap keys of both runs.
    keys: dict[str, Any] = field(default_factory=dict)


def _change_password(cluster: dict[str, Any], secret: dict[str, Any]) -> None:
    with connect(cluster) as conn:
        verifier = conn.pgconn.encrypt_password(b"someone-else-s-password", secret["username"].encode(),
                                                b"scram-sha-256").decode()
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(secret["username"]),
                                                                 sql.Literal(verifier)))


DRIFTS = {
    "role-password-changed-secret-wins": Drift(_change_password, "resetting the role to the secret's password"),
    "login-role-dropped-recreated-from-secret": Drift(
        lambda cluster, secret: master_execute(cluster, sql.SQL("DROP ROLE {}").format(
            sql.Identifier(secret["username"]))),
        "created role"),
    "insert-granted-to-group-revoked": Drift(
        lambda cluster, secret: master_execute(cluster, sql.SQL("GRANT INSERT ON films TO {}").format(
            sql.Identifier(secret["group"]))),
        "revoked INSERT on table public.films"),
    "create-on-schema-granted-to-login-revoked": Drift(
        lambda cluster, secret: master_execute(cluster, sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(
            sql.Identifier(secret["username"]))),
        "revoked CREATE on schema public"),
    "read-only-default-removed-restored-with-read-only-transactions": Drift(
        lambda cluster, secret: master_execute(cluster, sql.SQL("ALTER ROLE {} RESET default_transaction_read_only")
                                               .format(sql.Identifier(secret["username"]))),
        "default_transaction_read_only = on", {"ReadOnlyTransactions": True}),
    "read-only-override-in-database-removed-with-read-only-transactions": Drift(
        lambda cluster, secret: master_execute(
            cluster, sql.SQL("ALTER ROLE {} IN DATABASE appdb SET default_transaction_read_only = off")
            .format(sql.Identifier(secret["username"]))),
        "per-database default_transaction_read_only override removed", {"ReadOnlyTransactions": True}),
    "group-read-only-default-removed-restored": Drift(
        lambda cluster, secret: master_execute(cluster, sql.SQL("ALTER ROLE {} RESET default_transaction_read_only")
                                               .format(sql.Identifier(secret["group"]))),
        "_readonly': default_transaction_read_only = on"),
}


@pytest.mark.parametrize("drift", DRIFTS.values(), ids=DRIFTS.keys())
def test_a_rerun_brings_things_back_in_line(bootstrap, cluster, pg, sm, drift: Drift, capsys) -> None:
    secret = bootstrap(**drift.keys)
    drift.damage(cluster, secret)
    capsys.readouterr()

    again = bootstrap(**drift.keys)

    output = capsys.readouterr().out
    assert drift.logged in output
    assert again == secret, "the secret is the truth: kept as it was"
    assert can_login(credentials(secret))
    assert sqlstate_of(secret, INSERT, read_write=True) == "42501"
    assert sqlstate_of(secret, "CREATE TABLE public.mine (a int)", read_write=True) == "42501"
    assert sqlstate_of(secret, INSERT) == ("25006" if drift.keys.get("ReadOnlyTransactions") else "42501")
    assert_never_logged([secret["password"]], pg, output)


@pytest.mark.parametrize("adopting", [False, True], ids=["new-role", "hand-made-role"])
def test_a_run_interrupted_after_storing_the_secret_is_finished_by_the_next(
        bootstrap, make_app_user, username, sm, monkeypatch, adopting) -> None:
    """The Lambda dies between CreateSecret and the database transaction; the service or stack runs it again."""
    name = make_app_user()["username"] if adopting else username

    def crash(*_args: Any) -> None:
        raise RuntimeError("Lambda killed")

    with monkeypatch.context() as patched:
        patched.setattr(bootstrap_service, "reconcile_database", crash)
        with pytest.raises(RuntimeError):
            bootstrap(Username=name)
    stored = sm.value(f"rds-db-credentials/demo-cluster/{name}")
    assert not can_login(stored), "the crash came before the role got the password"

    finished = bootstrap(Username=name)

    assert credentials(finished) == stored, "the stored secret is the one that now works"
    assert can_login(stored)
    assert sqlstate_of(finished, INSERT) == "42501"


def test_a_hand_made_role_is_adopted(bootstrap, make_app_user, pg, capsys) -> None:
    """The manual setup this replaces: a role made by hand, SELECT granted to it directly, password typed."""
    hand_made = make_app_user()

    secret = bootstrap(Username=hand_made["username"])

    assert secret["password"] != hand_made["password"]
    assert can_login(credentials(secret))
    assert not can_login(hand_made), "the password a person once typed no longer works"
    assert direct_privileges(pg, hand_made["username"]) == [], "privileges now come through the group only"
    assert select_titles(credentials(secret)) == ["Bananas"]
    assert sqlstate_of(secret, INSERT) == "42501"
    assert_never_logged([secret["password"]], pg, capsys.readouterr().out)


# --------------------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("read_only_transactions", [False, True], ids=["default", "read-only-transactions"])
@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
def test_the_created_secret_rotates_as_is(bootstrap, sm, pg, master_arn, username, strategy,
                                          read_only_transactions, capsys) -> None:
    keys = {"Strategy": strategy, "ReadOnlyTransactions": read_only_transactions}
    created = bootstrap(**keys)
    assert created.get("masterarn") == (master_arn if strategy == ALTERNATING else None)
    passwords = [created["password"]]

    for round_ in (1, 2):
        rotate(sm, created["arn"])
        current = sm.value(created["arn"], "AWSCURRENT")
        passwords.append(current["password"])
        assert can_login(current)
        assert select_titles(current) == ["Bananas"]
        assert sqlstate_of(current, INSERT, read_write=True) == "42501"
        if read_only_transactions:
            assert sqlstate_of(current, INSERT) == "25006", "the read-only default holds for the rotated login too"
        else:
            assert sqlstate_of(current, INSERT) == "42501", "a plain session is refused by the privileges"
        if strategy == SINGLE:
            assert current["username"] == username
            assert not can_login(sm.value(created["arn"], "AWSPREVIOUS"))
        else:
            assert current["username"] == username + ("_clone" if round_ == 1 else "")
        # A re-run (a CloudFormation update, say) in between rotations must not undo them.
        assert {k: v for k, v in bootstrap(**keys).items() if k != "group"} == {
            **current, "arn": created["arn"]}

    assert len(set(passwords)) == 3
    assert_never_logged(passwords, pg, capsys.readouterr().out)


@dataclass(frozen=True)
class MidRotation:
    """A rotation under way (its first ``steps`` ran) when the bootstrap runs again, and what the re-run does."""

    steps: tuple[Step, ...]
    #: Someone also changed the role's password behind everyone's back.
    password_changed: bool
    #: The re-run succeeds and leaves the database with AWSPENDING's password; otherwise it refuses.
    kept: bool
    said: str


MID_ROTATIONS = {
    "single-user-after-setSecret-keeps-the-new-password": MidRotation(
        (Step.CREATE, Step.SET), False, True, "left as it is rather than reset to AWSCURRENT's"),
    "single-user-after-testSecret-keeps-the-new-password": MidRotation(
        (Step.CREATE, Step.SET, Step.TEST), False, True, "left as it is rather than reset to AWSCURRENT's"),
    "neither-current-nor-pending-logs-in-refused": MidRotation(
        (Step.CREATE,), True, False, "the database refuses AWSPENDING's password too"),
    "pending-without-a-value-refused": MidRotation((), True, False, "AWSPENDING holds no value yet"),
}


@pytest.mark.parametrize("scenario", MID_ROTATIONS.values(), ids=MID_ROTATIONS.keys())
def test_a_rerun_during_a_rotation_never_resets_the_password(bootstrap, cluster, pg, sm, scenario: MidRotation,
                                                             capsys) -> None:
    created = bootstrap()
    token = rotate(sm, created["arn"], steps=scenario.steps)
    if scenario.password_changed:
        _change_password(cluster, created)
    assert not can_login(credentials(created)), "AWSCURRENT is refused while the rotation is under way"
    capsys.readouterr()

    if not scenario.kept:
        with pytest.raises(BootstrapError) as caught:
            bootstrap()
        assert scenario.said in str(caught.value)
        assert f"rotation repair --secret-id {created['arn']}" in str(caught.value)
        assert not can_login(credentials(created)), "the role's password was left alone"
        return

    pending = sm.value(created["arn"], "AWSPENDING", token)
    again = bootstrap()

    output = capsys.readouterr().out
    assert again == created, "AWSCURRENT is not touched"
    assert scenario.said in output
    assert can_login(pending), "the database still accepts the rotation's new password"
    for step in ALL_STEPS[len(scenario.steps):]:
        invoke(step, created["arn"], token)
    assert sm.value(created["arn"]) == pending, "the rotation finished and published the new password"
    assert can_login(pending)
    assert_never_logged([created["password"], pending["password"]], pg, output)


# --------------------------------------------------------------------------------- master secrets


@pytest.mark.parametrize("endpoint", ["writer", "reader"])
def test_rds_managed_master_secret_located_through_the_rds_api(aurora, sm, username, endpoint) -> None:
    """The master secret RDS manages holds only username and password: the RDS API names its cluster's writer, and
    the event may give the cluster's reader endpoint for the new secret."""
    event = {"MasterSecretId": aurora.managed_arn, "Username": username, "DBName": "appdb"}
    if endpoint == "reader":
        event["Host"] = aurora.reader

    response = handler.bootstrap(event, None)

    secret = sm.value(response["SecretArn"])
    assert secret["host"] == getattr(aurora, endpoint)
    assert secret["dbClusterIdentifier"] == aurora.identifier
    assert response["SecretArn"].split(":")[-1].startswith(f"rds-db-credentials/{aurora.identifier}/{username}")
    assert select_titles(secret) == ["Bananas"]


def test_bootstrap_over_tls_verifies_the_server(pg_tls, store_secret, sm, username, monkeypatch) -> None:
    master = setup_aurora_like(pg_tls)
    assert master["ssl"] is True
    monkeypatch.setenv("PGSSLROOTCERT", str(pg_tls.ca_file))

    response = handler.bootstrap({"MasterSecretId": store_secret(master), "Username": username}, None)

    secret = sm.value(response["SecretArn"])
    assert secret["ssl"] is True
    assert select_titles(secret) == ["Bananas"]


# --------------------------------------------------------------------------------------- failures


@pytest.fixture
def weak_master(pg: PostgresServer, cluster: dict[str, Any], store_secret) -> str:
    """A master secret for a role without CREATEROLE (as if someone passed an application user)."""
    name, password = f"weak_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(24)
    with pg.connect() as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256").decode()
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(verifier)))
    return store_secret({**cluster, "username": name, "password": password})


def _foreign_write_grant(pg: PostgresServer, role: str) -> None:
    """A superuser's table, INSERT granted to ``role`` by the superuser: the master cannot revoke it."""
    table = sql.Identifier(f"audit_{uuid.uuid4().hex[:8]}")
    with pg.connect(dbname="appdb") as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (a int)").format(table))
        conn.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(table, sql.Identifier(role)))


@dataclass(frozen=True)
class Failure:
    keys: dict[str, Any]
    error: type[RotationError]
    message: tuple[str, ...]
    #: Run before the bootstrap with (pg, cluster, make_app_user, weak_master, username); may return extra keys.
    setup: Callable[..., dict[str, Any]] = field(default=lambda *_: {})


FAILURES = {
    "table-does-not-exist": Failure({"Tables": ["public.films", "public.nope"]}, BootstrapError,
                                    ("public.nope", "do not exist", "appdb")),
    "schema-does-not-exist": Failure({"Schemas": ["nope"]}, BootstrapError, ("schema 'nope' does not exist",)),
    "master-without-createrole": Failure({}, PrivilegeError, ("neither CREATEROLE nor SUPERUSER",),
                                         lambda pg, cluster, app, weak, user: {"MasterSecretId": weak}),
    "event-port-of-another-server": Failure({}, ForeignEndpoint, ("aimed at another server",),
                                            lambda *_: {"Port": unused_port()}),
    "master-secret-does-not-exist": Failure({"MasterSecretId": "rds!cluster-missing"}, SecretsManagerError,
                                            ("rds!cluster-missing", "ResourceNotFoundException")),
    "write-privilege-the-master-cannot-revoke": Failure(
        {}, BootstrapError, ("INSERT on table public.audit_", "granted by 'postgres'", "revoke them"),
        lambda pg, cluster, app, weak, user: _foreign_write_grant(pg, app(user)["username"]) or {}),
    "an-administrators-group-as-username": Failure({"Username": "rds_superuser"}, BootstrapError,
                                                   ("administrators' group",)),
}


def test_an_unreachable_master_server_says_so_and_creates_nothing(cluster, store_secret, sm, username) -> None:
    master_arn = store_secret({**cluster, "port": unused_port()})
    with pytest.raises(DatabaseUnreachable, match=r"cannot reach 127\.0\.0\.1.*refused"):
        handler.bootstrap({"MasterSecretId": master_arn, "Username": username}, None)
    with pytest.raises(ClientError):
        sm.value(f"rds-db-credentials/demo-cluster/{username}")


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_a_failure_says_why_and_creates_nothing(failure: Failure, pg, cluster, sm, master_arn, username,
                                                make_app_user, weak_master) -> None:
    existed_before = existing_roles(pg, username, "rds_superuser")
    keys = {"MasterSecretId": master_arn, "Username": username, **failure.keys}
    keys.update(failure.setup(pg, cluster, make_app_user, weak_master, username))
    roles_before = existing_roles(pg, keys["Username"], keys["Username"] + "_readonly") | existed_before

    with pytest.raises(failure.error) as caught:
        handler.bootstrap(keys, None)

    for fragment in failure.message:
        assert fragment in str(caught.value)
    assert cluster["password"] not in str(caught.value)
    assert existing_roles(pg, keys["Username"], keys["Username"] + "_readonly") <= roles_before
    assert not secret_exists(sm, f"rds-db-credentials/demo-cluster/{keys['Username']}")


INVALID_EVENTS = {
    "missing-username": ({"Username": None}, "'Username'"),
    "missing-master-secret": ({"MasterSecretId": None}, "'MasterSecretId'"),
    "unknown-key": ({"Schema": ["public"]}, "'Schema'"),
    "port-not-a-number": ({"Port": "fivefourthreetwo"}, "'Port'"),
    "port-a-superscript-digit": ({"Port": "\u00b2"}, "'Port'"),
    "strategy-unknown": ({"Strategy": "both"}, "'Strategy'"),
    "table-without-schema": ({"Tables": ["films"]}, "'Tables'"),
    "tables-not-a-list": ({"Tables": 5}, "'Tables'"),
    "username-too-long": ({"Username": "u" * 64}, "'Username'"),
    "reserved-username": ({"Username": "pg_reader"}, "'Username'"),
    "group-same-as-username": ({"GroupRole": "reader"}, "'GroupRole'"),
    "clone-name-for-alternating-users": ({"Username": "reader_clone", "Strategy": ALTERNATING}, "'Username'"),
    "remove-on-delete-not-boolean": ({"RemoveOnDelete": "maybe"}, "'RemoveOnDelete'"),
    "read-only-transactions-not-boolean": ({"ReadOnlyTransactions": "yes"}, "'ReadOnlyTransactions'"),
    "tags-wrong-shape": ({"Tags": ["team"]}, "'Tags'"),
    "ssl-unknown-mode": ({"SSL": "prefer"}, "'SSL'"),
    "secret-name-bad-characters": ({"SecretName": "my secret"}, "'SecretName'"),
}


@pytest.mark.parametrize(("change", "named"), INVALID_EVENTS.values(), ids=INVALID_EVENTS.keys())
def test_an_invalid_event_names_the_bad_key(change: dict[str, Any], named: str) -> None:
    event = {k: v for k, v in {"MasterSecretId": "rds!cluster-x", "Username": "reader", **change}.items()
             if v is not None}
    with pytest.raises(InvalidEventError) as caught:
        handler.bootstrap(event, None)
    assert named in str(caught.value)


def test_a_lost_create_secret_answer_is_reported_as_unreachable_and_the_rerun_adopts(bootstrap, sm,
                                                                                      username) -> None:
    """CreateSecret is carried out but its answer times out, as on a network path that drops it."""
    client = secrets_manager_client(os.environ.get("SECRETS_MANAGER_ENDPOINT"))  # the function's cached client

    def lose_the_answer(model: Any, **_: Any) -> None:
        if model.name == "CreateSecret":
            raise ReadTimeoutError(endpoint_url=client.meta.endpoint_url)

    client.meta.events.register("after-call.secrets-manager", lose_the_answer, unique_id="lose-create-secret")
    try:
        with pytest.raises(SecretsManagerUnreachable) as caught:
            bootstrap()
    finally:
        client.meta.events.unregister("after-call.secrets-manager", unique_id="lose-create-secret")
    assert "cannot reach the Secrets Manager endpoint" in str(caught.value)
    assert "is the local server" in str(caught.value)  # loopback; tests/test_cli_endpoints.py covers AWS's fix
    stored = sm.value(f"rds-db-credentials/demo-cluster/{username}")

    finished = bootstrap()

    assert credentials(finished) == stored
    assert can_login(stored)


# ------------------------------------------------------------------------------------- CloudFormation


def test_cloudformation_create_update_delete(response_server: ResponseServer, master_arn, username, pg, sm,
                                            cluster) -> None:
    properties = {"MasterSecretId": master_arn, "Username": username, "Port": str(cluster["port"])}
    context = LambdaContext("bootstrap", timeout_seconds=60)
    name = f"rds-db-credentials/demo-cluster/{username}"

    handler.bootstrap(custom_resource_event(response_server.url, "Create", properties), context)
    created = response_server.next_response()
    assert (created["Status"], created["PhysicalResourceId"]) == ("SUCCESS", name), created["Reason"]
    assert created["Data"]["Username"] == username and created["Data"]["SecretArn"].split(":")[-1].startswith(name)
    secret = sm.value(name)
    assert can_login(secret)

    narrowed = {**properties, "Tables": ["public.films"]}
    handler.bootstrap(custom_resource_event(response_server.url, "Update", narrowed, name,
                                            OldResourceProperties=properties), context)
    updated = response_server.next_response()
    assert (updated["Status"], updated["PhysicalResourceId"]) == ("SUCCESS", name), updated["Reason"]
    assert "SELECT on TABLES master_user creates in schema public (default privileges) from" in updated["Reason"]
    assert select_titles(secret) == ["Bananas"]

    handler.bootstrap(custom_resource_event(response_server.url, "Delete", narrowed, name), context)
    kept = response_server.next_response()
    assert kept["Status"] == "SUCCESS" and "kept" in kept["Reason"]
    assert can_login(secret) and secret_exists(sm, name), "Delete keeps the login unless RemoveOnDelete"

    removable = {**narrowed, "RemoveOnDelete": "true"}
    handler.bootstrap(custom_resource_event(response_server.url, "Delete", removable, name), context)
    removed = response_server.next_response()
    assert removed["Status"] == "SUCCESS", removed["Reason"]
    assert existing_roles(pg, username, f"{username}_readonly") == set()
    assert not secret_exists(sm, name)


@dataclass(frozen=True)
class CloneRole:
    """A ``<Username>_clone`` login that existed before the stack (CREATEDB, SELECT granted to it directly)."""

    strategy: str
    #: Whether the bootstrap treats it as its own: attributes and grants brought in line. It is never dropped on
    #: delete either way: the bootstrap did not create it (only marked roles are dropped).
    managed: bool


CLONE_ROLES = {
    "single-user-leaves-someone-elses-clone-alone": CloneRole(SINGLE, False),
    "alternating-users-manages-its-clone": CloneRole(ALTERNATING, True),
}


@pytest.mark.parametrize("clone_role", CLONE_ROLES.values(), ids=CLONE_ROLES.keys())
def test_a_clone_role_is_the_bootstraps_only_under_alternating_users(response_server: ResponseServer, master_arn,
                                                                     username, make_app_user, cluster, pg,
                                                                     clone_role: CloneRole) -> None:
    clone = make_app_user(f"{username}_clone")
    master_execute(cluster, sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(clone["username"])))
    properties = {"MasterSecretId": master_arn, "Username": username, "Strategy": clone_role.strategy,
                  "RemoveOnDelete": "true"}
    name = f"rds-db-credentials/demo-cluster/{username}"

    handler.bootstrap(custom_resource_event(response_server.url, "Create", properties), None)
    created = response_server.next_response()

    assert created["Status"] == "SUCCESS", created["Reason"]
    assert can_login(clone), "its password is never touched"
    if clone_role.managed:
        assert role_attributes(pg, clone["username"]) == {"login": True, "createdb": False}
        assert direct_privileges(pg, clone["username"]) == []
    else:
        assert role_attributes(pg, clone["username"]) == {"login": True, "createdb": True}
        assert direct_privileges(pg, clone["username"]) == [("films", "SELECT")]
        assert clone["username"] not in created["Reason"]

    handler.bootstrap(custom_resource_event(response_server.url, "Delete", properties, name), None)
    removed = response_server.next_response()

    assert removed["Status"] == "SUCCESS", removed["Reason"]
    remaining = existing_roles(pg, username, clone["username"])
    assert remaining == {clone["username"]}, "the login it created is dropped, the clone it found is not"


def test_a_failed_create_is_reported_and_its_rollback_removes_nothing(response_server: ResponseServer, master_arn,
                                                                     make_app_user, pg) -> None:
    """The stack's Create fails on a typo; the rollback's Delete must not drop a same-named login that existed."""
    existing = make_app_user()
    properties = {"MasterSecretId": master_arn, "Username": existing["username"], "Tables": ["public.flims"],
                  "RemoveOnDelete": "true"}

    handler.bootstrap(custom_resource_event(response_server.url, "Create", properties), None)
    failed = response_server.next_response()
    assert failed["Status"] == "FAILED"
    assert "public.flims" in failed["Reason"]
    assert failed["PhysicalResourceId"].startswith(cfn.NOT_CREATED_PREFIX)

    handler.bootstrap(custom_resource_event(response_server.url, "Delete", properties,
                                            failed["PhysicalResourceId"]), None)
    assert response_server.next_response()["Status"] == "SUCCESS"
    assert can_login(existing), "the login that existed before the stack is untouched"


def test_cloudformation_delete_with_unparsable_properties_does_not_block_the_stack(
        response_server: ResponseServer) -> None:
    event = custom_resource_event(response_server.url, "Delete", {"Username": 5}, "rds-db-credentials/x/y")

    handler.bootstrap(event, None)

    assert response_server.next_response()["Status"] == "SUCCESS"
