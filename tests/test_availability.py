"""Availability while rotations run: what an application that keeps reading AWSCURRENT and logging in sees.

A probe thread plays the application: every few milliseconds it reads AWSCURRENT from the Secrets Manager API
(its own boto3 client, ``VersionStage=AWSCURRENT``) and logs in to the real server with it. Rotations run in the
main thread through the handler, as the service would invoke them.

- Alternating users: through repeated rotations the probe never fails.
- Single-user: the probe is refused only inside the protocol's window (setSecret's ALTER ROLE until finishSecret's
  stage move); the longest window is measured, printed and bounded.
- Concurrency: dozens of secrets rotated by concurrent workers against one database all succeed, and the
  per-invocation log keys and metrics do not leak between invocations.

Run with ``-s`` to see the figures (copied into docs/reliability.md).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError
from helpers import can_login
from service import ALL_STEPS, invoke, rotate

SINGLE, ALTERNATING = "single-user", "alternating-users"
ROTATIONS = 10
PROBE_INTERVAL_S = 0.002
#: Generous: the window measured here is tens of milliseconds; in AWS it also spans the service's invocations.
SINGLE_USER_WINDOW_BOUND_S = 2.0


@dataclass
class Attempt:
    started: float
    accepted: bool
    #: The AWSCURRENT password this attempt used, to count the versions the probe saw.
    password: str
    #: True when the first read of AWSCURRENT failed and a second one was needed (see LoginProbe.read).
    reread: bool = False


@dataclass
class LoginProbe:
    """The application: read AWSCURRENT, log in with it, again and again, until stopped."""

    client: Any
    arn: str
    attempts: list[Attempt] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def read(self) -> tuple[dict[str, Any], bool]:
        """AWSCURRENT, and whether it took a second read.

        moto moves a stage in two statements (remove from the old version, add to the new), so a read that lands
        between them finds no AWSCURRENT; Secrets Manager moves it atomically. A client retries such a read; a
        second failure counts as a failure of the probe.
        """
        try:
            return self._get(), False
        except ClientError:
            return self._get(), True

    def _get(self) -> dict[str, Any]:
        return json.loads(self.client.get_secret_value(SecretId=self.arn, VersionStage="AWSCURRENT")["SecretString"])

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                secret, reread = self.read()
                self.attempts.append(Attempt(started, can_login(secret), secret["password"], reread))
            except Exception as exc:  # the probe must report, not die: the test asserts on errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(PROBE_INTERVAL_S)

    def __enter__(self) -> LoginProbe:
        self._thread = threading.Thread(target=self._run, name="login-probe", daemon=True)
        self._thread.start()
        while not self.attempts and not self.errors:  # the application is up before the rotations start
            time.sleep(PROBE_INTERVAL_S)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    @property
    def versions_seen(self) -> int:
        return len({attempt.password for attempt in self.attempts})

    @property
    def refused(self) -> int:
        return sum(not attempt.accepted for attempt in self.attempts)

    def refused_windows(self) -> list[float]:
        """Each run of refused attempts, from the first refusal to the next accepted attempt, in seconds."""
        windows, first_refused = [], None
        for attempt in self.attempts:
            if not attempt.accepted and first_refused is None:
                first_refused = attempt.started
            elif attempt.accepted and first_refused is not None:
                windows.append(attempt.started - first_refused)
                first_refused = None
        if first_refused is not None:
            windows.append(float("inf"))  # refused until the end: a lockout
        return windows


@pytest.fixture
def user_secret(make_app_user, store_secret, cluster):
    master_arn = store_secret(cluster, name=f"rds!cluster-{uuid.uuid4().hex[:8]}")

    def factory(strategy: str) -> tuple[str, dict[str, Any]]:
        secret = make_app_user()
        if strategy == ALTERNATING:
            secret["masterarn"] = master_arn
        return store_secret(secret), secret

    return factory


def test_alternating_users_never_refuse_the_current_secret(sm, user_secret):
    arn, _ = user_secret(ALTERNATING)
    with LoginProbe(sm.client(), arn) as probe:
        for _ in range(ROTATIONS):
            rotate(sm, arn)
    rereads = sum(attempt.reread for attempt in probe.attempts)
    print(f"\nalternating users, {ROTATIONS} rotations: {len(probe.attempts)} read+login attempts over "
          f"{probe.versions_seen} of the {ROTATIONS + 1} AWSCURRENT versions, {probe.refused} refused, "
          f"{len(probe.errors)} errors ({rereads} reads retried after moto's non-atomic stage move)")
    assert probe.versions_seen > ROTATIONS // 2, "the probe ran throughout the rotations"
    assert probe.errors == []
    assert probe.refused == 0


def test_single_user_window_is_short_and_always_closes(sm, user_secret):
    arn, _ = user_secret(SINGLE)
    protocol_windows = []
    with LoginProbe(sm.client(), arn) as probe:
        for _ in range(ROTATIONS):
            token = sm.stage_pending(arn)
            invoke(ALL_STEPS[0], arn, token)
            invoke(ALL_STEPS[1], arn, token)  # ends once ALTER ROLE committed: the window is open
            window_opened = time.perf_counter()
            invoke(ALL_STEPS[2], arn, token)
            invoke(ALL_STEPS[3], arn, token)  # ends once AWSCURRENT moved: the window is closed
            protocol_windows.append(time.perf_counter() - window_opened)
            time.sleep(0.05)  # let the probe see the closed window before the next rotation opens one
    windows = probe.refused_windows()
    longest = max(windows, default=0.0)
    print(f"\nsingle-user, {ROTATIONS} rotations: {len(probe.attempts)} read+login attempts over "
          f"{probe.versions_seen} of the {ROTATIONS + 1} AWSCURRENT versions, {probe.refused} refused in "
          f"{len(windows)} windows; longest refused window seen by the probe {longest * 1000:.0f} ms; protocol "
          f"window (setSecret returned -> finishSecret returned) longest {max(protocol_windows) * 1000:.0f} ms, "
          f"median {sorted(protocol_windows)[len(protocol_windows) // 2] * 1000:.0f} ms")
    assert probe.versions_seen > ROTATIONS // 2, "the probe ran throughout the rotations"
    assert probe.errors == []
    assert len(windows) <= ROTATIONS, "at most one refused window per rotation"
    assert longest < SINGLE_USER_WINDOW_BOUND_S, "every window closed, quickly"
    assert max(protocol_windows) < SINGLE_USER_WINDOW_BOUND_S
    assert can_login(sm.value(arn, "AWSCURRENT"))


WORKERS = 8
SECRETS = 24


def test_concurrent_rotations_of_many_secrets_against_one_database(sm, user_secret, capsys):
    """24 secrets (half of each strategy), 8 workers, two rotations each; every invocation's log lines and
    metrics stay its own."""
    secrets = [user_secret(SINGLE if n % 2 else ALTERNATING) for n in range(SECRETS)]
    capsys.readouterr()

    def rotate_twice(arn: str) -> list[str]:
        return [rotate(sm, arn), rotate(sm, arn)]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        tokens = dict(zip((arn for arn, _ in secrets), pool.map(rotate_twice, [arn for arn, _ in secrets]),
                          strict=True))
    elapsed = time.perf_counter() - started
    output = capsys.readouterr().out

    passwords = set()
    for arn, original in secrets:
        current, previous = sm.value(arn, "AWSCURRENT"), sm.value(arn, "AWSPREVIOUS")
        assert can_login(current), f"{original['username']}: the new AWSCURRENT logs in"
        assert current["username"] == original["username"], "two rotations bring alternating users back"
        assert previous["password"] != original["password"] and can_login(previous) is ("masterarn" in original)
        passwords |= {current["password"], previous["password"]}
    assert len(passwords) == 2 * SECRETS, "every rotation drew its own password"

    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    token_owner = {token: arn for arn, pair in tokens.items() for token in pair}
    logged = [line for line in lines if "token" in line]
    assert logged, "the function logged its invocations"
    for line in logged:
        assert token_owner[line["token"]] == line["secret_id"], "a log line carries another invocation's keys"
        assert line.get("secret_arn", line["secret_id"]) == line["secret_id"]
    metrics = Counter(line["Step"] for line in lines if "RotationStepSucceeded" in line)
    invocations = SECRETS * 2
    assert metrics == {str(step): invocations for step in ALL_STEPS}, "one metric document per invocation"
    assert not any("RotationStepFailed" in line for line in lines)
    print(f"\nconcurrency: {SECRETS} secrets x 2 rotations by {WORKERS} workers in {elapsed:.1f} s, "
          f"{invocations * len(ALL_STEPS)} invocations, 0 failures, {len(logged)} log lines all with their own keys")
