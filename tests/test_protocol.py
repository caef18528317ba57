"""The protocol's decisions, on in-memory ports. The same behaviours run end to end in test_rotation.py."""

from __future__ import annotations

import json

import pytest
from fakes import FakeDatabase, FakeStore

from rotation.config import Settings, StrategyName
from rotation.events import RotationEvent, Step
from rotation.exceptions import LoginRefused, RotationStateError, SecretFormatError
from rotation.ports import AWSCURRENT, AWSPENDING, AWSPREVIOUS
from rotation.protocol import Rotation, toggle_clone

USER_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app"
ADMIN_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:admin"
USER = {"engine": "postgres", "host": "db", "port": 5432, "username": "app", "password": "old-pw",
        "dbname": "appdb", "team": "kept"}
# The RDS console's format: the admin secret names its own server (absent "ssl": verify-full).
ADMIN = {"engine": "postgres", "host": "db", "port": 5432, "username": "master", "password": "admin-pw"}


class Harness:
    def __init__(self, secret: dict, strategy: StrategyName = StrategyName.AUTO) -> None:
        self.store = FakeStore()
        self.store.create(USER_ARN, secret)
        self.store.create(ADMIN_ARN, ADMIN)
        self.db = FakeDatabase({"app": "old-pw", "master": "admin-pw"})
        self.rotation = Rotation(self.store, lambda: self.db, Settings(strategy=strategy))
        self.token = None

    def start(self, token: str = "t1") -> None:
        self.token = token
        self.store.stage_pending(USER_ARN, token)

    def step(self, step: Step, token: str | None = None):
        return self.rotation.run(RotationEvent(step, USER_ARN, token or self.token))

    def rotate(self, token: str) -> None:
        self.start(token)
        for step in Step:
            self.step(step)

    def current(self) -> dict:
        return self.store.value(USER_ARN, AWSCURRENT)

    def logs_in(self, secret: dict) -> bool:
        return self.db.passwords.get(secret["username"]) == secret["password"]


MULTI = {**USER, "masterarn": ADMIN_ARN}


@pytest.mark.parametrize(
    ("secret", "usernames", "sm_calls", "db_connections"),
    [
        pytest.param(USER, ["app", "app", "app"], 11, 2, id="single-user"),
        pytest.param(MULTI, ["app_clone", "app", "app_clone"], 12, 3, id="alternating-users"),
    ],
)
def test_consecutive_rotations(secret, usernames, sm_calls, db_connections):
    h = Harness(secret)
    for n, expected_user in enumerate(usernames):
        before = h.current()
        h.store.calls.clear()
        h.db.connections = 0
        h.rotate(f"t{n}")
        after = h.current()
        assert after["username"] == expected_user
        assert after["password"] != before["password"]
        assert h.logs_in(after)
        assert {k: v for k, v in after.items() if k not in ("username", "password")} == {
            k: v for k, v in secret.items() if k not in ("username", "password")
        }
        assert h.store.value(USER_ARN, AWSPREVIOUS) == before
        assert len(h.store.calls) == sm_calls, h.store.calls
        assert h.db.connections == db_connections
    if "masterarn" in secret:
        assert h.logs_in(h.store.value(USER_ARN, AWSPREVIOUS)), "alternating: the previous user still works"
        assert h.db.members["app_clone"] == {"app"}
    else:
        assert not h.logs_in(h.store.value(USER_ARN, AWSPREVIOUS)), "single-user: the old password is dead"


@pytest.mark.parametrize("secret", [USER, MULTI], ids=["single-user", "alternating-users"])
def test_every_step_run_twice_converges(secret):
    h = Harness(secret)
    h.start()
    for step in Step:
        h.step(step)
        h.step(step)
    assert h.current()["password"] != "old-pw"
    assert h.logs_in(h.current())


@pytest.mark.parametrize("stop_after", list(Step)[:-1], ids=lambda s: f"crash-after-{s.value}")
@pytest.mark.parametrize("secret", [USER, MULTI], ids=["single-user", "alternating-users"])
def test_rotation_resumed_from_create_after_a_crash(secret, stop_after):
    h = Harness(secret)
    h.start()
    for step in Step:
        h.step(step)
        if step is stop_after:
            break
    for step in Step:  # the service retries the whole rotation with the same token
        h.step(step)
    assert h.logs_in(h.current())
    assert h.store.value(USER_ARN, AWSPREVIOUS)["password"] == "old-pw"


def test_single_user_set_falls_back_to_previous_when_current_is_dead():
    h = Harness(USER)
    h.rotate("t0")
    h.db.passwords["app"] = h.store.value(USER_ARN, AWSPREVIOUS)["password"]  # a restore brought back the old one
    h.start("t1")
    h.step(Step.CREATE)
    outcome = h.step(Step.SET)
    assert "AWSPREVIOUS" in outcome.action
    assert h.logs_in(h.store.value(USER_ARN, AWSPENDING))


def test_single_user_set_refuses_when_no_known_password_works():
    h = Harness(USER)
    h.db.passwords["app"] = "changed-by-hand"
    h.start()
    h.step(Step.CREATE)
    with pytest.raises(LoginRefused, match="accepts none of the AWSCURRENT, AWSPENDING or AWSPREVIOUS"):
        h.step(Step.SET)


def test_single_user_strategy_with_masterarn_changes_the_password_through_the_admin():
    h = Harness(MULTI, StrategyName.SINGLE_USER)
    h.start()
    h.step(Step.CREATE)
    assert "admin" in h.step(Step.SET).action
    h.step(Step.TEST)
    h.step(Step.FINISH)
    assert h.current()["username"] == "app"
    assert h.logs_in(h.current())


@pytest.mark.parametrize(
    ("prepare", "error", "message"),
    [
        pytest.param(lambda h: h.store.rotation_enabled.update({USER_ARN: False}), RotationStateError,
                     "rotation is not enabled", id="rotation-disabled"),
        pytest.param(lambda h: setattr(h, "token", "unknown"), RotationStateError,
                     "token unknown is not a version", id="token-not-a-version"),
        pytest.param(lambda h: h.store.stages[USER_ARN]["t1"].clear() or h.store.stages[USER_ARN]["t1"].add("X"),
                     RotationStateError, "not staged AWSPENDING", id="token-not-pending"),
    ],
)
def test_token_checks(prepare, error, message):
    h = Harness(USER)
    h.start("t1")
    prepare(h)
    with pytest.raises(error, match=message):
        h.step(Step.CREATE)
    assert h.current() == USER


def test_steps_for_a_token_already_current_change_nothing():
    h = Harness(USER)
    h.rotate("t1")
    current = h.current()
    for step in Step:
        assert h.step(step, "t1").changed is False
    assert h.current() == current


@pytest.mark.parametrize(
    ("secret", "tamper", "message"),
    [
        pytest.param(USER, {"host": "evil.example"}, "it points at evil.example:5432/appdb",
                     id="pending-redirected-host"),
        pytest.param(USER, {"ssl": False}, "sslmode=disable",
                     id="pending-without-tls"),
        pytest.param(USER, {"username": "postgres"}, "it is for user 'postgres', not 'app'",
                     id="single-user-other-user"),
        pytest.param(MULTI, {"username": "master"}, "not 'app_clone'",
                     id="alternating-other-user"),
        pytest.param(MULTI, {"masterarn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:other"},
                     "another admin secret", id="alternating-other-admin"),
    ],
)
def test_set_secret_refuses_a_pending_version_it_did_not_write(secret, tamper, message):
    h = Harness(secret)
    h.start()
    h.step(Step.CREATE)
    pending = {**h.store.value(USER_ARN, AWSPENDING), **tamper}
    h.store.values[USER_ARN]["t1"] = json.dumps(pending)
    with pytest.raises(RotationStateError, match=message):
        h.step(Step.SET)
    assert h.db.passwords["master"] == "admin-pw"
    assert h.logs_in(h.current())


def test_alternating_refuses_to_use_the_admin_when_current_no_longer_logs_in():
    h = Harness(MULTI)
    h.db.passwords["app"] = "changed-by-hand"
    h.start()
    h.step(Step.CREATE)
    with pytest.raises(LoginRefused, match="refusing to use the admin secret"):
        h.step(Step.SET)
    assert "app_clone" not in h.db.passwords


def test_alternating_refuses_an_admin_secret_for_another_host():
    h = Harness(MULTI)
    h.store.values[ADMIN_ARN]["v0"] = json.dumps({**ADMIN, "host": "other-cluster"})
    h.start()
    h.step(Step.CREATE)
    with pytest.raises(RotationStateError, match="refusing to act for a secret aimed at another server"):
        h.step(Step.SET)


def test_forced_alternating_strategy_without_masterarn_names_the_missing_key():
    h = Harness(USER, StrategyName.ALTERNATING_USERS)
    h.start()
    with pytest.raises(SecretFormatError, match="no 'masterarn' key"):
        h.step(Step.CREATE)
    assert h.store.values[USER_ARN]["t1"] is None


@pytest.mark.parametrize(
    ("username", "alternate"),
    [("app", "app_clone"), ("app_clone", "app"), ("Weird-Name;", "Weird-Name;_clone")],
)
def test_toggle_clone(username, alternate):
    assert toggle_clone(username) == alternate


def test_toggle_clone_refuses_names_that_would_be_truncated():
    with pytest.raises(SecretFormatError, match="63-byte limit"):
        toggle_clone("x" * 58)


def test_finish_secret_alone_refuses_to_make_an_empty_version_current():
    h = Harness(USER)
    h.start()
    with pytest.raises(RotationStateError, match="holds no value yet"):
        h.step(Step.FINISH)
    assert h.current() == USER


def test_single_user_fallback_ignores_a_previous_version_for_another_server():
    h = Harness(USER)
    h.rotate("t0")
    previous = h.store.value(USER_ARN, AWSPREVIOUS)
    h.store.values[USER_ARN]["v0"] = json.dumps({**previous, "host": "old-server"})
    h.db.passwords["app"] = previous["password"]  # would match, but the version names another server
    h.start("t1")
    h.step(Step.CREATE)
    with pytest.raises(LoginRefused, match="accepts none of"):
        h.step(Step.SET)
