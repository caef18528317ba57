"""Fault injection for the end-to-end tests: fail the k-th Secrets Manager call, database connection or
role-changing SQL statement of a rotation, the way a network, a server or a killed Lambda would.

Every injector counts the events of its kind and names them (``setSecret: GetSecretValue(AWSPENDING)``), so a
run without a fault (``fail_at=None``) lists a rotation's injection points and a run with ``fail_at=k`` fails
exactly at the k-th one. Faults come from real parts where there is one: a refused connection is a real closed
port, a killed session is ``pg_terminate_backend`` on the server. Only "the client raised" and "the Lambda died
here" are simulated, with :class:`InjectedCrash`.

Injectors hook the code under test from the outside: a botocore event hook on the function's cached boto3
client, and wrappers around ``psycopg.connect``, ``Connection.execute`` and ``Transaction.__exit__`` that act only
on the function's own connections (``application_name`` ``secrets-rotation``), never on the tests' helpers.
"""

from __future__ import annotations

import contextlib
import json
import re
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, ReadTimeoutError
from helpers import closed_port, silent_listener
from psycopg import sql

from rotation.database import APPLICATION_NAME


class InjectedCrash(Exception):
    """The function died at an injection point (a timeout, an out-of-memory kill): nothing after it ran."""


@dataclass(frozen=True, slots=True)
class Family:
    """One kind of fault: where it strikes and what the function sees."""

    name: str
    #: What happens at the injection point, for the report.
    effect: str


SM_REQUEST_FAILS = Family("sm-request-fails", "the call fails before the service acts (InternalServiceError)")
SM_RESPONSE_LOST = Family("sm-response-lost", "the service acts but the answer never arrives (ReadTimeoutError)")
DB_CONNECT_REFUSED = Family("db-connect-refused", "the connection is refused (a real closed port)")
DB_SESSION_KILLED = Family("db-session-killed", "the session is terminated right after login (pg_terminate_backend)")
SQL_CRASH_BEFORE = Family("sql-crash-before", "the function dies before sending the statement")
SQL_CRASH_AFTER = Family("sql-crash-after", "the function dies right after the statement ran (committed if autocommit)")
SQL_SESSION_KILLED = Family("sql-session-killed", "the server session is terminated as the statement is sent")

SECRETS_MANAGER_FAMILIES = (SM_REQUEST_FAILS, SM_RESPONSE_LOST)
CONNECTION_FAMILIES = (DB_CONNECT_REFUSED, DB_SESSION_KILLED)
STATEMENT_FAMILIES = (SQL_CRASH_BEFORE, SQL_CRASH_AFTER, SQL_SESSION_KILLED)

ROLE_CHANGING = ("ALTER ROLE", "CREATE ROLE", "GRANT")
COMMIT = "COMMIT"


@dataclass
class Injector:
    """Counts the events of one family across the steps of a rotation and fails the ``fail_at``-th (1-based)."""

    family: Family
    fail_at: int | None = None
    #: The step being invoked, set by the test's driver so that points are named after it.
    step: str = "-"
    points: list[str] = field(default_factory=list)
    fired: str | None = None

    def record(self, what: str) -> bool:
        """Record an event; True when it is the one to fail."""
        label = f"{self.step}: {what}"
        repeats = sum(1 for point in self.points if point.split(" #")[0] == label)
        self.points.append(label if not repeats else f"{label} #{repeats + 1}")
        if self.fail_at is not None and len(self.points) == self.fail_at:
            self.fired = self.points[-1]
            return True
        return False


# --------------------------------------------------------------------------------------- Secrets Manager


def _operation(model: Any, request: dict[str, Any]) -> str:
    """``GetSecretValue(AWSPENDING)``: the operation, and for reads the stage, from the serialized request."""
    if model.name != "GetSecretValue":
        return model.name
    stage = json.loads(request.get("body") or b"{}").get("VersionStage")
    return f"{model.name}({stage})"


@contextlib.contextmanager
def secrets_manager_faults(client: Any, injector: Injector) -> Iterator[Injector]:
    """Count (and fail) the calls ``client`` makes; ``client`` is the function's cached boto3 client.

    ``before-call`` fires once per API call, before botocore's retries: a fault raised there is the call's final
    outcome, as if every retry had failed. ``after-call`` fires once the service answered: raising there loses
    an answer to a request the service carried out.
    """
    marked: list[bool] = []

    def before_call(model: Any, params: dict[str, Any], **_: Any) -> None:
        fail = injector.record(_operation(model, params))
        marked.append(fail)
        if fail and injector.family is SM_REQUEST_FAILS:
            raise ClientError(
                {"Error": {"Code": "InternalServiceError", "Message": "injected: the service failed"},
                 "ResponseMetadata": {"HTTPStatusCode": 500}},
                model.name,
            )

    def after_call(model: Any, **_: Any) -> None:
        if marked and marked[-1] and injector.family is SM_RESPONSE_LOST:
            raise ReadTimeoutError(endpoint_url=client.meta.endpoint_url)

    events = client.meta.events
    events.register("before-call.secrets-manager", before_call, unique_id="fault-before-call")
    events.register("after-call.secrets-manager", after_call, unique_id="fault-after-call")
    try:
        yield injector
    finally:
        events.unregister("before-call.secrets-manager", unique_id="fault-before-call")
        events.unregister("after-call.secrets-manager", unique_id="fault-after-call")


# --------------------------------------------------------------------------------------- PostgreSQL


def statement_label(conn: psycopg.Connection, query: Any) -> str:
    """The statement with names and values masked: stable across runs, and no SCRAM verifier in a label."""
    text = query.as_string(conn) if isinstance(query, sql.Composable) else str(query)
    text = re.sub(r"'(?:[^']|'')*'", "'…'", text)
    return re.sub(r'"(?:[^"]|"")*"', '"…"', text)


def is_role_change(label: str) -> bool:
    return label.upper().startswith(ROLE_CHANGING)


@contextlib.contextmanager
def database_faults(injector: Injector, terminate: Callable[[int], None]) -> Iterator[Injector]:
    """Count (and fail) the function's connections, or its role-changing statements and commits.

    ``terminate(pid)`` ends a server session from outside (a superuser's ``pg_terminate_backend``).
    """
    family = injector.family
    ours: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()
    original_connect = psycopg.connect
    original_execute = psycopg.Connection.execute
    original_exit = psycopg.Transaction.__exit__

    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as patch:
        refused_port = stack.enter_context(closed_port())

        def connect(*args: Any, **kwargs: Any) -> psycopg.Connection:
            if kwargs.get("application_name") != APPLICATION_NAME:
                return original_connect(*args, **kwargs)
            fail = family in CONNECTION_FAMILIES and injector.record("connection")
            if fail and family is DB_CONNECT_REFUSED:
                kwargs = {**kwargs, "port": refused_port}
            conn = original_connect(*args, **kwargs)
            ours.add(conn)
            if fail and family is DB_SESSION_KILLED:
                terminate(conn.info.backend_pid)
            return conn

        def at_statement(conn: psycopg.Connection, label: str, run: Callable[[], Any]) -> Any:
            if family not in STATEMENT_FAMILIES or not injector.record(label):
                return run()
            if family is SQL_CRASH_BEFORE:
                raise InjectedCrash(f"injected crash before {label}")
            if family is SQL_SESSION_KILLED:
                terminate(conn.info.backend_pid)
                return run()
            run()
            raise InjectedCrash(f"injected crash after {label}")

        def execute(self: psycopg.Connection, query: Any, *args: Any, **kwargs: Any) -> Any:
            if self not in ours:
                return original_execute(self, query, *args, **kwargs)
            label = statement_label(self, query)
            if not is_role_change(label):
                return original_execute(self, query, *args, **kwargs)
            return at_statement(self, label, lambda: original_execute(self, query, *args, **kwargs))

        def transaction_exit(self: psycopg.Transaction, exc_type: Any, exc: Any, tb: Any) -> Any:
            # A savepoint's release commits nothing; only the outermost block's exit is the COMMIT.
            if exc_type is not None or self.connection not in ours or self.savepoint_name:
                return original_exit(self, exc_type, exc, tb)
            return at_statement(self.connection, COMMIT, lambda: original_exit(self, exc_type, exc, tb))

        patch.setattr(psycopg, "connect", connect)
        patch.setattr(psycopg.Connection, "execute", execute)
        patch.setattr(psycopg.Transaction, "__exit__", transaction_exit)
        yield injector


# --------------------------------------------------------------------------------------- throttling and hangs

_THROTTLED_BODY = b'{"__type": "ThrottlingException", "message": "Rate exceeded"}'


class _Body:
    """The raw-stream interface botocore reads a response body through."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


@contextlib.contextmanager
def throttled(client: Any, first_attempts: Mapping[str, int]) -> Iterator[Counter[str]]:
    """Answer the first ``n`` HTTP attempts of each named operation with the service's 400 ThrottlingException.

    Hooked at ``before-send``, inside botocore's retry loop, so the client's own retry policy sees the throttles
    exactly as it would see the service's. Yields the number of attempts per operation.
    """
    attempts: Counter[str] = Counter()

    def before_send(request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        operation = event_name.rsplit(".", 1)[-1]
        attempts[operation] += 1
        if attempts[operation] > first_attempts.get(operation, 0):
            return None
        headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": "throttled"}
        return AWSResponse(request.url, 400, headers, _Body(_THROTTLED_BODY))

    client.meta.events.register("before-send.secrets-manager", before_send, unique_id="fault-throttle")
    try:
        yield attempts
    finally:
        client.meta.events.unregister("before-send.secrets-manager", unique_id="fault-throttle")


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint that accepts connections and never answers (a hung proxy, a half-open network path)."""
    with silent_listener() as port:
        yield f"http://127.0.0.1:{port}"
