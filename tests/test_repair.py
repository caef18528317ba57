"""Repair of "A previous rotation isn't complete": each broken state, built for real, repaired, then rotated.

Every state is what a real failure leaves: the service staged AWSPENDING and the function never ran, or the
function stopped after a given step (the steps run through rotation.handler.rotate against the moto server
and PostgreSQL). After the repair, the proof is the one an operator needs: AWSCURRENT logs in, and a fresh
rotation, started the way the service starts one, completes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import can_login, connect

from rotation.database import scram_verifier
from rotation.exceptions import RotationStateError
from rotation.handler import rotate
from rotation_tools.cli import main
from rotation_tools.local.lambda_context import LambdaContext
from rotation_tools.local.secretsmanager import LocalSecretsManager
from rotation_tools.repair import Action, Login, Repair, analyze

ALL_STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")


def run_steps(arn: str, token: str, steps: tuple[str, ...]) -> None:
    for step in steps:
        # A fresh context per invocation, as Lambda gives: its clock starts when the invocation does.
        rotate({"Step": step, "SecretId": arn, "ClientRequestToken": token},
               LambdaContext("rotation-repair-test", timeout_seconds=30))


def rotate_fully(sm: LocalSecretsManager, arn: str) -> str:
    """What RotateSecret does: stage AWSPENDING (refused if a previous rotation is stuck), then the four steps."""
    token = sm.stage_pending(arn)
    run_steps(arn, token, ALL_STEPS)
    return token


def labels(sm: LocalSecretsManager, arn: str) -> dict[str, set[str]]:
    return {version: set(stages) for version, stages in sm.stages(arn).items()}


def stuck(sm: LocalSecretsManager, arn: str) -> bool:
    return any("AWSPENDING" in stages and "AWSCURRENT" not in stages for stages in labels(sm, arn).values())


def stored_passwords(sm: LocalSecretsManager, arn: str) -> list[str]:
    """The passwords of the AWSCURRENT and AWSPENDING versions that hold a value."""
    from botocore.exceptions import ClientError

    found = []
    for version, stages in labels(sm, arn).items():
        for stage in stages & {"AWSCURRENT", "AWSPENDING"}:
            try:
                found.append(sm.value(arn, stage, version)["password"])
            except ClientError:
                pass  # the empty version the service stages before createSecret
    return found


def set_database_password(admin_secret: dict[str, Any], role: str, password: str) -> None:
    from psycopg import sql

    with connect(admin_secret) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram_verifier(conn, role, password))))


@dataclass
class Secret:
    """One secret under test, with what the scenario builders need to break it."""

    sm: LocalSecretsManager
    arn: str
    value: dict[str, Any]
    cluster: dict[str, Any]

    def put_pending(self, secret_string: str) -> str:
        token = self.sm.stage_pending(self.arn)
        self.sm.client().put_secret_value(SecretId=self.arn, ClientRequestToken=token, SecretString=secret_string,
                                          VersionStages=["AWSPENDING"])
        return token


# ---------------------------------------------------------------------------------------------- broken states


def staged_but_never_created(secret: Secret) -> None:
    secret.sm.stage_pending(secret.arn)


def stopped_after(*steps: str) -> Callable[[Secret], None]:
    def build(secret: Secret) -> None:
        run_steps(secret.arn, secret.sm.stage_pending(secret.arn), steps)

    return build


def pending_is_not_json(secret: Secret) -> None:
    secret.put_pending("{not json")


def pending_points_at_another_host(secret: Secret) -> None:
    # Someone who may edit the secret could aim AWSPENDING at their server; promoting it would be a takeover.
    secret.put_pending(json.dumps({**secret.value, "host": "10.0.0.99", "password": uuid.uuid4().hex}))


def completed(secret: Secret) -> None:
    rotate_fully(secret.sm, secret.arn)


SINGLE, ALTERNATING = "single-user", "alternating-users"


@pytest.fixture
def make_secret(sm, cluster, make_app_user, store_secret) -> Callable[[str], Secret]:
    def factory(strategy: str, username: str | None = None, **overrides: Any) -> Secret:
        value = {**make_app_user(username), **overrides}
        if strategy == ALTERNATING:
            value["masterarn"] = store_secret(cluster)
        return Secret(sm, store_secret(value), value, cluster)

    return factory


@pytest.mark.parametrize(
    ("strategy", "break_it", "current_login", "pending_login", "action"),
    [
        pytest.param(SINGLE, staged_but_never_created, Login.WORKS, Login.NO_VALUE, Action.REMOVE_PENDING,
                     id="service-staged-AWSPENDING-createSecret-never-ran"),
        pytest.param(SINGLE, stopped_after("createSecret"), Login.WORKS, Login.REFUSED, Action.REMOVE_PENDING,
                     id="createSecret-ran-then-stopped"),
        pytest.param(SINGLE, pending_is_not_json, Login.WORKS, Login.MALFORMED, Action.REMOVE_PENDING,
                     id="pending-value-not-json"),
        pytest.param(SINGLE, pending_points_at_another_host, Login.WORKS, Login.ELSEWHERE, Action.REMOVE_PENDING,
                     id="pending-aimed-at-another-host"),
        pytest.param(SINGLE, stopped_after("createSecret", "setSecret"), Login.REFUSED, Login.WORKS,
                     Action.FINISH_ROTATION, id="single-user-set-then-stopped-current-dead"),
        pytest.param(SINGLE, stopped_after("createSecret", "setSecret", "testSecret"), Login.REFUSED, Login.WORKS,
                     Action.FINISH_ROTATION, id="single-user-tested-then-stopped"),
        pytest.param(ALTERNATING, stopped_after("createSecret"), Login.WORKS, Login.REFUSED,
                     Action.REMOVE_PENDING, id="alternating-createSecret-ran-clone-missing"),
        pytest.param(ALTERNATING, stopped_after("createSecret", "setSecret"), Login.WORKS, Login.WORKS,
                     Action.REMOVE_PENDING, id="alternating-set-then-stopped-both-work"),
        pytest.param(SINGLE, completed, Login.WORKS, None, Action.NOTHING, id="nothing-stuck"),
    ],
)
def test_repair_leaves_a_state_from_which_rotation_succeeds(strategy, break_it, current_login, pending_login,
                                                            action, sm, make_secret):
    secret = make_secret(strategy)
    break_it(secret)
    before = labels(sm, secret.arn)
    repair = Repair.from_env()

    plan = repair.analyze(secret.arn)

    assert (plan.action, plan.current.login) == (action, current_login)
    assert (plan.pending.login if plan.action is not Action.NOTHING else None) == pending_login
    assert labels(sm, secret.arn) == before  # analysing changes nothing
    working_pending = sm.value(secret.arn, "AWSPENDING", plan.pending_version) if pending_login is Login.WORKS \
        else None

    result = repair.apply(plan)

    assert result.applied is (action is not Action.NOTHING)
    assert not stuck(sm, secret.arn)
    assert can_login(sm.value(secret.arn))
    after = labels(sm, secret.arn)
    if action is Action.FINISH_ROTATION:
        assert sm.value(secret.arn) == working_pending
        assert after[plan.current_version] == {"AWSPREVIOUS"}
    else:
        assert "AWSCURRENT" in after[plan.current_version]

    rotated_from = sm.value(secret.arn)
    rotate_fully(sm, secret.arn)
    new_current = sm.value(secret.arn)
    assert new_current["password"] != rotated_from["password"]
    assert can_login(new_current)


@pytest.mark.parametrize(
    ("break_it", "action"),
    [
        pytest.param(stopped_after("createSecret"), Action.REMOVE_PENDING, id="createSecret-ran-then-stopped"),
        pytest.param(stopped_after("createSecret", "setSecret"), Action.FINISH_ROTATION, id="set-then-stopped"),
    ],
)
def test_a_single_user_name_too_long_for_a_clone_is_repaired(break_it, action, sm, make_secret):
    """58 to 63 bytes: a valid single-user name whose ``_clone`` would pass PostgreSQL's 63-byte limit."""
    username = f"long_{uuid.uuid4().hex}".ljust(60, "x")
    assert len(username.encode()) == 60
    secret = make_secret(SINGLE, username)
    break_it(secret)

    plan = analyze(secret.arn)
    result = Repair.from_env().apply(plan)

    assert plan.action is action
    assert plan.pending.username == username
    assert result.applied and not stuck(sm, secret.arn)
    assert can_login(sm.value(secret.arn))
    rotate_fully(sm, secret.arn)
    assert can_login(sm.value(secret.arn))


def current_and_pending_dead(secret: Secret) -> None:
    stopped_after("createSecret")(secret)
    set_database_password(secret.cluster, secret.value["username"], uuid.uuid4().hex)


def empty_pending_and_current_dead(secret: Secret) -> None:
    staged_but_never_created(secret)
    set_database_password(secret.cluster, secret.value["username"], uuid.uuid4().hex)


@pytest.mark.parametrize(
    ("database_reachable", "break_it", "explanation"),
    [
        pytest.param(True, current_and_pending_dead, "neither AWSCURRENT", id="neither-current-nor-pending-logs-in"),
        pytest.param(True, empty_pending_and_current_dead, "neither AWSCURRENT", id="empty-pending-and-current-dead"),
        pytest.param(False, staged_but_never_created, "cannot tell which credentials work",
                     id="database-unreachable"),
    ],
)
def test_repair_refuses_when_no_credentials_are_proven_to_work(database_reachable, break_it, explanation, sm,
                                                               make_secret, closed_port, capsys):
    secret = make_secret(SINGLE) if database_reachable else make_secret(SINGLE, port=closed_port)
    break_it(secret)
    before = labels(sm, secret.arn)

    plan = analyze(secret.arn)
    code = main(["repair", "--secret-id", secret.arn, "--apply"])

    assert plan.action is Action.REFUSE
    assert explanation in plan.reason
    assert code == 1
    assert labels(sm, secret.arn) == before
    assert explanation in capsys.readouterr().out


def test_a_plan_is_not_applied_to_a_secret_that_changed_since(sm, make_secret):
    secret = make_secret(SINGLE)
    staged_but_never_created(secret)
    repair = Repair.from_env()
    plan = repair.analyze(secret.arn)
    # Meanwhile someone else cleared it and a new rotation began.
    repair.apply(plan)
    sm.stage_pending(secret.arn)

    with pytest.raises(RotationStateError, match="changed since it was analysed"):
        repair.apply(plan)


# ---------------------------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("break_it", "arguments", "exit_code", "expected_output", "still_stuck"),
    [
        pytest.param(stopped_after("createSecret", "setSecret"), [], 3,
                     ["AWSPENDING", "login: works", "action: finish-rotation", "--apply"], True,
                     id="dry-run-explains-and-changes-nothing"),
        pytest.param(stopped_after("createSecret", "setSecret"), ["--apply"], 0,
                     ["result: finished the rotation", "AWSPREVIOUS"], False, id="apply-finishes"),
        pytest.param(staged_but_never_created, ["--apply", "--json"], 0,
                     ['"action": "remove-pending-label"', '"applied": true'], False, id="apply-json"),
        pytest.param(completed, [], 0, ["action: nothing"], False, id="nothing-to-repair"),
    ],
)
def test_repair_command(break_it, arguments, exit_code, expected_output, still_stuck, sm, make_secret, capsys):
    secret = make_secret(SINGLE)
    break_it(secret)
    passwords = stored_passwords(sm, secret.arn)

    code = main(["repair", "--secret-id", secret.arn, *arguments])

    out = capsys.readouterr().out
    assert code == exit_code
    for text in expected_output:
        assert text in out
    if "--json" in arguments:
        assert json.loads(out)["plan"]["secret_arn"] == secret.arn
    assert stuck(sm, secret.arn) is still_stuck
    assert passwords and not any(password in out for password in passwords)
