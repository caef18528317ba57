"""The bootstrap keeps its read-only promise for every input, and a forged event gains nothing.

Whoever can write a bootstrap event (an operator, a CloudFormation template author) has less privilege than the
master secret the function reads. Each scenario replays an attack against the real server and moto, and asserts
what matters: the "read-only" login cannot write, nothing unrelated is dropped or deleted, and the master's
credentials never travel anywhere but the master's own server, over the master's own TLS.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import pytest
from botocore.exceptions import ClientError
from cfn_responses import ResponseServer, custom_resource_event
from helpers import RecordingRelay, can_login, select_titles
from psycopg import sql

from rotation import handler
from rotation.exceptions import BootstrapError, ForeignEndpoint, InvalidEventError
from rotation_tools.local.aurora import setup_aurora_like
from rotation_tools.local.lambda_context import LambdaContext

NAME = "rds-db-credentials/demo-cluster/{}"


def superuser(pg, *statements: sql.Composable) -> None:
    with pg.connect(dbname="appdb") as conn:
        for statement in statements:
            conn.execute(statement)


def secret_absent(sm, name: str) -> bool:
    try:
        sm.value(name)
    except ClientError:
        return True
    return False


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


# --- existing roles that would break the promise ------------------------------------------------------------

@dataclass(frozen=True)
class Unsafe:
    #: Which event key names the existing role.
    key: str
    #: Superuser statements that make the existing role ``name`` unsafe; ``helper`` is a fresh role name.
    setup: Callable[[str, str], list[sql.Composable]]
    message: str


UNSAFE = {
    "username-owns-a-table": Unsafe("Username", lambda name, helper: [
        sql.SQL("CREATE ROLE {} LOGIN").format(ident(name)),
        sql.SQL("CREATE TABLE {} (id int)").format(ident(helper)),
        sql.SQL("ALTER TABLE {} OWNER TO {}").format(ident(helper), ident(name))], "owns objects"),
    "username-in-a-role-with-insert": Unsafe("Username", lambda name, helper: [
        sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(helper)),
        sql.SQL("GRANT INSERT ON films TO {}").format(ident(helper)),
        sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(ident(name), ident(helper))], "INSERT on table public.films"),
    "username-in-a-table-owner": Unsafe("Username", lambda name, helper: [
        sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(helper)),
        sql.SQL("CREATE TABLE {} (id int)").format(ident(helper + "_t")),
        sql.SQL("ALTER TABLE {} OWNER TO {}").format(ident(helper + "_t"), ident(helper)),
        sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(ident(name), ident(helper))], "which owns objects"),
    "group-in-a-writer": Unsafe("GroupRole", lambda name, helper: [
        sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(helper)),
        sql.SQL("GRANT DELETE ON films TO {}").format(ident(helper)),
        sql.SQL("CREATE ROLE {} NOLOGIN IN ROLE {}").format(ident(name), ident(helper))], "DELETE on table"),
    "group-in-a-superuser-group": Unsafe("GroupRole", lambda name, helper: [
        sql.SQL("CREATE ROLE {} NOLOGIN SUPERUSER").format(ident(helper)),
        sql.SQL("CREATE ROLE {} NOLOGIN IN ROLE {}").format(ident(name), ident(helper))], "administrative power"),
    "group-in-pg_write_all_data": Unsafe("GroupRole", lambda name, helper: [
        sql.SQL("CREATE ROLE {} NOLOGIN IN ROLE pg_write_all_data").format(ident(name))], "administrative power"),
}


@pytest.mark.parametrize("unsafe", UNSAFE.values(), ids=UNSAFE.keys())
def test_an_existing_role_that_could_write_is_refused(unsafe: Unsafe, pg, sm, master_arn, username) -> None:
    name = f"existing_{uuid.uuid4().hex[:8]}"
    superuser(pg, *unsafe.setup(name, f"helper_{uuid.uuid4().hex[:8]}"))
    event = {"MasterSecretId": master_arn, "Username": username, unsafe.key: name}

    with pytest.raises(BootstrapError, match="cannot keep its read-only promise") as caught:
        handler.bootstrap(event, None)

    assert unsafe.message in str(caught.value)
    assert secret_absent(sm, NAME.format(event["Username"])), "no secret was created"
    with pg.connect() as conn:
        created = conn.execute("SELECT rolname FROM pg_roles WHERE rolname IN (%s, %s)",
                               (username, username + "_readonly")).fetchall()
    assert created == [] or unsafe.key == "Username", "nothing was created"


def test_a_rerun_with_a_narrower_scope_revokes_what_is_no_longer_named(pg, sm, master_arn, username,
                                                                       cluster) -> None:
    extra = f"extra_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(host=cluster["host"], port=cluster["port"], user=cluster["username"],
                         password=cluster["password"], dbname="appdb", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(ident(extra)))
    event = {"MasterSecretId": master_arn, "Username": username, "Tables": ["public.films", f"public.{extra}"]}
    secret = sm.value(handler.bootstrap(event, None)["SecretArn"])
    with psycopg.connect(host=secret["host"], port=secret["port"], user=username, password=secret["password"],
                         dbname="appdb", autocommit=True) as conn:
        conn.execute(sql.SQL("SELECT * FROM {}").format(ident(extra)))

    handler.bootstrap({**event, "Tables": ["public.films"]}, None)

    assert select_titles(secret) == ["Bananas"]
    with psycopg.connect(host=secret["host"], port=secret["port"], user=username, password=secret["password"],
                         dbname="appdb", autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(sql.SQL("SELECT * FROM {}").format(ident(extra)))


# --- where the master's credentials go ----------------------------------------------------------------------

def test_an_event_host_never_receives_the_master_login(pg, sm, master_arn, username, cluster) -> None:
    with RecordingRelay(pg.port) as relay:
        event = {"MasterSecretId": master_arn, "Username": username, "Host": "127.0.0.1", "Port": relay.port,
                 "SSL": "false"}
        with pytest.raises(ForeignEndpoint, match="aimed at another server"):
            handler.bootstrap(event, None)
    assert relay.first_packets == [], "nothing connected through the event's address"
    assert secret_absent(sm, NAME.format(username))


@pytest.mark.parametrize("weaker", ["false", "require", "verify-ca"])
def test_an_event_cannot_lower_the_masters_tls(pg_tls, store_secret, sm, username, monkeypatch, weaker) -> None:
    master = setup_aurora_like(pg_tls)  # "ssl": true, verify-full
    monkeypatch.setenv("PGSSLROOTCERT", str(pg_tls.ca_file))
    with RecordingRelay(pg_tls.port) as relay:
        master_arn = store_secret({**master, "host": "localhost", "port": relay.port})
        with pytest.raises(InvalidEventError, match="weaker than the master's own sslmode=verify-full"):
            handler.bootstrap({"MasterSecretId": master_arn, "Username": username, "SSL": weaker}, None)
    assert master["username"] not in relay.plaintext_logins
    assert relay.first_packets == [], "refused before connecting"


# --- Delete removes only what Create made --------------------------------------------------------------------

def test_a_forged_delete_removes_nothing_it_did_not_create(response_server: ResponseServer, pg, sm, cluster,
                                                           make_app_user, store_secret) -> None:
    """A Delete naming the master secret (as SecretName) and an application's role (as Username)."""
    victim = make_app_user()
    master_name = f"admin/{uuid.uuid4().hex[:8]}"
    master_arn = store_secret(cluster, name=master_name)
    app_secret_arn = store_secret(victim, name=NAME.format(victim["username"]))
    for secret_name in (master_name, NAME.format(victim["username"])):
        properties = {"MasterSecretId": master_arn, "Username": victim["username"], "SecretName": secret_name,
                      "RemoveOnDelete": "true"}
        handler.bootstrap(custom_resource_event(response_server.url, "Delete", properties, secret_name),
                          LambdaContext("bootstrap", timeout_seconds=60))
        answer = response_server.next_response()
        assert answer["Status"] == "SUCCESS", answer["Reason"]
    assert sm.value(master_arn) == cluster, "the master secret is still there"
    assert sm.value(app_secret_arn) == victim, "the application's secret is still there"
    assert can_login(victim), "the application's role was not dropped"


def test_delete_removes_what_create_made(response_server: ResponseServer, pg, sm, master_arn, username) -> None:
    properties = {"MasterSecretId": master_arn, "Username": username, "RemoveOnDelete": "true"}
    context = LambdaContext("bootstrap", timeout_seconds=60)
    handler.bootstrap(custom_resource_event(response_server.url, "Create", properties), context)
    created = response_server.next_response()
    assert created["Status"] == "SUCCESS", created["Reason"]
    tags = sm.client().describe_secret(SecretId=created["Data"]["SecretArn"])["Tags"]
    assert {"Key": "aurora-postgres-rotation:created-by", "Value": "bootstrap"} in tags

    handler.bootstrap(custom_resource_event(response_server.url, "Delete", properties, NAME.format(username)),
                      context)
    removed = response_server.next_response()

    assert removed["Status"] == "SUCCESS", removed["Reason"]
    assert f"dropped role '{username}'" in removed["Reason"] and "deleted secret" in removed["Reason"]
    assert secret_absent(sm, NAME.format(username))


def test_the_created_by_tag_cannot_be_given_in_an_event(master_arn, username) -> None:
    event = {"MasterSecretId": master_arn, "Username": username,
             "Tags": {"aurora-postgres-rotation:created-by": "bootstrap"}}
    with pytest.raises(InvalidEventError, match="reserved key"):
        handler.bootstrap(event, None)

