"""Benchmark of the rotation function: round trips, wall time, cold start, throughput, artifact size; budgets.

    .venv/bin/python benchmarks/rotation_bench.py [--rounds N] [--workers N] [--json-out FILE]
        [--artifact-dir DIR | --skip-artifact] [--compare OLD.json]
    .venv/bin/python benchmarks/rotation_bench.py --compare OLD.json --against NEW.json   # no run

Starts its own PostgreSQL (plus a TLS one when a TLS build exists) and moto server, like the tests. Prints
Markdown tables, writes the results as JSON (default benchmarks/results/latest.json), and exits 0 when every
budget holds, 1 when one is exceeded, 2 when something could not be measured at all. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench_args import non_negative, positive
from bench_artifact import measure_artifact
from bench_budgets import as_json, budgets_hold, check_budgets
from bench_coldstart import measure_first_invocation, measure_imports
from bench_lab import SSL_VARIANTS, STRATEGIES, BenchmarkError, Lab, open_lab
from bench_machine import describe_machine, load_average
from bench_report import comparison, render
from bench_rotations import measure_throughput, measure_variant

from rotation_tools.local import LocalToolError
from rotation_tools.local.postgres import cleanup_on_sigterm

DEFAULT_JSON_OUT = Path(__file__).resolve().parent / "results" / "latest.json"
SCHEMA_VERSION = 1
EXIT_OK, EXIT_BUDGET_EXCEEDED, EXIT_NOT_MEASURED = 0, 1, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=positive, default=20,
                        help="timed full rotations per strategy and ssl variant (default 20)")
    parser.add_argument("--warmup", type=non_negative, default=2,
                        help="untimed rotations before them (counted all the same; default 2)")
    parser.add_argument("--workers", type=positive, default=4,
                        help="concurrent workers for the throughput run, besides 1 (default 4)")
    parser.add_argument("--rotations-per-worker", type=positive, default=5,
                        help="rotations each throughput worker performs (default 5)")
    parser.add_argument("--samples", type=positive, default=5,
                        help="fresh interpreters for import times and for first invocations (default 5)")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON_OUT,
                        help="where to write the results (default benchmarks/results/latest.json)")
    artifact = parser.add_mutually_exclusive_group()
    artifact.add_argument("--artifact-dir", type=Path,
                          help="measure this sam build artifact (default: .aws-sam/build/RotationFunction, "
                               "else build one with `make build-RotationFunction`)")
    artifact.add_argument("--skip-artifact", action="store_true",
                          help="do not measure the artifact (reported as n/a, budget unchecked)")
    parser.add_argument("--compare", type=Path, metavar="OLD.json", help="print deltas against an earlier run")
    parser.add_argument("--against", type=Path, metavar="NEW.json",
                        help="with --compare: compare two result files without running anything")
    args = parser.parse_args(argv)
    if args.against and not args.compare:
        parser.error("--against needs --compare OLD.json")
    return args


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    progress(f"{name} ...")
    started = time.perf_counter()
    yield
    progress(f"{name}: {time.perf_counter() - started:.1f} s")


@contextlib.contextmanager
def handler_output_discarded() -> Iterator[None]:
    # The handler logs JSON lines and metrics to stdout, as in Lambda; writing them costs what it costs in
    # Lambda, but they must not bury the tables.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def measure_strategy(lab: Lab, strategy: str, args: argparse.Namespace) -> dict[str, Any]:
    with section(f"{strategy}: rotations by ssl key"), handler_output_discarded():
        variants = {variant.key: measure_variant(lab, strategy, variant, rounds=args.rounds, warmup=args.warmup)
                    for variant in SSL_VARIANTS}
    with section(f"{strategy}: throughput"), handler_output_discarded():
        throughput = [measure_throughput(lab, strategy, workers=workers,
                                         rotations_per_worker=args.rotations_per_worker)
                      for workers in sorted({1, args.workers})]
    with section(f"{strategy}: first invocation in {args.samples} fresh interpreter(s)"):
        first_invocation = measure_first_invocation(lab, strategy, samples=args.samples)
    return {"variants": variants, "throughput": throughput, "first_invocation": first_invocation}


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = load_average()
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rotation-bench-")))
        with section("starting PostgreSQL (plain and TLS) and the moto server"):
            lab = open_lab(stack)
        with section("artifact size"):
            artifact = ({"available": False, "reason": "--skip-artifact"} if args.skip_artifact
                        else measure_artifact(args.artifact_dir, scratch))
        strategies = {strategy: measure_strategy(lab, strategy, args) for strategy in STRATEGIES}
        with section(f"import times in {args.samples} fresh interpreter(s)"):
            artifact_dir = Path(artifact["path"]) if artifact.get("available") else None
            cold_start = measure_imports(args.samples, artifact_dir)
        machine = describe_machine(lab.server_versions())
        machine["load_average_1min"] = {"before": load_before, "after": load_average()}
        return {
            "schema": SCHEMA_VERSION,
            "machine": machine,
            "settings": {
                "rounds": args.rounds,
                "warmup": args.warmup,
                "workers": args.workers,
                "rotations_per_worker": args.rotations_per_worker,
                "samples": args.samples,
            },
            "strategies": strategies,
            "cold_start": cold_start,
            "artifact": artifact,
        }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.against:
        print(comparison(json.loads(args.compare.read_text()), json.loads(args.against.read_text())))
        return EXIT_OK
    cleanup_on_sigterm()
    started = time.perf_counter()
    try:
        results = run(args)
    except (BenchmarkError, LocalToolError) as exc:
        progress(f"could not measure: {exc}")
        return EXIT_NOT_MEASURED
    except Exception:
        # Anything unforeseen is still "could not measure", never the budget-exceeded status.
        traceback.print_exc()
        return EXIT_NOT_MEASURED
    checks = check_budgets(results)
    results["budgets"] = as_json(checks)
    results["budgets_hold"] = budgets_hold(checks)
    results["runtime_s"] = round(time.perf_counter() - started, 1)
    write_json(args.json_out, results)
    print(render(results, checks))
    if args.compare:
        print(comparison(json.loads(args.compare.read_text()), results))
    progress(f"results written to {args.json_out} ({results['runtime_s']} s in all)")
    if not results["budgets_hold"]:
        progress("a budget is exceeded: see the Budgets table")
        return EXIT_BUDGET_EXCEEDED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
