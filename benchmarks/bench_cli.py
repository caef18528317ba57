"""How long the `rotation` command line takes against a local stack, and where the time goes.

    .venv/bin/python benchmarks/bench_cli.py               # ~30 s; 5 samples per command
    .venv/bin/python benchmarks/bench_cli.py --samples 10 --json-out cli.json

Starts a real local stack (PostgreSQL with SCRAM over TCP, the moto server over HTTP), creates a rotatable
secret, then:

* end to end: runs `rotation rotate`, `doctor`, `repair` and `status` as a person would (the installed
  console script when there is one, else `python -m rotation_tools`), each in a fresh process, and reports
  the wall time's median, min and max against the 1.5 s budget;
* breakdown: in a fresh interpreter per sample, times each phase on its own: interpreter start-up, the CLI
  and its parser, `import boto3`, building the Secrets Manager client, `import psycopg`, Powertools (the
  logger), and the command's own work (Secrets Manager calls, logins, rotation), then the same command again
  in the same process, which is what the work costs once everything is loaded.

Figures are printed, never asserted by a test: a busy machine is slower, not wrong. Exit status: 0 every
command's median is within budget, 1 one is not, 2 the stack could not start or a command failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUDGET_S = 1.5
COMMANDS = ("rotate", "doctor", "repair", "status")
BUDGETED = ("rotate", "doctor", "repair")
_TIMEOUT_S = 120

# Runs in a fresh interpreter: each phase timed on its own, in the order a command pays them.
_PHASES = """
import contextlib, io, json, os, sys, time
argv = json.loads(sys.argv[1])
t = [time.perf_counter()]
from rotation_tools.cli import build_parser, main
build_parser(only=argv[0])
t.append(time.perf_counter())
import boto3
t.append(time.perf_counter())
from rotation.config import Settings
from rotation.secrets_store import secrets_manager_client
secrets_manager_client(Settings.from_env().secrets_manager_endpoint)
t.append(time.perf_counter())
import psycopg
t.append(time.perf_counter())
import rotation.observability
t.append(time.perf_counter())
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    first = main(argv)
    t.append(time.perf_counter())
    main(argv)
    t.append(time.perf_counter())
names = ["cli_and_parser", "import_boto3", "client", "import_psycopg", "powertools", "work", "work_again"]
print(json.dumps({"code": first, **{n: (b - a) * 1000 for n, a, b in zip(names, t, t[1:])}}))
"""
PHASE_LABELS = {
    "interpreter": "interpreter start-up (python -c pass)",
    "cli_and_parser": "rotation_tools.cli + the command's parser",
    "import_boto3": "import boto3 (botocore, s3transfer via boto3.compat)",
    "client": "Secrets Manager client (endpoints, service model)",
    "import_psycopg": "import psycopg (libpq binding)",
    "powertools": "Powertools logger (rotation.observability)",
    "work": "the command's work, first run in the process",
    "work_again": "the same work again, everything loaded",
}


def _command_line() -> list[str]:
    script = Path(sys.executable).with_name("rotation")
    if script.exists():
        return [str(script)]
    found = shutil.which("rotation")
    return [found] if found else [sys.executable, "-m", "rotation_tools"]


def _argv(command: str, arn: str) -> list[str]:
    return [command, "--no-logs"] if command == "status" else [command, "--secret-id", arn]


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(samples: int) -> dict[str, Any]:
    from rotation_tools.local.aurora import create_app_role, setup_aurora_like
    from rotation_tools.local.postgres import find_bindir, start_postgres
    from rotation_tools.local.secretsmanager import LocalSecretsManager, routing_variables

    with start_postgres(find_bindir()) as pg, LocalSecretsManager() as sm:
        master = setup_aurora_like(pg)
        user = create_app_role(pg, master, f"bench_cli_{uuid.uuid4().hex[:8]}")
        arn = sm.create_secret(f"bench-cli/{uuid.uuid4().hex}", user)
        sm.enable_rotation(arn)
        env = {name: value for name, value in os.environ.items() if name not in routing_variables(os.environ)}
        env.update(sm.env())
        cli = _command_line()

        end_to_end: dict[str, list[float]] = {command: [] for command in COMMANDS}
        for _ in range(samples):
            for command in COMMANDS:
                started = time.perf_counter()
                proc = subprocess.run([*cli, *_argv(command, arn)], env=env, capture_output=True, text=True,
                                      timeout=_TIMEOUT_S, check=False, cwd=ROOT)
                end_to_end[command].append(time.perf_counter() - started)
                if proc.returncode not in (0, 3):  # repair: 3 = a repair is needed (none here)
                    raise RuntimeError(f"rotation {command} failed ({proc.returncode}): {proc.stderr[-800:]}")

        phases: dict[str, dict[str, list[float]]] = {command: {} for command in BUDGETED}
        for _ in range(samples):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=env, check=True, timeout=_TIMEOUT_S)
            interpreter_ms = (time.perf_counter() - started) * 1000
            for command in BUDGETED:
                proc = subprocess.run([sys.executable, "-c", _PHASES, json.dumps(_argv(command, arn))], env=env,
                                      capture_output=True, text=True, timeout=_TIMEOUT_S, check=False, cwd=ROOT)
                if proc.returncode != 0:
                    raise RuntimeError(f"phase probe for {command} failed: {proc.stderr[-800:]}")
                sample = json.loads(proc.stdout.strip().splitlines()[-1])
                sample["interpreter"] = interpreter_ms
                for name in PHASE_LABELS:
                    phases[command].setdefault(name, []).append(sample[name])
    return {
        "command_line": " ".join(Path(part).name for part in cli),
        "samples": samples,
        "end_to_end_s": {command: _summary(values) for command, values in end_to_end.items()},
        "phases_ms": {command: {name: statistics.median(values) for name, values in by_phase.items()}
                      for command, by_phase in phases.items()},
    }


def report(results: dict[str, Any]) -> bool:
    within = True
    print(f"`{results['command_line']} COMMAND` against a local stack, {results['samples']} samples each "
          f"(wall time of a fresh process; budget {BUDGET_S} s for rotate, doctor, repair)\n")
    print(f"{'command':<10}{'median':>9}{'min':>9}{'max':>9}   verdict")
    for command, figures in results["end_to_end_s"].items():
        verdict = ""
        if command in BUDGETED:
            ok = figures["median"] <= BUDGET_S
            within &= ok
            verdict = "within budget" if ok else "OVER BUDGET"
        print(f"{command:<10}{figures['median']:>8.2f}s{figures['min']:>8.2f}s{figures['max']:>8.2f}s   "
              f"{verdict}".rstrip())
    print("\nwhere the time goes (median ms per phase, each in a fresh interpreter):\n")
    commands = list(results["phases_ms"])
    print(f"{'phase':<56}" + "".join(f"{command:>9}" for command in commands))
    for name, label in PHASE_LABELS.items():
        print(f"{label:<56}" + "".join(f"{results['phases_ms'][c][name]:>9.0f}" for c in commands))
    totals = {c: sum(v for k, v in results["phases_ms"][c].items() if k != "work_again") for c in commands}
    print(f"{'sum (without the second run)':<56}" + "".join(f"{totals[c]:>9.0f}" for c in commands))
    return within


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5, help="runs per command (default 5)")
    parser.add_argument("--json-out", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    try:
        results = measure(max(1, args.samples))
    except Exception as exc:  # a benchmark reports what stopped it; the figures it has mean nothing
        print(f"could not measure: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    within = report(results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
