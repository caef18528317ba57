"""Fault injection: a rotation fails at every Secrets Manager call, database connection and role-changing
statement in turn, and nobody is ever locked out.

For each scenario and fault family a clean run first lists the rotation's injection points; then, for every
point k, a fresh secret is rotated with the fault at k, the way the service runs a rotation (the steps in order,
stopping at the first failure). After the failure the test checks what an application would see (does
AWSCURRENT log in?), then retries the way the service does (same token, from createSecret) and checks the end
state: AWSCURRENT new and logging in, AWSPREVIOUS the original value, no AWSPENDING left on another version.

Single-user has one inherent window, stated here point by point (``SINGLE_USER_WINDOW``): from the moment
setSecret's ALTER ROLE commits until finishSecret's UpdateSecretVersionStage takes effect, the database accepts
only the AWSPENDING password. A fault there leaves AWSCURRENT refused until the retry, which closes it.

Run with ``-s`` to see the per-scenario lines and the summary table (figures copied into docs/reliability.md).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError
from faults import (
    CONNECTION_FAMILIES,
    DB_CONNECT_REFUSED,
    DB_SESSION_KILLED,
    SECRETS_MANAGER_FAMILIES,
    SM_REQUEST_FAILS,
    SM_RESPONSE_LOST,
    SQL_CRASH_AFTER,
    SQL_SESSION_KILLED,
    STATEMENT_FAMILIES,
    Family,
    InjectedCrash,
    Injector,
    database_faults,
    secrets_manager_faults,
    silent_endpoint,
    throttled,
)
from helpers import can_login
from service import ALL_STEPS, invoke, resume, rotate

from rotation.events import Step
from rotation.exceptions import RotationError, RotationStateError, SecretsManagerError, SecretsManagerUnreachable
from rotation.secrets_store import secrets_manager_client

SINGLE, ALTERNATING = "single-user", "alternating-users"
CURRENT, PENDING, PREVIOUS = "AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"

# The single-user window, point by point: the faults after which AWSCURRENT is refused until the retry. Every
# one lies after setSecret's ALTER ROLE committed and before finishSecret's stage move took effect. A lost
# answer to UpdateSecretVersionStage is not in it: the service moved AWSCURRENT, so the new password is current.
SINGLE_USER_WINDOW: dict[Family, frozenset[str]] = {
    SM_REQUEST_FAILS: frozenset({
        "testSecret: DescribeSecret",
        "testSecret: GetSecretValue(AWSPENDING)",
        "finishSecret: DescribeSecret",
        "finishSecret: UpdateSecretVersionStage",
    }),
    SM_RESPONSE_LOST: frozenset({
        "testSecret: DescribeSecret",
        "testSecret: GetSecretValue(AWSPENDING)",
        "finishSecret: DescribeSecret",
    }),
    DB_CONNECT_REFUSED: frozenset({"testSecret: connection"}),
    DB_SESSION_KILLED: frozenset({"testSecret: connection"}),
    SQL_CRASH_AFTER: frozenset({"setSecret: ALTER ROLE \"…\" WITH PASSWORD '…'"}),
}


@dataclass(frozen=True)
class Scenario:
    strategy: str
    #: The user secret carries ``masterarn`` (alternating users; single-user through the admin secret).
    via_admin: bool
    #: Rotations done before the one under test: alternating users create the clone on the first rotation,
    #: reset the original's password on the second and the existing clone's on the third.
    prior_rotations: int = 0

    def window(self, family: Family) -> frozenset[str]:
        return SINGLE_USER_WINDOW.get(family, frozenset()) if self.strategy == SINGLE else frozenset()


SCENARIOS = {
    "single-user": Scenario(SINGLE, via_admin=False),
    "single-user-via-admin": Scenario(SINGLE, via_admin=True),
    "alternating-creates-clone": Scenario(ALTERNATING, via_admin=True),
    "alternating-back-to-original": Scenario(ALTERNATING, via_admin=True, prior_rotations=1),
    "alternating-resets-clone": Scenario(ALTERNATING, via_admin=True, prior_rotations=2),
}
# Secrets Manager calls are the same in every rotation of a strategy, so later rotations add nothing there;
# the database statements differ (CREATE ROLE + GRANT, then ALTER ROLE), so every scenario gets those.
CASES = [
    pytest.param(scenario_id, family, id=f"{scenario_id}-{family.name}")
    for scenario_id, scenario in SCENARIOS.items()
    for family in (*SECRETS_MANAGER_FAMILIES, *CONNECTION_FAMILIES, *STATEMENT_FAMILIES)
    if scenario.prior_rotations == 0 or family not in SECRETS_MANAGER_FAMILIES
]


@dataclass
class Ledger:
    rows: list[tuple[str, str, int, int, int]] = field(default_factory=list)

    def add(self, scenario_id: str, family: Family, points: int, in_window: int, lockouts: int) -> None:
        self.rows.append((scenario_id, family.name, points, in_window, lockouts))

    def table(self) -> str:
        header = f"{'scenario':<30} {'fault family':<20} {'points':>6} {'window':>6} {'lockouts':>8}"
        lines = [header, "-" * len(header)]
        lines += [f"{s:<30} {f:<20} {p:>6} {w:>6} {lo:>8}" for s, f, p, w, lo in self.rows]
        totals = [sum(row[i] for row in self.rows) for i in (2, 3, 4)]
        lines += ["-" * len(header), f"{'total':<51} {totals[0]:>6} {totals[1]:>6} {totals[2]:>8}"]
        return "\n".join(lines)


@pytest.fixture(scope="module")
def ledger() -> Iterator[Ledger]:
    collected = Ledger()
    yield collected
    if collected.rows:
        print(f"\n\nFault injection summary (window: single-user points where AWSCURRENT was refused until the "
              f"retry closed it)\n{collected.table()}")


@pytest.fixture(autouse=True)
def function_retries_spent(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fault here fails its step, as when the function's own retry budget for transient failures
    (rotation.transient) is spent: what is proven is that the service's retry then converges. That the
    function rides out a killed session or a restart by itself is proven with ``function_retries``."""
    if "function_retries" not in request.keywords:
        monkeypatch.setattr("rotation.transient.DEFAULT_BUDGET_S", 0.0)


@pytest.fixture
def terminate(pg) -> Callable[[int], None]:
    def kill(pid: int) -> None:
        with pg.connect() as conn:
            # The timeout makes the call wait until the backend is gone, so the next statement surely fails.
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))

    return kill


@pytest.fixture
def fresh_secret(sm, make_app_user, store_secret, cluster, pg, monkeypatch) -> Callable[[Scenario], tuple[str, dict]]:
    master_arn = store_secret(cluster, name=f"rds!cluster-{uuid.uuid4().hex[:8]}")

    def factory(scenario: Scenario) -> tuple[str, dict[str, Any]]:
        monkeypatch.setenv("ROTATION_STRATEGY", scenario.strategy)
        secret = make_app_user()
        if scenario.via_admin:
            secret["masterarn"] = master_arn
        with pg.connect(dbname=cluster["dbname"]) as conn:
            # A per-role setting, which alternating users copy to the clone: one more statement to fail at.
            conn.execute(psycopg.sql.SQL("ALTER ROLE {} SET statement_timeout = '1min'").format(
                psycopg.sql.Identifier(secret["username"])))
        arn = store_secret(secret)
        for _ in range(scenario.prior_rotations):
            rotate(sm, arn)
        return arn, sm.value(arn, CURRENT)

    return factory


def function_client():
    """The very client the handler uses: secrets_manager_client caches one per endpoint and environment."""
    return secrets_manager_client(os.environ.get("SECRETS_MANAGER_ENDPOINT"))


def install(family: Family, injector: Injector, terminate: Callable[[int], None]):
    if family in SECRETS_MANAGER_FAMILIES:
        return secrets_manager_faults(function_client(), injector)
    return database_faults(injector, terminate)


def run_until_failure(arn: str, token: str, injector: Injector) -> tuple[str | None, BaseException | None]:
    """The service's rotation: the four steps in order, stopping at the first failure (the step, the error).

    Only the project's own errors and the injected crash count as failures; anything else (a bare KeyError)
    propagates and fails the test.
    """
    for step in ALL_STEPS:
        injector.step = str(step)
        try:
            invoke(step, arn, token)
        except (RotationError, InjectedCrash) as exc:
            return str(step), exc
    return None, None


def pending_password(sm, arn: str, token: str) -> list[str]:
    try:
        return [sm.value(arn, PENDING, token)["password"]]
    except ClientError:  # createSecret never stored a value
        return []


def end_state_problems(sm, arn: str, scenario: Scenario, original: dict[str, Any]) -> list[str]:
    """What is wrong after the retry, in words; empty when the rotation completed as it should."""
    problems = []
    new = sm.value(arn, CURRENT)
    if new["password"] == original["password"]:
        problems.append("AWSCURRENT still holds the original password")
    if not can_login(new):
        problems.append("AWSCURRENT does not log in")
    if sm.value(arn, PREVIOUS) != original:
        problems.append("AWSPREVIOUS is not the original value")
    if any(PENDING in labels and CURRENT not in labels for labels in sm.stages(arn).values()):
        problems.append("AWSPENDING left on a version that is not AWSCURRENT (the next rotation would be refused)")
    if scenario.strategy == SINGLE and can_login(original):
        problems.append("the original single-user password still logs in")
    if scenario.strategy == ALTERNATING and not can_login(original):
        problems.append("alternating users: the previous user no longer logs in")
    return problems


@pytest.mark.parametrize(("scenario_id", "family"), CASES)
def test_a_fault_at_every_point_locks_nobody_out(sm, fresh_secret, terminate, cluster, ledger, scenario_id, family):
    scenario = SCENARIOS[scenario_id]
    arn, _ = fresh_secret(scenario)
    with install(family, Injector(family), terminate) as clean_run:
        assert run_until_failure(arn, sm.stage_pending(arn), clean_run) == (None, None)
    points = clean_run.points
    assert points, f"the clean run met no {family.name} injection point: is the hook on the function's client?"

    refused: set[str] = set()
    lockouts: dict[str, list[str]] = {}
    lines = []
    for k, point in enumerate(points, start=1):
        arn, original = fresh_secret(scenario)
        token = sm.stage_pending(arn)
        with install(family, Injector(family, fail_at=k), terminate) as injector:
            failed_step, error = run_until_failure(arn, token, injector)
        assert injector.fired == point, f"the run took another path than the clean run: {injector.points}"
        problems = []
        secrets = [original["password"], cluster["password"], *pending_password(sm, arn, token)]
        if error is not None and any(secret in str(error) for secret in secrets):
            problems.append("a password appears in the error message")
        if not can_login(sm.value(arn, CURRENT)):
            refused.add(point)
            if not pending_password(sm, arn, token) or not can_login(sm.value(arn, PENDING, token)):
                problems.append("neither AWSCURRENT nor AWSPENDING logs in")
        try:
            resume(arn, token)
        except RotationError as exc:
            problems.append(f"the retry failed: {exc}")
        else:
            problems += end_state_problems(sm, arn, scenario, original)
        if problems:
            lockouts[point] = problems
        outcome = "AWSCURRENT refused until the retry" if point in refused else "AWSCURRENT logs in"
        lines.append(f"  {k:>2}. {point:<52} {'fails ' + failed_step if failed_step else 'absorbed':<20} {outcome}")

    window = scenario.window(family)
    print(f"\n{scenario_id} / {family.name}: {len(points)} injection points, {len(refused)} in the single-user "
          f"window (closed by the retry), {len(lockouts)} lockouts")
    print("\n".join(lines))
    ledger.add(scenario_id, family, len(points), len(refused), len(lockouts))
    assert lockouts == {}
    assert refused == window, "AWSCURRENT was refused after exactly the faults inside the single-user window"


# --- the database restarts in the middle of a rotation --------------------------------------------------

def scenario_for(strategy: str) -> Scenario:
    return Scenario(strategy, via_admin=strategy == ALTERNATING)


@pytest.mark.parametrize(
    ("strategy", "done"),
    [
        pytest.param(SINGLE, 1, id="single-user-between-createSecret-and-setSecret"),
        pytest.param(SINGLE, 2, id="single-user-between-setSecret-and-testSecret"),
        pytest.param(ALTERNATING, 1, id="alternating-between-createSecret-and-setSecret"),
        pytest.param(ALTERNATING, 2, id="alternating-between-setSecret-and-testSecret"),
    ],
)
def test_database_crash_restart_between_steps(sm, pg, fresh_secret, strategy, done):
    """No connection outlives a step, so the steps after a crash-restart run as if nothing had happened."""
    scenario = scenario_for(strategy)
    arn, original = fresh_secret(scenario)
    token = rotate(sm, arn, steps=ALL_STEPS[:done])
    pg.restart(mode="immediate")
    for step in ALL_STEPS[done:]:
        invoke(step, arn, token)
    assert end_state_problems(sm, arn, scenario, original) == []


@pytest.mark.parametrize(
    ("strategy", "family", "point", "statement"),
    [
        pytest.param(SINGLE, SQL_SESSION_KILLED, 1, "ALTER ROLE", id="single-user-restart-as-ALTER-ROLE-is-sent"),
        pytest.param(SINGLE, SQL_CRASH_AFTER, 1, "ALTER ROLE",
                     id="single-user-crash-and-restart-after-ALTER-ROLE-committed"),
        pytest.param(ALTERNATING, SQL_SESSION_KILLED, 1, "CREATE ROLE",
                     id="alternating-restart-as-CREATE-ROLE-is-sent"),
        pytest.param(ALTERNATING, SQL_SESSION_KILLED, 5, "COMMIT", id="alternating-restart-as-COMMIT-is-sent"),
        pytest.param(ALTERNATING, SQL_CRASH_AFTER, 5, "COMMIT", id="alternating-crash-and-restart-after-COMMIT"),
    ],
)
def test_database_crash_restart_during_setSecret_completes_on_retry(
    sm, pg, fresh_secret, strategy, family, point, statement
):
    """The server crashes as setSecret changes the role, or the function and the server both crash just after
    the change committed; the retry completes.

    Crash recovery keeps what committed: single-user's retry finds AWSPENDING already logging in, alternating's
    finds the clone and resets its password.
    """
    scenario = scenario_for(strategy)
    arn, original = fresh_secret(scenario)
    token = sm.stage_pending(arn)
    with database_faults(Injector(family, fail_at=point), lambda _pid: pg.restart(mode="immediate")) as injector:
        failed_step, error = run_until_failure(arn, token, injector)
    assert injector.fired == f"setSecret: {statement}" or injector.fired.startswith(f"setSecret: {statement} ")
    if family is SQL_CRASH_AFTER:
        pg.restart(mode="immediate")
    assert failed_step == "setSecret", error
    assert isinstance(error, RotationError | InjectedCrash)
    committed = strategy == SINGLE and family is SQL_CRASH_AFTER
    assert can_login(sm.value(arn, CURRENT)) is not committed, "only a committed single-user change is refused"
    resume(arn, token)
    assert end_state_problems(sm, arn, scenario, original) == []


@pytest.mark.function_retries
@pytest.mark.parametrize(
    ("strategy", "family", "point", "statement"),
    [
        pytest.param(SINGLE, DB_SESSION_KILLED, 1, "connection", id="single-user-restart-right-after-login"),
        pytest.param(SINGLE, SQL_SESSION_KILLED, 1, "ALTER ROLE", id="single-user-restart-as-ALTER-ROLE-is-sent"),
        pytest.param(ALTERNATING, SQL_SESSION_KILLED, 1, "CREATE ROLE",
                     id="alternating-restart-as-CREATE-ROLE-is-sent"),
        pytest.param(ALTERNATING, SQL_SESSION_KILLED, 5, "COMMIT", id="alternating-restart-as-COMMIT-is-sent"),
    ],
)
def test_the_function_rides_out_a_killed_session_or_a_restart_inside_its_step(
    sm, pg, fresh_secret, strategy, family, point, statement
):
    """With its retry budget (the handler's default), the function retries the interrupted database call: no
    step fails, so the service has nothing to retry, and the rotation ends as a clean one does."""
    scenario = scenario_for(strategy)
    arn, original = fresh_secret(scenario)
    token = sm.stage_pending(arn)
    with database_faults(Injector(family, fail_at=point), lambda _pid: pg.restart(mode="immediate")) as injector:
        failed_step, error = run_until_failure(arn, token, injector)
    assert injector.fired is not None and statement in injector.fired
    assert failed_step is None, error
    assert end_state_problems(sm, arn, scenario, original) == []


# --- Secrets Manager throttles, or hangs ----------------------------------------------------------------

@pytest.mark.parametrize(
    "throttles",
    [
        pytest.param({"PutSecretValue": 1, "UpdateSecretVersionStage": 1}, id="first-attempt-of-each-write"),
        pytest.param({"DescribeSecret": 2}, id="two-attempts-of-the-first-call"),
        pytest.param({"GetSecretValue": 1, "DescribeSecret": 1}, id="first-attempt-of-each-read"),
    ],
)
def test_throttling_is_absorbed_by_the_client_retries(sm, fresh_secret, capsys, throttles):
    """botocore's standard retry mode (3 attempts) absorbs throttles: every step succeeds, nothing is logged."""
    scenario = scenario_for(SINGLE)
    arn, original = fresh_secret(scenario)
    capsys.readouterr()
    with throttled(function_client(), throttles) as attempts:
        rotate(sm, arn)
    calls_per_rotation = {"DescribeSecret": 4, "GetSecretValue": 5, "PutSecretValue": 1, "UpdateSecretVersionStage": 1}
    assert dict(attempts) == {op: calls + throttles.get(op, 0) for op, calls in calls_per_rotation.items()}
    assert end_state_problems(sm, arn, scenario, original) == []
    assert '"level":"ERROR"' not in capsys.readouterr().out.replace(" ", "")


def test_throttling_beyond_the_retry_budget_fails_clearly_and_changes_nothing(sm, fresh_secret):
    scenario = scenario_for(SINGLE)
    arn, original = fresh_secret(scenario)
    stages_before = sm.stages(arn)
    token = sm.stage_pending(arn)
    with throttled(function_client(), {"DescribeSecret": 3}), \
            pytest.raises(SecretsManagerError, match=r"DescribeSecret on secret .* ThrottlingException"):
        invoke(Step.CREATE, arn, token)
    assert sm.value(arn, CURRENT) == original
    assert pending_password(sm, arn, token) == []
    assert {v: labels for v, labels in sm.stages(arn).items() if v != token} == stages_before
    resume(arn, token)
    assert end_state_problems(sm, arn, scenario, original) == []


#: template.yaml's Timeout for the rotation function: a step must fail on its own, with its message, before it.
LAMBDA_TIMEOUT_S = 30


def test_silent_endpoint_fails_within_the_client_timeouts_and_changes_nothing(sm, fresh_secret, monkeypatch):
    """An endpoint that accepts connections and never answers: SecretsManagerUnreachable, well before Lambda's
    timeout would end the invocation without a word."""
    arn, original = fresh_secret(scenario_for(SINGLE))
    token = sm.stage_pending(arn)
    with silent_endpoint() as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", url)
        monkeypatch.setenv("SECRETS_MANAGER_ENDPOINT", url)
        config = function_client().meta.config
        attempts = config.retries["total_max_attempts"]
        # Timeouts are not throttles: standard mode waits at most 50 ms x 2^(n-1) between attempts.
        worst_case = attempts * config.read_timeout + sum(0.05 * 2**n for n in range(attempts - 1))
        started = time.monotonic()
        # A loopback endpoint: the fix named is the local server's (tests/test_cli_endpoints.py covers AWS's).
        with pytest.raises(SecretsManagerUnreachable, match="is the local server") as raised:
            invoke(Step.CREATE, arn, token)
        elapsed = time.monotonic() - started
    print(f"\nsilent Secrets Manager endpoint: the step failed after {elapsed:.1f} s "
          f"(client: {attempts} attempts x {config.read_timeout} s read timeout; worst case {worst_case:.1f} s; "
          f"Lambda timeout {LAMBDA_TIMEOUT_S} s)")
    assert "ReadTimeoutError" in str(raised.value)
    assert config.read_timeout <= elapsed <= worst_case + 3
    assert worst_case + 3 < LAMBDA_TIMEOUT_S, "the clear error must come before Lambda's timeout"
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", sm.endpoint_url)
    monkeypatch.setenv("SECRETS_MANAGER_ENDPOINT", sm.endpoint_url)
    assert sm.value(arn, CURRENT) == original
    assert pending_password(sm, arn, token) == []
    assert can_login(original)


# --- a step invoked after the service finished ----------------------------------------------------------

@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
def test_late_steps_after_the_rotation_finished_change_nothing(sm, fresh_secret, strategy):
    """A duplicate or late invocation: no-op while its version is AWSCURRENT, refused once it is AWSPREVIOUS."""
    scenario = scenario_for(strategy)
    arn, _ = fresh_secret(scenario)
    first = rotate(sm, arn)
    finished = {stage: sm.value(arn, stage) for stage in (CURRENT, PREVIOUS)}

    # Just finished, and again while the next rotation is half done (single-user: its password is already set).
    second = rotate(sm, arn, steps=ALL_STEPS[:2])
    for step in ALL_STEPS:
        assert invoke(step, arn, first)["changed"] is False
    assert {stage: sm.value(arn, stage) for stage in (CURRENT, PREVIOUS)} == finished
    resume(arn, second)
    assert end_state_problems(sm, arn, scenario, finished[CURRENT]) == []

    # Superseded: the first version is now AWSPREVIOUS, and a late step for it is refused.
    after_second = {stage: sm.value(arn, stage) for stage in (CURRENT, PREVIOUS)}
    for step in ALL_STEPS:
        with pytest.raises(RotationStateError, match="is not staged AWSPENDING"):
            invoke(step, arn, first)
    assert {stage: sm.value(arn, stage) for stage in (CURRENT, PREVIOUS)} == after_second
    assert can_login(after_second[CURRENT])
