"""Preflight / `rotation doctor`: one report says what is wrong and how to fix it, fast, and changes nothing.

Real parts throughout: the moto server over HTTP, PostgreSQL with SCRAM over TCP (and TLS when available), and
for the unreachable cases real sockets: a bound port that refuses, a listener that accepts and never answers,
and a listener whose backlog is full, which drops connection attempts like a blackholed route.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from helpers import connect

from rotation.database import scram_verifier
from rotation.handler import rotate
from rotation.preflight import REPORT_BUDGET_S, Finding, Preflight, PreflightReport, Status, diagnose
from rotation_tools.cli import main
from rotation_tools.local.lambda_context import LambdaContext

#: What the issue promises: the report is back within this, whatever does not answer.
PROMISED_SECONDS = 10


# ---------------------------------------------------------------------------------------------- sockets


@pytest.fixture
def ports(closed_port: int, silent_listener: int, blackhole_listener: int) -> dict[str, int]:
    return {"closed": closed_port, "silent": silent_listener, "blackhole": blackhole_listener}


# ---------------------------------------------------------------------------------------------- secrets


def _status(report: PreflightReport) -> dict[str, str]:
    return {check.name: check.status.value for check in report.checks}


def _check(report: PreflightReport, name: str):
    return next(check for check in report.checks if check.name == name)


def _verifiers(pg, *roles: str) -> dict[str, str]:
    with pg.connect() as conn:
        rows = conn.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)", (list(roles),))
        return dict(rows.fetchall())


def _set_password(admin_secret: dict[str, Any], role: str, password: str) -> None:
    from psycopg import sql

    with connect(admin_secret) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram_verifier(conn, role, password))))


SINGLE_USER_HEALTHY = {
    "configuration": "ok", "secrets_manager_endpoint": "ok", "secret_readable": "ok", "secret_well_formed": "ok",
    "rotation_state": "ok", "database_host_resolves": "ok", "database_port_answers": "ok",
    # The local server has no TLS; a secret saying so is reported, not failed.
    "database_tls": "warn", "current_login": "ok",
    "admin_secret_readable": "skip", "admin_login": "skip", "admin_privileges": "skip",
}
ALTERNATING_HEALTHY = {**SINGLE_USER_HEALTHY, "admin_secret_readable": "ok", "admin_login": "ok",
                       "admin_privileges": "ok"}


@pytest.mark.parametrize(
    ("with_masterarn", "expected"),
    [
        pytest.param(False, SINGLE_USER_HEALTHY, id="single-user"),
        pytest.param(True, ALTERNATING_HEALTHY, id="alternating-users"),
    ],
)
def test_a_healthy_secret_passes_and_nothing_changes(with_masterarn, expected, pg, sm, make_app_user, cluster,
                                                      master_arn, store_secret):
    user = make_app_user()
    arn = store_secret({**user, "masterarn": master_arn} if with_masterarn else user)
    sm.enable_rotation(arn)
    stages_before, verifiers_before = sm.stages(arn), _verifiers(pg, user["username"], cluster["username"])

    report = diagnose(arn)

    assert _status(report) == expected
    assert report.status is Status.WARN  # only the unencrypted local connection
    assert sm.stages(arn) == stages_before
    assert sm.value(arn) == user | ({"masterarn": master_arn} if with_masterarn else {})
    assert _verifiers(pg, user["username"], cluster["username"]) == verifiers_before
    rendered = json.dumps(report.to_dict())
    assert user["password"] not in rendered and cluster["password"] not in rendered


@pytest.mark.parametrize("with_masterarn", [False, True], ids=["single-user", "alternating-users"])
def test_no_finding_shows_a_password_in_its_repr(with_masterarn, make_app_user, cluster, master_arn, store_secret,
                                                 monkeypatch):
    """A Finding carries what its check learned (the raw AWSCURRENT value among it) to the next: a debugger, a
    log line or a traceback that shows one must not show a password."""
    user = make_app_user()
    arn = store_secret({**user, "masterarn": master_arn} if with_masterarn else user)
    findings: list[Finding] = []
    run_one = Preflight._run_one

    def recording(*args: Any) -> Finding:
        findings.append(run_one(*args))
        return findings[-1]

    monkeypatch.setattr(Preflight, "_run_one", staticmethod(recording))

    report = diagnose(arn)

    assert len(findings) == len(report.checks) and report.status is not Status.FAIL
    assert any(finding.learned.get("current_raw") for finding in findings), "the raw value was passed on"
    for finding in findings:
        assert user["password"] not in repr(finding) and cluster["password"] not in repr(finding)


# ---------------------------------------------------------------------------------------------- what is wrong


def _wrong_current_password(user, **_):
    return {**user, "password": "not-the-password-" + uuid.uuid4().hex}


def _missing_engine(user, **_):
    return {key: value for key, value in user.items() if key != "engine"}


def _closed_db_port(user, ports, **_):
    return {**user, "port": ports["closed"]}


def _unresolvable_host(user, **_):
    return {**user, "host": "db.does-not-exist.invalid"}


def _admin_without_createrole(user, make_app_user, store_secret, **_):
    return {**user, "masterarn": store_secret(make_app_user())}


def _admin_with_wrong_password(user, cluster, store_secret, **_):
    return {**user, "masterarn": store_secret({**cluster, "password": "wrong-" + uuid.uuid4().hex})}


def _admin_for_another_host(user, cluster, store_secret, **_):
    # The confused-deputy guard: never send the admin's credentials where a user secret points.
    return {**user, "masterarn": store_secret({**cluster, "host": "10.0.0.99", "dbClusterIdentifier": "other"})}


def _createrole_admin_without_admin_option(user, pg, store_secret, allow_old_server=False, **_):
    """A CREATEROLE role that did not create the user: enough before PostgreSQL 16, not since."""
    if pg.version < 16 and not allow_old_server:
        pytest.skip(f"ADMIN OPTION rules start with PostgreSQL 16; this server is {pg.version}")
    from psycopg import sql

    name, password = f"ops_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(scram_verifier(conn, name, password))))
    # The console's format: the admin names its own server, the user's.
    admin = {"username": name, "password": password, "host": user["host"], "port": user["port"],
             "ssl": user.get("ssl", True)}
    return {**user, "masterarn": store_secret(admin)}


@pytest.mark.parametrize(
    ("broken", "failing", "expected_in_fix"),
    [
        pytest.param(_wrong_current_password, "current_login", "rotation repair", id="current-password-wrong"),
        pytest.param(_missing_engine, "secret_well_formed", "Amazon RDS database credentials", id="no-engine-key"),
        pytest.param(_closed_db_port, "database_port_answers", "port", id="db-port-closed"),
        pytest.param(_unresolvable_host, "database_host_resolves", "DNS", id="db-host-unresolvable"),
        pytest.param(_admin_without_createrole, "admin_privileges", "CREATEROLE", id="admin-lacks-createrole"),
        pytest.param(_createrole_admin_without_admin_option, "admin_privileges", "WITH ADMIN TRUE",
                     id="admin-lacks-admin-option-pg16"),
        pytest.param(_admin_with_wrong_password, "admin_login", "admin secret", id="admin-password-wrong"),
        pytest.param(_admin_for_another_host, "admin_secret_readable", "point the user secret's host",
                     id="admin-for-another-host"),
    ],
)
def test_each_fault_fails_its_own_check_with_a_fix(broken, failing, expected_in_fix, pg, make_app_user, cluster,
                                                   store_secret, ports):
    user = make_app_user()
    secret = broken(user, pg=pg, cluster=cluster, make_app_user=make_app_user, store_secret=store_secret,
                    ports=ports)
    report = diagnose(store_secret(secret))

    failed = [check.name for check in report.checks if check.status is Status.FAIL]
    assert failed == [failing]
    assert expected_in_fix in _check(report, failing).fix
    assert secret["password"] not in json.dumps(report.to_dict())


def test_an_unknown_secret_is_reported_as_unreadable():
    report = diagnose(f"no-such-secret-{uuid.uuid4().hex}")

    assert _status(report)["secrets_manager_endpoint"] == "ok"  # it answered, with an error
    assert _check(report, "secret_readable").status is Status.FAIL
    assert "ResourceNotFoundException" in _check(report, "secret_readable").detail
    assert "GetSecretValue" in _check(report, "secret_readable").fix
    assert {_status(report)[name] for name in ("secret_well_formed", "current_login", "admin_login")} == {"skip"}


def test_a_missing_region_fails_the_endpoint_check_with_the_region_fix(monkeypatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)  # and the config file is os.devnull: no region anywhere

    report = diagnose(f"no-such-secret-{uuid.uuid4().hex}")

    endpoint = _check(report, "secrets_manager_endpoint")
    assert endpoint.status is Status.FAIL
    assert "no AWS region configured" in endpoint.detail
    assert "AWS_REGION" in endpoint.fix and "VPC endpoint" not in endpoint.fix


def test_a_stuck_rotation_is_a_warning_that_points_to_repair(sm, make_app_user, store_secret):
    arn = store_secret(make_app_user())
    sm.stage_pending(arn)

    report = diagnose(arn)

    state = _check(report, "rotation_state")
    assert state.status is Status.WARN
    assert "rotation repair --secret-id" in state.fix
    assert report.status is Status.WARN


# ---------------------------------------------------------------------------------------------- nothing answers


def _secrets_manager_at(port: int, monkeypatch) -> None:
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("SECRETS_MANAGER_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", endpoint)


@pytest.mark.parametrize(
    ("unreachable", "kind", "failing", "expected_in_detail", "expected_in_fix"),
    [
        pytest.param("secrets_manager", "closed", "secrets_manager_endpoint", "connection failed",
                     "is the local server", id="secrets-manager-refuses"),
        pytest.param("secrets_manager", "silent", "secrets_manager_endpoint", "no answer came",
                     "is the local server", id="secrets-manager-never-answers"),
        pytest.param("secrets_manager", "blackhole", "secrets_manager_endpoint", "packets are dropped",
                     "is the local server", id="secrets-manager-blackholed"),
        pytest.param("database", "silent", "database_port_answers", "no PostgreSQL answered", "proxy",
                     id="database-never-answers"),
        pytest.param("database", "blackhole", "database_port_answers", "packets are dropped", "security groups",
                     id="database-blackholed"),
    ],
)
def test_the_report_comes_back_in_time_when_nothing_answers(unreachable, kind, failing, expected_in_detail,
                                                            expected_in_fix, ports, make_app_user, master_arn,
                                                            cluster, store_secret, monkeypatch):
    user = make_app_user()
    secret = {**user, "masterarn": master_arn}
    if unreachable == "database":
        secret["port"] = ports[kind]
        # The admin's own server is the one that does not answer (else the policy refuses the secret first).
        secret["masterarn"] = store_secret({**cluster, "port": ports[kind]})
    arn = store_secret(secret)
    if unreachable == "secrets_manager":
        _secrets_manager_at(ports[kind], monkeypatch)

    started = time.monotonic()
    report = diagnose(arn)
    elapsed = time.monotonic() - started

    assert elapsed < PROMISED_SECONDS
    assert report.duration_ms <= (REPORT_BUDGET_S + 0.5) * 1000
    failed = [check.name for check in report.checks if check.status is Status.FAIL]
    assert failed == [failing]
    assert expected_in_detail in _check(report, failing).detail
    assert expected_in_fix in _check(report, failing).fix
    # What needs the unreachable part is skipped, not waited for again.
    assert _status(report)["current_login"] == "skip"


def test_the_deadline_holds_even_when_a_check_outlives_its_own_timeout(ports, make_app_user, store_secret):
    # A 1.5 s budget is shorter than the port check's own 2 s timeout: the deadline guard must cut it off and
    # every later check must be skipped for lack of time rather than attempted.
    arn = store_secret({**make_app_user(), "port": ports["blackhole"]})

    started = time.monotonic()
    report = Preflight(budget_s=1.5).run(arn)
    elapsed = time.monotonic() - started

    assert elapsed < 2.5
    port = _check(report, "database_port_answers")
    assert port.status is Status.FAIL and "no result within" in port.detail
    after = report.checks[[check.name for check in report.checks].index(port.name) + 1:]
    assert {check.status for check in after} == {Status.SKIP}
    assert all("budget is spent" in check.detail for check in after)


# ---------------------------------------------------------------------------------------------- TLS


@pytest.fixture
def tls_cluster(pg_tls) -> dict[str, Any]:
    from rotation_tools.local.aurora import setup_aurora_like

    return setup_aurora_like(pg_tls)


@pytest.mark.parametrize(
    ("sslmode", "trust_server_ca", "tls_status", "login_status", "detail_words"),
    [
        pytest.param(True, True, "ok", "ok", "verified against", id="verify-full-with-the-server-CA"),
        pytest.param(True, False, "fail", "fail", "certificate verification failed", id="verify-full-unknown-CA"),
        pytest.param("require", False, "ok", "ok", "not verified", id="require-checks-nothing"),
    ],
)
def test_tls_handshake_and_certificate(sslmode, trust_server_ca, tls_status, login_status, detail_words, pg_tls,
                                       tls_cluster, store_secret, monkeypatch):
    from rotation_tools.local.aurora import create_app_role

    user = create_app_role(pg_tls, tls_cluster, f"app_{uuid.uuid4().hex[:8]}")
    if trust_server_ca:
        monkeypatch.setenv("PGSSLROOTCERT", str(pg_tls.ca_file))
    else:
        monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    report = diagnose(store_secret({**user, "ssl": sslmode}))

    tls = _check(report, "database_tls")
    assert (tls.status.value, _check(report, "current_login").status.value) == (tls_status, login_status)
    assert detail_words in tls.detail
    assert "raw SSLRequest probe" in tls.detail  # says how it was checked
    if tls_status == "fail":
        assert "PGSSLROOTCERT" in tls.fix


def test_before_postgresql_16_createrole_alone_may_alter_roles(pg_tls, tls_cluster, store_secret, monkeypatch):
    if pg_tls.version >= 16:
        pytest.skip(f"needs a PostgreSQL older than 16; the TLS server is {pg_tls.version}")
    from rotation_tools.local.aurora import create_app_role

    monkeypatch.setenv("PGSSLROOTCERT", str(pg_tls.ca_file))
    user = create_app_role(pg_tls, tls_cluster, f"app_{uuid.uuid4().hex[:8]}")
    # The same CREATEROLE admin that did not create the user, which PostgreSQL 16+ refuses (see above).
    secret = _createrole_admin_without_admin_option({**user, "ssl": True}, pg=pg_tls, store_secret=store_secret,
                                                    allow_old_server=True)

    privileges = _check(diagnose(store_secret(secret)), "admin_privileges")

    assert privileges.status is Status.OK
    assert f"enough before PostgreSQL 16; this is {pg_tls.version}" in privileges.detail


# ---------------------------------------------------------------------------------------------- entry points


def test_the_preflight_event_answers_through_the_rotation_handler(make_app_user, store_secret, capsys):
    user = make_app_user()
    arn = store_secret(user)

    answer = rotate({"Preflight": True, "SecretId": arn}, LambdaContext("rotation-preflight-test"))

    assert answer["preflight"] is True and answer["changed"] is False
    assert {check["name"]: check["status"] for check in answer["checks"]}["current_login"] == "ok"
    assert all(set(check) == {"name", "status", "duration_ms", "detail", "fix"} for check in answer["checks"])
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    report_lines = [line for line in logged if "preflight" in line]
    assert report_lines and report_lines[0]["preflight"]["status"] == answer["status"]
    assert user["password"] not in json.dumps(answer) + json.dumps(logged)


def test_an_unexpected_error_is_reported_by_its_type_only(make_app_user, store_secret, monkeypatch, capsys):
    """A bug, or a library's exception, in one check: its message may quote anything (here a connection string
    with a password the report does not know to redact), so the report names the type and nothing more."""
    leaked = f"postgresql://app:{uuid.uuid4().hex}@db"

    def crash(facts: Any) -> Any:
        raise RuntimeError(f"driver gave up on {leaked}")

    monkeypatch.setattr(Preflight, "_current_login", staticmethod(crash))
    arn = store_secret(make_app_user())

    answer = rotate({"Preflight": True, "SecretId": arn}, LambdaContext("rotation-preflight-test"))

    check = next(check for check in answer["checks"] if check["name"] == "current_login")
    assert (check["status"], check["detail"]) == ("fail", "unexpected RuntimeError; its traceback is in the log")
    assert leaked not in json.dumps(answer)
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    report_line = next(line for line in logged if "preflight" in line)
    assert leaked not in json.dumps(report_line)
    assert any(line.get("check") == "current_login" and line.get("error") == "RuntimeError" for line in logged)


@pytest.mark.parametrize(
    ("wrong_password", "as_json", "exit_code", "expected_output"),
    [
        pytest.param(False, False, 0, ["✓  current_login", "preflight warn"], id="healthy-table"),
        pytest.param(True, False, 1, ["✗  current_login", "fix: AWSCURRENT's password"], id="failing-table"),
        pytest.param(True, True, 1, ['"status": "fail"'], id="failing-json"),
    ],
)
def test_doctor_prints_the_report_and_exits_non_zero_on_failure(wrong_password, as_json, exit_code,
                                                                expected_output, make_app_user, store_secret,
                                                                capsys):
    user = make_app_user()
    secret = _wrong_current_password(user) if wrong_password else user
    arn = store_secret(secret)

    code = main(["doctor", "--secret-id", arn, *(["--json"] if as_json else [])])

    out = capsys.readouterr().out
    assert code == exit_code
    for text in expected_output:
        assert text in out
    if as_json:
        assert json.loads(out)["secret_arn"] == arn
    assert secret["password"] not in out
