"""Counting round trips where they happen, not where the code says they happen.

Secrets Manager calls are counted on the boto3 client the handler itself uses (botocore event hooks), database
logins at ``psycopg.connect`` and, as a cross-check, in the server's own log (``log_connections`` is on): a
libpq-internal retry, such as ``sslmode=prefer`` falling back to plain TCP, shows up only there.

Counts go to the tally of the calling thread's current scope, so concurrent workers each count their own
rotation and the benchmark's own setup traffic (creating roles, staging versions) is never counted.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

#: What PostgreSQL logs for every TCP connection it accepts, before authentication (log_connections = on).
CONNECTION_RECEIVED = b"connection received:"


@dataclass
class Tally:
    """Round trips made inside one scope (one step of one rotation)."""

    #: Secrets Manager operation names in call order, e.g. ["DescribeSecret", "GetSecretValue"].
    sm_operations: list[str] = field(default_factory=list)
    #: HTTP requests sent to Secrets Manager: equal to the calls unless botocore retried.
    sm_http_requests: int = 0
    #: The sslmode of every psycopg.connect call, failed ones included.
    db_sslmodes: list[str] = field(default_factory=list)

    @property
    def sm_calls(self) -> int:
        return len(self.sm_operations)

    @property
    def db_attempts(self) -> int:
        return len(self.db_sslmodes)


class RoundTripCounter:
    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def scope(self) -> Iterator[Tally]:
        tally = Tally()
        outer = getattr(self._local, "tally", None)
        self._local.tally = tally
        try:
            yield tally
        finally:
            self._local.tally = outer

    def _current(self) -> Tally | None:
        return getattr(self._local, "tally", None)

    def attach_to_client(self, client: Any) -> None:
        """Count the calls and HTTP requests of a boto3 ``secretsmanager`` client."""

        def on_call(model: Any, **_: Any) -> None:
            tally = self._current()
            if tally is not None:
                tally.sm_operations.append(model.name)

        def on_send(**_: Any) -> None:
            tally = self._current()
            if tally is not None:
                tally.sm_http_requests += 1

        client.meta.events.register("before-call.secrets-manager", on_call)
        client.meta.events.register("before-send.secrets-manager", on_send)

    def attach_to_psycopg(self) -> Callable[[], None]:
        """Wrap ``psycopg.connect`` (which rotation.database looks up at call time); returns the undo."""
        original = psycopg.connect

        @functools.wraps(original)
        def counting_connect(*args: Any, **kwargs: Any) -> Any:
            tally = self._current()
            if tally is not None:
                tally.db_sslmodes.append(str(kwargs.get("sslmode", "default")))
            return original(*args, **kwargs)

        psycopg.connect = counting_connect

        def restore() -> None:
            psycopg.connect = original

        return restore


class ServerConnectionLog:
    """New TCP connections a server accepted since the last read, from its log file."""

    def __init__(self, log_file: Path) -> None:
        self._log_file = log_file
        self._offset = 0
        self.new_connections()

    def new_connections(self) -> int:
        # Each backend writes its line before authentication, so it is on disk by the time connect() returns.
        try:
            with self._log_file.open("rb") as log:
                log.seek(self._offset)
                chunk = log.read()
        except FileNotFoundError:
            return 0
        # Only whole lines: a line being written right now is counted on the next read.
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        return complete.count(CONNECTION_RECEIVED)
