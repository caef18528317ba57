"""An attacker who may edit only their own user secret gains nothing: the attacks of the threat model replayed
against real PostgreSQL servers (the cluster, a decoy, a relay) and the Secrets Manager and RDS APIs on moto.

Every attack asserts what the victim cares about: their password still works, no clone of them appeared, the
relay never carried the admin's login, and the attacker's own AWSCURRENT still logs in. docs/security.md has the
threat model.
"""

from __future__ import annotations

import json
import re
import uuid

import psycopg
import pytest
from helpers import RecordingRelay, can_login
from service import invoke, resume, rotate

from rotation.events import Step
from rotation.exceptions import (
    AdminEndpointUnknown,
    AdministrativeRoleRefused,
    AuthenticationMethodRejected,
    ForeignEndpoint,
    LoginRefused,
)
from rotation_tools.local.aurora import create_app_role, setup_aurora_like
from rotation_tools.local.postgres import find_bindir, start_postgres

SINGLE, ALTERNATING = "single-user", "alternating-users"
sql = psycopg.sql


@pytest.fixture(scope="module")
def decoy_pg():
    """A server the attacker runs: any role name logs in there with a password the attacker chose."""
    with start_postgres(find_bindir(), log_statement="all") as server:
        yield server


@pytest.fixture
def console_admin_arn(cluster, store_secret) -> str:
    """The admin secret in the RDS console's format: it names its own host, port and cluster."""
    return store_secret(cluster, name=f"admin/{uuid.uuid4().hex[:8]}")


def role_exists(pg, name: str) -> bool:
    with psycopg.connect(**pg.superuser_conninfo(), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def server_version(server) -> int:
    with psycopg.connect(**server.superuser_conninfo(), autocommit=True) as conn:
        return int(conn.execute("SHOW server_version_num").fetchone()[0])


def as_superuser(server, *statements: sql.Composable | str, dbname: str = "postgres") -> None:
    with psycopg.connect(**server.superuser_conninfo(dbname), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def use_strategy(monkeypatch, strategy: str) -> None:
    monkeypatch.setenv("ROTATION_STRATEGY", strategy)


# --- legitimate rotations through the admin secret keep working -----------------------------------------

@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
@pytest.mark.parametrize("endpoint", ["writer", "reader"])
def test_rds_managed_admin_secret_is_located_through_the_rds_api(sm, aurora, make_app_user, store_secret,
                                                                 monkeypatch, strategy, endpoint):
    use_strategy(monkeypatch, strategy)
    user = make_app_user()
    secret = {**user, "host": getattr(aurora, endpoint), "masterarn": aurora.managed_arn}
    arn = store_secret(secret)
    for _ in range(2):
        rotate(sm, arn)
        assert can_login(sm.value(arn, "AWSCURRENT"))
    assert sm.value(arn, "AWSCURRENT")["host"] == secret["host"], "the secret's host is never rewritten"


def test_admin_endpoint_pinned_in_the_function_configuration(sm, pg, cluster, make_app_user, store_secret,
                                                             monkeypatch):
    """A master secret without host or tags: the function's ADMIN_ENDPOINT says where the admin acts; without
    it the rotation stops with the fix, and the service's retry converges once it is set."""
    plain = store_secret({"username": cluster["username"], "password": cluster["password"]})
    arn = store_secret({**make_app_user(), "masterarn": plain})
    token = sm.stage_pending(arn)
    invoke(Step.CREATE, arn, token)
    with pytest.raises(AdminEndpointUnknown, match="ADMIN_ENDPOINT"):
        invoke(Step.SET, arn, token)
    assert can_login(sm.value(arn, "AWSCURRENT"))
    monkeypatch.setenv("ADMIN_ENDPOINT", f"{pg.host}:{pg.port}")
    monkeypatch.setenv("ADMIN_SSLMODE", "disable")
    resume(arn, token)
    assert can_login(sm.value(arn, "AWSCURRENT"))
    assert sm.value(arn, "AWSCURRENT")["username"].endswith("_clone")


# --- 1. host bypass: the attacker's secret points at a decoy where their password "works" ------------------

def decoy_login(decoy_pg, username: str) -> str:
    """On the decoy, a role named ``username`` with a password the attacker knows."""
    password = f"decoy-{uuid.uuid4().hex}"
    as_superuser(decoy_pg, sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(username),
                                                                              sql.Literal(password)))
    return password


@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
@pytest.mark.parametrize("admin_kind", ["console-format", "rds-managed"])
def test_host_bypass_through_a_decoy_server_is_refused(sm, pg, decoy_pg, aurora, console_admin_arn, make_app_user,
                                                       store_secret, cluster, monkeypatch, strategy, admin_kind):
    use_strategy(monkeypatch, strategy)
    victim = make_app_user()
    admin_arn, cluster_id = ((console_admin_arn, cluster["dbClusterIdentifier"]) if admin_kind == "console-format"
                             else (aurora.managed_arn, aurora.identifier))
    attacker = {  # the attacker's own secret, edited: a victim's name, the decoy's address, the admin's cluster
        "engine": "postgres", "host": "127.0.0.1", "port": decoy_pg.port, "dbname": "postgres", "ssl": False,
        "username": victim["username"], "password": decoy_login(decoy_pg, victim["username"]),
        "masterarn": admin_arn, "dbClusterIdentifier": cluster_id,
    }
    arn = store_secret(attacker)
    with pytest.raises(ForeignEndpoint, match="refusing to act for a secret aimed at another server"):
        rotate(sm, arn)
    assert can_login(victim), "the victim's password is unchanged"
    assert not role_exists(pg, victim["username"] + "_clone"), "no clone of the victim"
    assert sm.value(arn, "AWSCURRENT") == attacker


def test_same_host_string_on_another_port_is_another_server(sm, pg, decoy_pg, console_admin_arn, make_app_user,
                                                            store_secret):
    victim = make_app_user()
    attacker = {**victim, "port": decoy_pg.port, "dbname": "postgres", "masterarn": console_admin_arn,
                "password": decoy_login(decoy_pg, victim["username"])}
    arn = store_secret(attacker)
    with pytest.raises(ForeignEndpoint, match=rf"points at 127\.0\.0\.1:{decoy_pg.port}"):
        rotate(sm, arn)
    assert can_login(victim)
    assert not role_exists(pg, victim["username"] + "_clone")


# --- 2. relay of the admin login --------------------------------------------------------------------------

def test_a_relay_never_sees_the_admins_login(sm, pg, aurora, make_app_user, store_secret, cluster):
    with RecordingRelay(pg.port) as relay:
        own = make_app_user()  # the attacker's own, working credentials, routed through their relay
        arn = store_secret({**own, "host": "127.0.0.1", "port": relay.port, "ssl": False,
                            "masterarn": aurora.managed_arn})
        with pytest.raises(ForeignEndpoint):
            rotate(sm, arn)
        from rotation import handler

        report = handler.rotate({"Preflight": True, "SecretId": arn}, None)
    assert cluster["username"] not in relay.plaintext_logins, "the admin never logged in through the relay"
    assert relay.first_packets == [] or set(relay.plaintext_logins) <= {own["username"]}
    assert cluster["username"] not in json.dumps(report), "preflight does not tell the admin's user name"
    assert can_login(own)


# --- 3. the admin's TLS never follows the user secret -----------------------------------------------------

def test_admin_connections_use_the_admins_tls_even_when_the_user_secret_says_ssl_false(sm, pg_tls, store_secret,
                                                                                       monkeypatch):
    master = setup_aurora_like(pg_tls)
    monkeypatch.setenv("PGSSLROOTCERT", str(pg_tls.ca_file))
    with RecordingRelay(pg_tls.port) as relay:
        # The RDS console's format: a host, no "ssl" key, which means verify-full.
        admin_arn = store_secret({"engine": "postgres", "host": "localhost", "port": relay.port,
                                  "username": master["username"], "password": master["password"],
                                  "dbname": master["dbname"]})
        user = create_app_role(pg_tls, master, f"tls_{uuid.uuid4().hex[:8]}")
        arn = store_secret({**user, "host": "localhost", "port": relay.port, "ssl": False, "masterarn": admin_arn})
        rotate(sm, arn)
    assert master["username"] not in relay.plaintext_logins, "no admin startup packet in plaintext"
    assert user["username"] not in relay.plaintext_logins, "the proof of possession travelled over TLS too"
    authorized = re.findall(rf"connection authorized: user={master['username']} .*", pg_tls.server_log())
    assert authorized and all("SSL enabled" in line for line in authorized), authorized
    new = sm.value(arn, "AWSCURRENT")
    assert can_login({**new, "host": pg_tls.host, "port": pg_tls.port})


# --- targets: never an administrative role, by attribute or by membership ----------------------------------

ADMINISTRATIVE = {
    "superuser-group": lambda victim, master: [
        sql.SQL("CREATE ROLE {} NOLOGIN SUPERUSER").format(sql.Identifier(victim + "_su")),
        sql.SQL("GRANT {} TO {}").format(sql.Identifier(victim + "_su"), sql.Identifier(victim))],
    "nested-superuser-group": lambda victim, master: [
        sql.SQL("CREATE ROLE {} NOLOGIN SUPERUSER").format(sql.Identifier(victim + "_su")),
        sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(victim + "_mid")),
        sql.SQL("GRANT {} TO {}").format(sql.Identifier(victim + "_su"), sql.Identifier(victim + "_mid")),
        sql.SQL("GRANT {} TO {}").format(sql.Identifier(victim + "_mid"), sql.Identifier(victim))],
    "rds_superuser": lambda victim, master: [sql.SQL("GRANT rds_superuser TO {}").format(sql.Identifier(victim))],
    "pg_write_all_data": lambda victim, master: [
        sql.SQL("GRANT pg_write_all_data TO {}").format(sql.Identifier(victim))],
    "pg_execute_server_program": lambda victim, master: [
        sql.SQL("GRANT pg_execute_server_program TO {}").format(sql.Identifier(victim))],
    "member-of-the-admin": lambda victim, master: [
        sql.SQL("GRANT {} TO {}").format(sql.Identifier(master), sql.Identifier(victim))],
    "createrole": lambda victim, master: [sql.SQL("ALTER ROLE {} CREATEROLE").format(sql.Identifier(victim))],
    "bypassrls": lambda victim, master: [sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(victim))],
}


@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
@pytest.mark.parametrize("power", sorted(ADMINISTRATIVE))
def test_the_admin_never_rotates_an_administrative_role(sm, pg, cluster, console_admin_arn, make_app_user,
                                                        store_secret, monkeypatch, strategy, power):
    """Even with the role's real password (the proof passes), the admin refuses to reset or clone it."""
    use_strategy(monkeypatch, strategy)
    if power == "member-of-the-admin" and server_version(pg) >= 160000:
        pytest.skip("since PostgreSQL 16 the admin is a member of the roles it created, so the reverse membership "
                    "is a cycle the server refuses; run with PG_BIN of PostgreSQL 15 to exercise it")
    victim = make_app_user()
    as_superuser(pg, *ADMINISTRATIVE[power](victim["username"], cluster["username"]))
    arn = store_secret({**victim, "masterarn": console_admin_arn})
    with pytest.raises(AdministrativeRoleRefused, match=f"refusing to change role '{victim['username']}"):
        rotate(sm, arn)
    assert can_login(victim), "the role's password is unchanged"
    assert not role_exists(pg, victim["username"] + "_clone"), "no login clone joined it"


def test_the_admin_itself_is_never_a_target(sm, pg, cluster, console_admin_arn, store_secret, monkeypatch):
    use_strategy(monkeypatch, SINGLE)
    arn = store_secret({**cluster, "masterarn": console_admin_arn})
    with pytest.raises(AdministrativeRoleRefused, match="server-wide power"):
        rotate(sm, arn)
    assert can_login(cluster)


@pytest.mark.parametrize("name", ["owner", "owner_clone"], ids=["nologin-owner", "its-missing-clone"])
def test_no_clone_of_a_nologin_table_owner(sm, pg, cluster, console_admin_arn, store_secret, name):
    """The attacker names a NOLOGIN role that owns a table (or its clone, to be toggled back to it)."""
    owner = f"owner_{uuid.uuid4().hex[:8]}"
    as_superuser(pg, sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)),
                 sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(owner + "_t")),
                 sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(owner + "_t"), sql.Identifier(owner)),
                 dbname=cluster["dbname"])
    username = owner if name == "owner" else owner + "_clone"
    arn = store_secret({**cluster, "username": username, "password": "guess", "masterarn": console_admin_arn})
    with pytest.raises(LoginRefused, match="does not log in at the admin's server"):
        rotate(sm, arn)
    assert not role_exists(pg, owner + "_clone")
    with psycopg.connect(**pg.superuser_conninfo(cluster["dbname"]), autocommit=True) as conn:
        assert conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = %s",
                            (owner + "_t",)).fetchone() == (owner,)


def test_pending_version_with_tls_off_is_never_set(sm, make_app_user, store_secret):
    arn = store_secret(make_app_user())
    token = rotate(sm, arn, steps=[Step.CREATE])
    pending = sm.value(arn, "AWSPENDING", token)
    original = sm.value(arn, "AWSCURRENT")
    sm.client().put_secret_value(SecretId=arn, ClientRequestToken=token, VersionStages=["AWSPENDING"],
                                 SecretString=json.dumps({**pending, "ssl": "require"}))
    with pytest.raises(Exception, match="sslmode"):
        invoke(Step.SET, arn, token)
    assert can_login(original)



# --- failures that are not about a password ---------------------------------------------------------------

@pytest.fixture
def ident_only_role(pg, make_app_user):
    """A role that pg_hba.conf authenticates with ident (nothing answers on port 113 here), as rds_iam selects
    PAM on Aurora: its password is correct and still never accepted."""
    user = make_app_user()
    hba = pg.data_dir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f'host all "{user["username"]}" 127.0.0.1/32 ident\n' + original)
    as_superuser(pg, "SELECT pg_reload_conf()")
    yield user
    hba.write_text(original)
    as_superuser(pg, "SELECT pg_reload_conf()")


def test_a_non_password_authentication_failure_is_not_a_wrong_password(sm, ident_only_role, store_secret):
    arn = store_secret(ident_only_role)
    token = sm.stage_pending(arn)
    invoke(Step.CREATE, arn, token)
    with pytest.raises(AuthenticationMethodRejected, match="by ident authentication, not by a password"):
        invoke(Step.SET, arn, token)
    assert sm.value(arn, "AWSCURRENT") == ident_only_role


# --- the admin's login: SCRAM only -------------------------------------------------------------------------

@pytest.fixture
def md5_admin(pg, cluster, store_secret):
    """A CREATEROLE admin whose password the server keeps as md5 and checks with md5 (pg_hba): an exchange that,
    unlike SCRAM, a relay can replay. Returns (admin secret ARN, admin name)."""
    name, password = f"md5admin_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    as_superuser(pg, "SET password_encryption = 'md5'",
                 sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(sql.Identifier(name),
                                                                                sql.Literal(password)))
    hba = pg.data_dir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f'host all "{name}" 127.0.0.1/32 md5\n' + original)
    as_superuser(pg, "SELECT pg_reload_conf()")
    yield store_secret({**cluster, "username": name, "password": password}), name
    hba.write_text(original)
    as_superuser(pg, "SELECT pg_reload_conf()")


def test_the_admin_never_logs_in_with_a_replayable_exchange(sm, pg, md5_admin, make_app_user, store_secret,
                                                            monkeypatch):
    """The admin could rotate this user (it administers the role), but the server asks for md5: refused before
    anything is sent, and nothing changes."""
    use_strategy(monkeypatch, SINGLE)
    admin_arn, admin = md5_admin
    victim = make_app_user()
    as_superuser(pg, sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(sql.Identifier(victim["username"]),
                                                                        sql.Identifier(admin)))
    arn = store_secret({**victim, "masterarn": admin_arn})
    with pytest.raises(AuthenticationMethodRejected, match="admin logins use SCRAM-SHA-256 only"):
        rotate(sm, arn)
    assert can_login(victim), "the password is unchanged"
    assert sm.value(arn, "AWSCURRENT")["password"] == victim["password"]
