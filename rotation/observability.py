"""Logging and metrics: one JSON object per log line, one EMF document per invocation.

The Logger is module-level (Lambda reuses containers; building it per call costs time), but per-invocation
keys are thread-local so concurrent in-process invocations (tests, `rotation` CLI workers) do not mix.
Metrics use Powertools' EphemeralMetrics: the regular Metrics class shares one metric set per process.
A container's first invocation logs ``cold_start: true`` and ``init_ms``, the time its handler took to import
(later ones ``cold_start: false``), so cold starts can be found and priced in CloudWatch Logs Insights.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from rotation.exceptions import RotationError

DEFAULT_SERVICE = "secrets-rotation"
#: Powertools refuses to flush metrics without a namespace, and fails the invocation *after* the work was
#: done; a default keeps a forgotten environment variable from turning successes into errors.
DEFAULT_NAMESPACE = "SecretsRotation"

_log_to_stderr = False


class _CurrentStdoutHandler(logging.StreamHandler[TextIO]):
    """Write to whatever sys.stdout is at emit time, as Lambda's runtime and test capture both expect."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr if _log_to_stderr else sys.stdout

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


logger = Logger(
    service=os.environ.get("POWERTOOLS_SERVICE_NAME", DEFAULT_SERVICE),
    utc=True,
    logger_handler=_CurrentStdoutHandler(),
)


@contextmanager
def logs_to_stderr() -> Iterator[None]:
    """Send log lines to stderr, for command-line modes whose stdout must be one machine-readable document."""
    global _log_to_stderr  # a process-wide switch, set only by the CLI's main thread
    previous, _log_to_stderr = _log_to_stderr, True
    try:
        yield
    finally:
        _log_to_stderr = previous


def annotate(**keys: object) -> None:
    """Add keys to every later log line of this invocation (this thread)."""
    logger.thread_safe_append_keys(**{k: v for k, v in keys.items() if v is not None})


class _ColdStart:
    """The container's init time, reported by its first invocation only."""

    def __init__(self) -> None:
        self._init_ms: float | None = None
        self._reported = False
        self._lock = threading.Lock()

    def initialized(self, started: float) -> None:
        self._init_ms = round((time.perf_counter() - started) * 1000, 1)

    def keys(self) -> dict[str, object]:
        with self._lock:
            first, self._reported = not self._reported, True
        return {"cold_start": True, "init_ms": self._init_ms} if first else {"cold_start": False}


cold_start = _ColdStart()


def start_invocation(context: object, **keys: object) -> None:
    logger.thread_safe_clear_keys()
    annotate(request_id=getattr(context, "aws_request_id", None), **cold_start.keys(), **keys)


@contextmanager
def step_metrics(operation: str, step: str) -> Iterator[None]:
    """Emit <operation>Succeeded / <operation>Failed and <operation>Duration for one invocation."""
    metrics = EphemeralMetrics(
        namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or DEFAULT_NAMESPACE,
        service=os.environ.get("POWERTOOLS_SERVICE_NAME", DEFAULT_SERVICE),
    )
    metrics.add_dimension(name="Step", value=step)
    started = time.perf_counter()
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        elapsed_ms = (time.perf_counter() - started) * 1000
        metrics.add_metric(name=f"{operation}{'Succeeded' if succeeded else 'Failed'}",
                           unit=MetricUnit.Count, value=1)
        metrics.add_metric(name=f"{operation}Duration", unit=MetricUnit.Milliseconds, value=round(elapsed_ms, 1))
        metrics.flush_metrics()


@contextmanager
def logged_failure() -> Iterator[None]:
    """Log a failure once, with its kind, and let it propagate so Secrets Manager sees the step fail."""
    try:
        yield
    except RotationError as exc:
        logger.error(str(exc), extra={"error": exc.code})
        raise
    except Exception as exc:
        logger.exception("unexpected failure", extra={"error": type(exc).__name__})
        raise
