"""Transient database failures (Aurora failover, connection storms) and the bounded retry that rides them out.

Pure logic: nothing here imports psycopg. The database adapter hands over what a failure says (its SQLSTATE, if
the server sent one, and libpq's or the server's message) and whether the operation writes; this module decides
whether waiting can help, and :func:`retry_transient` waits with exponential backoff and full jitter inside a
:class:`Budget`, then gives up with an error that tells the operator the service will retry.

Why a budget rather than a number of attempts: Lambda kills the function at its timeout (30 s by default)
without a word, and a step may make more than one database call. One budget per invocation, well under the
timeout, keeps the last word ours: "failover in progress, Secrets Manager will retry", logged and counted.
Secrets Manager does retry a failed rotation (same token, all steps), and every step converges on a retry.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from rotation.exceptions import FailoverInProgress, TooManyConnections, TransientDatabaseError

T = TypeVar("T")

#: The share of a 30 s function timeout a step may spend waiting out transient failures.
DEFAULT_BUDGET_S = 10.0
BASE_DELAY_S = 0.1
MAX_DELAY_S = 2.0


def budget_within(remaining_ms: int | None, reserved_ms: int) -> float:
    """The retry budget for an invocation with ``remaining_ms`` left before Lambda's timeout, of which
    ``reserved_ms`` must stay free (the step's worst case without retries: Secrets Manager, one connect, the rest).

    At most :data:`DEFAULT_BUDGET_S`; 0 when nothing is left over (a single attempt, as without retries).
    Unknown remaining time (a local run without a context) gives the default.
    """
    if remaining_ms is None:
        return DEFAULT_BUDGET_S
    return max(0.0, min(DEFAULT_BUDGET_S, (remaining_ms - reserved_ms) / 1000))


class Transient(enum.Enum):
    """Why waiting may help."""

    #: The writer is going away, starting, or has just been demoted: a failover (or a restart) is under way.
    FAILOVER = "failover"
    #: max_connections is reached: other clients (a rotation storm) hold every slot for now.
    TOO_MANY_CONNECTIONS = "too many connections"


# SQLSTATEs the server sends. 25006 is transient only when we write: a read-only transaction refusing a write
# means we reached a replica or a just-demoted writer through a name that should lead to the writer.
_FAILOVER_SQLSTATES = frozenset({
    "57P01",  # admin_shutdown: terminating connection due to administrator command (fast shutdown, failover)
    "57P02",  # crash_shutdown: another server process crashed, the server is restarting
    "57P03",  # cannot_connect_now: the database system is starting up / shutting down / in recovery
    "08006",  # connection_failure
    "08001",  # sqlclient_unable_to_establish_sqlconnection
    "08004",  # sqlserver_rejected_establishment_of_sqlconnection
})
_READ_ONLY_SQLSTATE = "25006"
_TOO_MANY_SQLSTATE = "53300"

# libpq and the server before a session exists: no SQLSTATE reaches the client, only these words. A refused TCP
# connection is not among them: a wrong port or a stopped server gives the same, and the operator is owed a fast
# "cannot reach host:port" (the service's own retry of the rotation covers an instance that is rebooting).
_FAILOVER_MESSAGES = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "terminating connection due to administrator command",
    "server closed the connection unexpectedly",
    "connection reset by peer",
    "ssl connection has been closed unexpectedly",
    "ssl syscall error: eof detected",
    "could not receive data from server",
    "could not send data to server",
    "no connection to the server",
    "consuming input failed",
)
_READ_ONLY_MESSAGES = (
    "cannot execute alter role in a read-only transaction",
    "cannot execute create role in a read-only transaction",
    "cannot execute grant in a read-only transaction",
    "in a read-only transaction",
)
_TOO_MANY_MESSAGES = (
    "sorry, too many clients already",
    "remaining connection slots are reserved",
    "too many connections for role",
    "too many connections for database",
)


def classify(sqlstate: str | None, message: str, *, writes: bool) -> Transient | None:
    """Whether a failure is transient, and of which kind; None means waiting cannot help.

    ``message`` is matched case-insensitively. ``writes`` says whether the operation changes anything: a
    refused write on a read-only server is a failover in progress only for an operation that writes.
    """
    text = message.lower()
    if sqlstate == _TOO_MANY_SQLSTATE or any(marker in text for marker in _TOO_MANY_MESSAGES):
        return Transient.TOO_MANY_CONNECTIONS
    if sqlstate == _READ_ONLY_SQLSTATE or any(marker in text for marker in _READ_ONLY_MESSAGES):
        return Transient.FAILOVER if writes else None
    if sqlstate in _FAILOVER_SQLSTATES or any(marker in text for marker in _FAILOVER_MESSAGES):
        return Transient.FAILOVER
    return None


@dataclass
class Budget:
    """Seconds an invocation may spend on retries, counted from its creation; shared by all its operations."""

    seconds: float = DEFAULT_BUDGET_S
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"a retry budget cannot be negative ({self.seconds} s)")
        self.started = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        return max(0.0, self.seconds - self.elapsed())


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniformly in [0, min(cap, base * 2**n)].

    Full jitter spreads a crowd of rotations that failed together (a storm, a failover) over the whole window
    instead of sending them back in lockstep.
    """

    base_s: float = BASE_DELAY_S
    cap_s: float = MAX_DELAY_S

    def delay(self, retry: int, uniform: Callable[[], float]) -> float:
        return uniform() * min(self.cap_s, self.base_s * (2.0 ** retry))


@dataclass
class Attempts:
    """What a retried operation went through, for the log line and the benchmark."""

    count: int = 0
    kinds: list[Transient] = field(default_factory=list)
    waited_s: float = 0.0


def retry_transient(
    operation: Callable[[], T],
    *,
    classify_failure: Callable[[BaseException], Transient | None],
    budget: Budget,
    what: str,
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], None] = time.sleep,
    uniform: Callable[[], float] = random.random,
    on_retry: Callable[[Transient, float, BaseException], None] | None = None,
    attempts: Attempts | None = None,
) -> T:
    """Run ``operation``; on a transient failure wait and run it again while the budget allows.

    ``operation`` must be idempotent. Failures ``classify_failure`` does not call transient propagate at once,
    unchanged. When the next wait would overrun the budget, raises :class:`FailoverInProgress` or
    :class:`TooManyConnections` from the last failure. ``what`` names the operation in that message (a user
    and an address, never a secret). ``on_retry(kind, delay, failure)`` is told of every wait, for logging.
    """
    record = attempts if attempts is not None else Attempts()
    retry = 0
    while True:
        record.count += 1
        try:
            return operation()
        except Exception as failure:
            kind = classify_failure(failure)
            if kind is None:
                raise
            record.kinds.append(kind)
            delay = backoff.delay(retry, uniform)
            if delay >= budget.remaining():
                raise give_up(kind, what, record, budget) from failure
            if on_retry is not None:
                on_retry(kind, delay, failure)
            sleep(delay)
            record.waited_s += delay
            retry += 1


def give_up(kind: Transient, what: str, attempts: Attempts, budget: Budget) -> TransientDatabaseError:
    """The error a step ends with when its budget is spent; the message carries no server text."""
    tried = f"{attempts.count} attempt{'s' if attempts.count != 1 else ''} in {budget.elapsed():.1f} s"
    if kind is Transient.TOO_MANY_CONNECTIONS:
        return TooManyConnections(
            f"{what}: too many connections (the server's max_connections is reached; {tried}); Secrets Manager "
            "will retry. If this persists, spread the secrets' rotation schedules or lower the function's "
            "reserved concurrency"
        )
    return FailoverInProgress(f"{what}: failover in progress, Secrets Manager will retry ({tried})")


__all__ = [
    "DEFAULT_BUDGET_S",
    "Attempts",
    "Backoff",
    "Budget",
    "Transient",
    "budget_within",
    "classify",
    "give_up",
    "retry_transient",
]
