"""rotation.transient: which failures are worth waiting out, and the bounded retry, on a fake clock.

Pure logic, so fakes suffice here: a clock that only moves when the code sleeps, and failures given as
(SQLSTATE, message) pairs. The real servers' own words are checked in tests/test_topology.py, which provokes
them (a hot standby refusing a write, a server shutting down, max_connections reached) and classifies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from rotation.exceptions import DatabaseError, FailoverInProgress, TooManyConnections, TransientDatabaseError
from rotation.transient import (
    DEFAULT_BUDGET_S,
    Attempts,
    Backoff,
    Budget,
    Transient,
    budget_within,
    classify,
    retry_transient,
)

FAILOVER, TOO_MANY = Transient.FAILOVER, Transient.TOO_MANY_CONNECTIONS


@pytest.mark.parametrize(
    ("sqlstate", "message", "writes", "expected"),
    [
        ("57P01", "terminating connection due to administrator command", False, FAILOVER),
        ("57P02", "terminating connection because of crash of another server process", False, FAILOVER),
        ("57P03", "the database system is starting up", False, FAILOVER),
        (None, 'connection to server at "10.0.0.1", port 5432 failed: FATAL:  the database system is starting up',
         False, FAILOVER),
        (None, "FATAL:  the database system is shutting down", False, FAILOVER),
        (None, "FATAL:  the database system is in recovery mode", False, FAILOVER),
        (None, "FATAL:  the database system is not yet accepting connections", False, FAILOVER),
        (None, "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally",
         False, FAILOVER),
        (None, "consuming input failed: server closed the connection unexpectedly", False, FAILOVER),
        (None, 'connection to server at "127.0.0.1", port 5432 failed: Connection refused', False, None),
        ("08006", "connection failure", False, FAILOVER),
        ("08001", "could not connect", False, FAILOVER),
        ("25006", "cannot execute ALTER ROLE in a read-only transaction", True, FAILOVER),
        ("25006", "cannot execute ALTER ROLE in a read-only transaction", False, None),
        (None, "cannot execute CREATE ROLE in a read-only transaction", True, FAILOVER),
        ("53300", "sorry, too many clients already", False, TOO_MANY),
        (None, "FATAL:  sorry, too many clients already", True, TOO_MANY),
        (None, "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute", False,
         TOO_MANY),
        (None, 'FATAL:  too many connections for role "app"', False, TOO_MANY),
        (None, 'password authentication failed for user "app"', False, None),
        ("42501", "permission denied to alter role", True, None),
        ("28P01", "password authentication failed", False, None),
        (None, "timeout expired", False, None),
        (None, 'could not translate host name "nope" to address', False, None),
        (None, "certificate verify failed", False, None),
        ("3D000", 'database "x" does not exist', False, None),
    ],
    ids=[
        "admin-shutdown", "crash-shutdown", "cannot-connect-now", "starting-up-libpq-words", "shutting-down",
        "in-recovery", "not-yet-accepting", "server-closed-connection", "consuming-input-failed",
        "connection-refused-fails-fast", "08006", "08001", "read-only-on-write", "read-only-on-read-is-not-transient",
        "read-only-create-role", "53300", "too-many-clients-words", "reserved-slots", "role-connection-limit",
        "wrong-password", "insufficient-privilege", "28P01", "connect-timeout-is-not-retried", "dns-failure",
        "tls-failure", "no-such-database",
    ],
)
def test_classify(sqlstate: str | None, message: str, writes: bool, expected: Transient | None) -> None:
    assert classify(sqlstate, message, writes=writes) is expected


# --------------------------------------------------------------------------------------- retry on a fake clock


@dataclass
class FakeClock:
    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


class Failure(Exception):
    def __init__(self, kind: Transient | None) -> None:
        super().__init__(f"fake failure ({kind})")
        self.kind = kind


@dataclass
class Script:
    """An operation that fails with the given kinds in order, then returns "done"; each call takes ``cost`` s."""

    clock: FakeClock
    failures: list[Transient | None]
    cost: float = 0.0
    calls: int = 0

    def __call__(self) -> str:
        self.calls += 1
        self.clock.now += self.cost
        if self.failures:
            raise Failure(self.failures.pop(0))
        return "done"


def kind_of(failure: BaseException) -> Transient | None:
    return failure.kind if isinstance(failure, Failure) else None


def run(script: Script, clock: FakeClock, *, budget_s: float = 10.0, uniform: float = 1.0,
        attempts: Attempts | None = None) -> str:
    return retry_transient(
        script,
        classify_failure=kind_of,
        budget=Budget(budget_s, clock=clock),
        what="set the password of 'app' at db.example:5432",
        sleep=clock.sleep,
        uniform=lambda: uniform,
        attempts=attempts,
    )


@pytest.mark.parametrize(
    ("failures", "calls"),
    [([], 1), ([FAILOVER], 2), ([FAILOVER, FAILOVER, TOO_MANY], 4), ([TOO_MANY] * 5, 6)],
    ids=["first-try", "one-failover", "mixed", "storm"],
)
def test_transient_failures_are_retried_until_success(failures: list[Transient], calls: int) -> None:
    clock = FakeClock()
    script = Script(clock, list(failures))
    attempts = Attempts()
    assert run(script, clock, attempts=attempts) == "done"
    assert script.calls == calls == attempts.count
    assert attempts.kinds == failures


def test_a_permanent_failure_propagates_at_once_unchanged() -> None:
    clock = FakeClock()
    script = Script(clock, [FAILOVER, None])
    with pytest.raises(Failure) as caught:
        run(script, clock)
    assert caught.value.kind is None
    assert script.calls == 2
    assert len(clock.sleeps) == 1


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    backoff = Backoff(base_s=0.1, cap_s=2.0)
    assert [backoff.delay(n, lambda: 1.0) for n in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    assert backoff.delay(3, lambda: 0.25) == pytest.approx(0.2)
    assert backoff.delay(3, lambda: 0.0) == 0.0


@pytest.mark.parametrize(
    ("kind", "error", "words"),
    [
        (FAILOVER, FailoverInProgress, "failover in progress, Secrets Manager will retry"),
        (TOO_MANY, TooManyConnections, "too many connections"),
    ],
    ids=["failover", "too-many-connections"],
)
def test_an_endless_outage_ends_inside_the_budget_with_a_clear_error(
    kind: Transient, error: type[TransientDatabaseError], words: str
) -> None:
    clock = FakeClock()
    started = clock.now
    script = Script(clock, [kind] * 1000, cost=0.05)
    with pytest.raises(error) as caught:
        run(script, clock, budget_s=10.0)
    assert isinstance(caught.value, DatabaseError)
    assert isinstance(caught.value.__cause__, Failure)
    message = str(caught.value)
    assert words in message
    assert "Secrets Manager will retry" in message
    assert "'app' at db.example:5432" in message
    assert clock.now - started <= 10.0, "the retries must end within the budget"
    assert script.calls > 5, "a budget of 10 s allows many attempts of 50 ms with backoff capped at 2 s"


def test_the_budget_is_shared_by_the_operations_of_one_invocation() -> None:
    clock = FakeClock()
    budget = Budget(3.0, clock=clock)

    def attempt(script: Script) -> str:
        return retry_transient(script, classify_failure=kind_of, budget=budget, what="op", sleep=clock.sleep,
                               uniform=lambda: 1.0)

    assert attempt(Script(clock, [FAILOVER] * 4)) == "done"  # waits 0.1 + 0.2 + 0.4 + 0.8 = 1.5 s
    with pytest.raises(FailoverInProgress):
        attempt(Script(clock, [FAILOVER] * 4))  # 1.5 s left: 0.1 + 0.2 + 0.4 fit, then 0.8 does not
    assert clock.now - budget.started < 3.0


def test_a_spent_budget_still_allows_one_attempt() -> None:
    clock = FakeClock()
    budget = Budget(0.0, clock=clock)
    assert retry_transient(Script(clock, []), classify_failure=kind_of, budget=budget, what="op",
                           sleep=clock.sleep) == "done"
    with pytest.raises(FailoverInProgress):
        retry_transient(Script(clock, [FAILOVER]), classify_failure=kind_of, budget=budget, what="op",
                        sleep=clock.sleep)
    assert clock.sleeps == []


def test_on_retry_is_told_of_every_wait() -> None:
    clock = FakeClock()
    seen: list[tuple[Transient, float]] = []
    retry_transient(Script(clock, [FAILOVER, TOO_MANY]), classify_failure=kind_of, budget=Budget(10, clock=clock),
                    what="op", sleep=clock.sleep, uniform=lambda: 0.5,
                    on_retry=lambda kind, delay, _failure: seen.append((kind, delay)))
    assert seen == [(FAILOVER, pytest.approx(0.05)), (TOO_MANY, pytest.approx(0.1))]


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Budget(-1)


@pytest.mark.parametrize(
    ("remaining_ms", "reserved_ms", "expected"),
    [(None, 22_150, DEFAULT_BUDGET_S), (30_000, 22_150, 7.85), (60_000, 22_150, DEFAULT_BUDGET_S),
     (22_000, 22_150, 0.0), (0, 0, 0.0)],
    ids=["no-context", "30-s-timeout", "long-timeout-capped", "nothing-left-over", "no-time-at-all"],
)
def test_the_budget_fits_what_the_timeout_leaves_over(remaining_ms, reserved_ms, expected) -> None:
    assert budget_within(remaining_ms, reserved_ms) == pytest.approx(expected)
