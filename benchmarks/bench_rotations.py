"""Full rotations in-process, the way the service drives them: stage AWSPENDING, then the four steps through
``rotation.handler.rotate``. Each step is timed and its round trips counted; every rotation is checked to have
actually moved AWSCURRENT, so a broken rotation can never pass for a fast one.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench_lab import SSL_FALSE, BenchmarkError, Lab, SslVariant
from bench_stats import summarize

from rotation import handler
from rotation.events import Step

STEPS = tuple(step.value for step in Step)


@dataclass
class StepSample:
    ms: float
    sm_operations: list[str]
    sm_http_requests: int
    db_attempts: int
    server_connections: int | None


@dataclass
class RotationSample:
    steps: dict[str, StepSample] = field(default_factory=dict)

    @property
    def ms(self) -> float:
        return sum(step.ms for step in self.steps.values())

    def total(self, measure: str) -> int:
        return sum(_count(step, measure) for step in self.steps.values())


def _count(step: StepSample, measure: str) -> int:
    if measure == "sm_calls":
        return len(step.sm_operations)
    value = getattr(step, measure)
    return 0 if value is None else value


def rotate_once(lab: Lab, arn: str, *, count_server: bool = True) -> RotationSample:
    """One full rotation; ``count_server`` only when no other thread is connecting (the log is shared)."""
    token = lab.sm.stage_pending(arn)
    sample = RotationSample()
    for step in STEPS:
        if count_server:
            lab.server_connections()
        with lab.counter.scope() as tally:
            started = time.perf_counter()
            try:
                handler.rotate({"Step": step, "SecretId": arn, "ClientRequestToken": token}, None)
            except Exception as exc:
                raise BenchmarkError(f"{step} failed for {arn}: {type(exc).__name__}: {exc}") from exc
            elapsed_ms = (time.perf_counter() - started) * 1000
        sample.steps[step] = StepSample(
            ms=elapsed_ms,
            sm_operations=list(tally.sm_operations),
            sm_http_requests=tally.sm_http_requests,
            db_attempts=tally.db_attempts,
            server_connections=lab.server_connections() if count_server else None,
        )
    if "AWSCURRENT" not in lab.sm.stages(arn).get(token, []):
        raise BenchmarkError(f"the rotation of {arn} ended without moving AWSCURRENT to version {token}")
    if sample.total("sm_calls") == 0:
        raise BenchmarkError("no Secrets Manager call was counted: the handler no longer uses the client returned "
                             "by rotation.secrets_store.secrets_manager_client, so the counter missed its calls")
    return sample


def count_summary(samples: list[RotationSample], measure: str) -> dict[str, Any]:
    """Per step (the most seen) and per rotation (min and max): counts must not vary, and the max is budgeted."""
    totals = [sample.total(measure) for sample in samples]
    return {
        "per_step": {step: max(_count(s.steps[step], measure) for s in samples) for step in STEPS},
        "per_rotation": max(totals),
        "per_rotation_min": min(totals),
        "rotations": len(totals),
    }


def _operations_by_step(sample: RotationSample) -> dict[str, dict[str, int]]:
    return {step: dict(Counter(s.sm_operations)) for step, s in sample.steps.items()}


def measure_variant(lab: Lab, strategy: str, variant: SslVariant, *, rounds: int, warmup: int) -> dict[str, Any]:
    """Counts over every rotation (warm-up included: the first alternating rotation creates the clone);
    times over the ``rounds`` after the warm-up."""
    if variant.needs_tls_server and lab.tls is None:
        return {"available": False, "ssl_key": variant.label, "reason": lab.tls_missing_reason}
    server = lab.server_for(variant)
    arn = lab.new_user_secret(strategy, variant)
    samples = [rotate_once(lab, arn) for _ in range(warmup + rounds)]
    if not lab.login_works(arn):
        raise BenchmarkError(f"after {len(samples)} rotations the AWSCURRENT credentials of {arn} do not log in")
    timed = samples[warmup:] or samples
    return {
        "available": True,
        "ssl_key": variant.label,
        "server": lab.describe_server(server),
        "sm_calls": {**count_summary(samples, "sm_calls"), "operations": _operations_by_step(samples[-1])},
        "sm_http_requests": count_summary(samples, "sm_http_requests"),
        "db_connection_attempts": count_summary(samples, "db_attempts"),
        "server_connections": count_summary(samples, "server_connections"),
        "wall_ms": summarize([sample.ms for sample in timed]),
        "step_ms": {step: summarize([s.steps[step].ms for s in timed]) for step in STEPS},
    }


def measure_throughput(lab: Lab, strategy: str, *, workers: int, rotations_per_worker: int) -> dict[str, Any]:
    """``workers`` threads, each rotating its own secret ``rotations_per_worker`` times, all started together."""
    arns = [lab.new_user_secret(strategy, SSL_FALSE) for _ in range(workers)]
    for arn in arns:
        # Steady state only: the first alternating rotation creates the clone role.
        rotate_once(lab, arn, count_server=False)
    start = threading.Barrier(workers + 1)
    results: list[list[RotationSample]] = [[] for _ in arns]
    failures: list[BaseException] = []

    def worker(index: int, arn: str) -> None:
        start.wait()
        try:
            for _ in range(rotations_per_worker):
                results[index].append(rotate_once(lab, arn, count_server=False))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i, arn), daemon=True) for i, arn in enumerate(arns)]
    for thread in threads:
        thread.start()
    lab.server_connections()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    server_connections = lab.server_connections()
    if failures:
        raise BenchmarkError(f"a throughput worker failed: {failures[0]}") from failures[0]
    samples = [sample for worker_samples in results for sample in worker_samples]
    return {
        "workers": workers,
        "rotations": len(samples),
        "wall_s": round(elapsed, 3),
        "rotations_per_s": round(len(samples) / elapsed, 2),
        "latency_ms": summarize([sample.ms for sample in samples]),
        "sm_calls_per_rotation": max(sample.total("sm_calls") for sample in samples),
        "db_connection_attempts_per_rotation": max(sample.total("db_attempts") for sample in samples),
        # Stage checks and the benchmark's own logins happen outside the timed loop, so this is the
        # workers' rotations alone.
        "server_connections_per_rotation": round(server_connections / len(samples), 2),
    }
