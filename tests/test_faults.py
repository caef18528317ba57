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
    STATEMENT_FAMILIES,
    Family,
    InjectedCrash,
    Injector,
    database_faults,
    secrets_manager_faults,
)
from helpers import can_login
from service import ALL_STEPS, invoke, resume, rotate

from rotation.exceptions import RotationError
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


def install(family: Family, injector: Injector, terminate: Callable[[int], None]):
    if family in SECRETS_MANAGER_FAMILIES:
        # The very client the handler uses: secrets_manager_client caches one per endpoint and environment.
        return secrets_manager_faults(secrets_manager_client(os.environ.get("SECRETS_MANAGER_ENDPOINT")), injector)
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
