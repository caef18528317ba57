"""The budgets (round trips, artifact size, cold start) and the check that the benchmark exits non-zero on.

Budgets are counts and sizes, so they are deterministic: the smoke test asserts the same ones. Times are
reported, never budgeted here: they depend on the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from bench_lab import ALTERNATING_USERS, SINGLE_USER

SM_CALLS_PER_ROTATION = {SINGLE_USER: 11, ALTERNATING_USERS: 12}
DB_CONNECTIONS_PER_ROTATION = {SINGLE_USER: 2, ALTERNATING_USERS: 3}
ARTIFACT_MIB = 20
#: A new container's cold path (imports, client, driver) at most this fraction of the reference's
#: (``import boto3``, a boto3 client, the driver: what AWS's functions pay), median against median.
COLD_START_RATIO = 0.7
#: A time budget judged on fewer fresh interpreters than this is reported, not failed: one sample on a shared
#: machine says nothing (the smoke test runs with one).
MIN_SAMPLES_FOR_TIME_BUDGET = 3

#: The protocol's limit as designed (rotation/protocol.py's docstring), step by step.
DESIGN_SM_CALLS = {
    SINGLE_USER: {"createSecret": 4, "setSecret": 3, "testSecret": 2, "finishSecret": 2},
    ALTERNATING_USERS: {"createSecret": 4, "setSecret": 4, "testSecret": 2, "finishSecret": 2},
}
DESIGN_DB_CONNECTIONS = {
    SINGLE_USER: {"createSecret": 0, "setSecret": 1, "testSecret": 1, "finishSecret": 0},
    ALTERNATING_USERS: {"createSecret": 0, "setSecret": 2, "testSecret": 1, "finishSecret": 0},
}

#: AWS's own rotation functions as measured in /work/shared/BRIEF.md, for the comparison column only.
AWS_SM_CALLS = {SINGLE_USER: 14, ALTERNATING_USERS: 14}
AWS_DB_CONNECTIONS = {
    SINGLE_USER: {"ssl-false": 3, "no-ssl-key": 6},
    ALTERNATING_USERS: {"ssl-false": 4, "no-ssl-key": 8},
}


@dataclass(frozen=True)
class Check:
    name: str
    limit: str
    measured: str
    #: None when the quantity could not be measured here (no TLS server, no artifact): reported, not failed.
    ok: bool | None
    why: str = ""


def _over_design(counts: dict[str, Any], design: dict[str, int], operations: dict[str, dict[str, int]] | None) -> str:
    """Which steps exceed the design target, and with which calls: the first thing to read when a budget fails."""
    parts = []
    for step, target in design.items():
        measured = counts["per_step"][step]
        if measured > target:
            detail = ""
            if operations:
                detail = " (" + ", ".join(f"{name} x{n}" for name, n in operations[step].items()) + ")"
            parts.append(f"{step} made {measured}, design {target}{detail}")
    return "; ".join(parts)


def _count_checks(strategy: str, variant_key: str, variant: dict[str, Any]) -> Iterator[Check]:
    where = f"{strategy}, {variant['ssl_key']}"
    if not variant.get("available"):
        for what in ("Secrets Manager calls", "DB connection attempts"):
            yield Check(f"{where}: {what} per rotation", "-", "n/a", None, variant.get("reason", ""))
        return
    sm_limit, db_limit = SM_CALLS_PER_ROTATION[strategy], DB_CONNECTIONS_PER_ROTATION[strategy]
    sm = variant["sm_calls"]
    yield Check(f"{where}: Secrets Manager calls per rotation", f"<= {sm_limit}", str(sm["per_rotation"]),
                sm["per_rotation"] <= sm_limit, _over_design(sm, DESIGN_SM_CALLS[strategy], sm.get("operations")))
    for key, what in (("db_connection_attempts", "DB connection attempts (psycopg.connect)"),
                      ("server_connections", "DB connections accepted by the server")):
        counts = variant[key]
        yield Check(f"{where}: {what} per rotation", f"<= {db_limit}", str(counts["per_rotation"]),
                    counts["per_rotation"] <= db_limit, _over_design(counts, DESIGN_DB_CONNECTIONS[strategy], None))


def _throughput_checks(strategy: str, runs: list[dict[str, Any]]) -> Iterator[Check]:
    for run in runs:
        workers = run["workers"]
        where = f"{strategy}, {workers} concurrent workers" if workers > 1 else f"{strategy}, 1 worker"
        sm_limit, db_limit = SM_CALLS_PER_ROTATION[strategy], DB_CONNECTIONS_PER_ROTATION[strategy]
        yield Check(f"{where}: Secrets Manager calls per rotation", f"<= {sm_limit}",
                    str(run["sm_calls_per_rotation"]), run["sm_calls_per_rotation"] <= sm_limit)
        yield Check(f"{where}: DB connection attempts per rotation", f"<= {db_limit}",
                    str(run["db_connection_attempts_per_rotation"]),
                    run["db_connection_attempts_per_rotation"] <= db_limit)


def _import_checks(cold_start: dict[str, Any]) -> Iterator[Check]:
    for module, loaded in cold_start["imported_by_handler"].items():
        chain = cold_start["first_importers"].get(module) or []
        why = ("imported via " + " <- ".join(reversed(chain))) if loaded and chain else ""
        yield Check(f"`import rotation.handler` leaves {module} unimported", "not imported",
                    "imported" if loaded else "not imported", not loaded, why)


def cold_start_checks(cold_start: dict[str, Any]) -> Iterator[Check]:
    """Each stage of the cold path against the reference's, on the larger of the wall-time and CPU-time ratios.

    Wall time is what a cold start costs; on a shared machine it also holds the time spent waiting for a CPU,
    which scales with the work done and so flatters whichever side does more. The CPU-time ratio is what an
    idle machine would show. A budget met on one and not the other is not met.
    """
    paths = cold_start.get("cold_paths")
    if not paths:
        return
    samples = paths["wall_ms"]["project"]["import"]["samples"]
    labels = {"import": "`import rotation.handler` / `import boto3`",
              "client": "cold path to createSecret's first request (imports + client) / reference",
              "driver": "cold path to setSecret's first request (imports + client + psycopg) / reference"}
    for stage, label in labels.items():
        name = f"{label}, fresh interpreter, rotation/ without .pyc"
        wall_ratio, cpu_ratio = paths["ratio"][stage], paths["ratio_cpu"][stage]
        if wall_ratio is None or cpu_ratio is None:
            yield Check(name, f"<= {COLD_START_RATIO}", "n/a", None, "not measured")
            continue
        ours, reference = paths["wall_ms"]["project"][stage]["median"], paths["wall_ms"]["reference"][stage]["median"]
        measured = f"{max(wall_ratio, cpu_ratio)} (wall {wall_ratio}: {ours:.0f} / {reference:.0f} ms; CPU {cpu_ratio})"
        if samples < MIN_SAMPLES_FOR_TIME_BUDGET:
            yield Check(name, f"<= {COLD_START_RATIO}", measured, None,
                        f"{samples} sample(s): a time budget needs at least {MIN_SAMPLES_FOR_TIME_BUDGET}")
            continue
        ok = max(wall_ratio, cpu_ratio) <= COLD_START_RATIO
        yield Check(name, f"<= {COLD_START_RATIO}", measured, ok, "" if ok else _slowest_modules(paths))


def _slowest_modules(paths: dict[str, Any]) -> str:
    """Where the project's import time goes, and how it compares, for a failed cold-start budget."""
    ours, reference = paths["import_self_ms_by_top_level"]["project"], paths["import_self_ms_by_top_level"]["reference"]
    top = list(ours.items())[:5]
    return "largest imports: " + ", ".join(f"{name} {ms:.0f} ms (reference {reference.get(name, 0.0):.0f})"
                                           for name, ms in top)


def _artifact_check(artifact: dict[str, Any]) -> Check:
    name = "sam build artifact (RotationFunction), unzipped"
    if not artifact.get("available"):
        return Check(name, f"<= {ARTIFACT_MIB} MiB", "n/a", None, artifact.get("reason", ""))
    largest = ", ".join(f"{top} {mib} MiB" for top, mib in artifact["largest_mib"].items())
    ok = artifact["unzipped_mib"] <= ARTIFACT_MIB
    return Check(name, f"<= {ARTIFACT_MIB} MiB", f"{artifact['unzipped_mib']} MiB", ok,
                 "" if ok else f"largest parts: {largest}")


def check_budgets(results: dict[str, Any]) -> list[Check]:
    checks: list[Check] = []
    for strategy, section in results["strategies"].items():
        for variant_key, variant in section["variants"].items():
            checks.extend(_count_checks(strategy, variant_key, variant))
        checks.extend(_throughput_checks(strategy, section["throughput"]))
    checks.extend(_import_checks(results["cold_start"]))
    checks.extend(cold_start_checks(results["cold_start"]))
    checks.append(_artifact_check(results["artifact"]))
    return checks


def budgets_hold(checks: list[Check]) -> bool:
    """Unmeasured quantities (ok is None) are reported as n/a, not failed: only an exceeded budget fails."""
    return all(check.ok is not False for check in checks)


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(check) for check in checks]
