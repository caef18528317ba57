"""The results as Markdown tables (readable in a terminal, pasteable into the docs) and run-to-run deltas."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_artifact import REPO_ROOT
from bench_budgets import (
    AWS_DB_CONNECTIONS,
    AWS_SM_CALLS,
    DB_CONNECTIONS_PER_ROTATION,
    DESIGN_DB_CONNECTIONS,
    DESIGN_SM_CALLS,
    SM_CALLS_PER_ROTATION,
    Check,
)
from bench_coldstart import COLD_STAGE_LABELS
from bench_rotations import STEPS


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def _spread(stats: dict[str, Any] | None, low: str = "p10", high: str = "p90") -> str:
    if not stats or not stats.get("samples"):
        return "n/a"
    return f"{stats[low]:.1f}-{stats[high]:.1f}"


def _median(stats: dict[str, Any] | None) -> str:
    return f"{stats['median']:.1f}" if stats and stats.get("samples") else "n/a"


def machine_line(results: dict[str, Any]) -> str:
    machine = results["machine"]
    packages = machine["packages"]
    load = machine.get("load_average_1min", {})
    servers = ", ".join(f"{role} {version}" for role, version in machine["postgresql"].items())
    return (
        f"{machine['date']}; {machine['nproc']} CPUs ({machine['cpu']}), memory {machine['memory']}; "
        f"{machine['os']}; Python {machine['python']}; PostgreSQL {servers}; libpq {machine['libpq']}; "
        f"psycopg {packages['psycopg']}, boto3 {packages['boto3']}, aws-lambda-powertools "
        f"{packages['aws-lambda-powertools']}, moto {packages['moto']}; 1-minute load average "
        f"{load.get('before', '?')} before, {load.get('after', '?')} after"
    )


def _round_trip_table(results: dict[str, Any]) -> str:
    rows = []
    for strategy, section in results["strategies"].items():
        variant = section["variants"]["ssl-false"]
        measures = (
            ("Secrets Manager calls", variant["sm_calls"], DESIGN_SM_CALLS[strategy],
             SM_CALLS_PER_ROTATION[strategy], AWS_SM_CALLS[strategy]),
            ("DB connection attempts (psycopg.connect)", variant["db_connection_attempts"],
             DESIGN_DB_CONNECTIONS[strategy], DB_CONNECTIONS_PER_ROTATION[strategy],
             AWS_DB_CONNECTIONS[strategy]["ssl-false"]),
            ("DB connections accepted by the server", variant["server_connections"],
             DESIGN_DB_CONNECTIONS[strategy], DB_CONNECTIONS_PER_ROTATION[strategy], "-"),
        )
        for what, counts, design, budget, aws in measures:
            per_step = [counts["per_step"][step] for step in STEPS]
            total = counts["per_rotation"]
            if counts["per_rotation_min"] != total:
                total = f"{counts['per_rotation_min']}-{total} (varies)"
            rows.append([strategy, what, *per_step, total, "+".join(str(design[s]) for s in STEPS),
                         f"<= {budget}", aws])
    return table(["strategy", "counted", *STEPS, "per rotation", "design", "budget", "AWS's function"], rows)


def _operations_table(results: dict[str, Any]) -> str:
    rows = []
    for strategy, section in results["strategies"].items():
        operations = section["variants"]["ssl-false"]["sm_calls"]["operations"]
        rows.append([strategy, *(", ".join(f"{name}{f' x{n}' if n > 1 else ''}" for name, n in operations[step].items())
                                 for step in STEPS)])
    return table(["strategy", *STEPS], rows)


def _variant_table(results: dict[str, Any]) -> str:
    rows = []
    for strategy, section in results["strategies"].items():
        for key, variant in section["variants"].items():
            if not variant.get("available"):
                rows.append([strategy, variant["ssl_key"], "n/a", "n/a", "n/a", "n/a",
                             AWS_DB_CONNECTIONS[strategy].get(key, "-"), "n/a", "n/a", "n/a", "n/a", 0])
                continue
            wall = variant["wall_ms"]
            rows.append([
                strategy, variant["ssl_key"], variant["server"], variant["sm_calls"]["per_rotation"],
                variant["db_connection_attempts"]["per_rotation"], variant["server_connections"]["per_rotation"],
                AWS_DB_CONNECTIONS[strategy].get(key, "-"), _median(wall), _spread(wall), _spread(wall, "min", "max"),
                f"{wall['stdev']:.1f}", wall["samples"],
            ])
    return table(["strategy", "secret's ssl key", "server", "SM calls", "DB attempts", "server connections",
                  "AWS's function (DB)", "median ms", "p10-p90 ms", "min-max ms", "stdev ms", "timed"], rows)


def _import_table(cold: dict[str, Any]) -> str:
    labels = (
        ("handler", "`import rotation.handler`"),
        ("handler_plus_psycopg", "... then `import psycopg` (setSecret, testSecret)"),
        ("handler_plus_tracer", "... then Powertools `Tracer()` (aws_xray_sdk)"),
        ("handler_from_artifact_no_pyc", "`import rotation.handler` from the artifact, no .pyc"),
    )
    rows = []
    for key, label in labels:
        stats = cold["import_ms"].get(key)
        rows.append([label, _median(stats), _spread(stats, "min", "max"), stats["samples"] if stats else 0])
    for module, loaded in cold["imported_by_handler"].items():
        rows.append([f"{module} imported by `import rotation.handler`?", "yes" if loaded else "no", "", ""])
    return table(["fresh interpreter", "median ms", "min-max ms", "samples"], rows)


def cold_path_tables(paths: dict[str, Any], *, top: int = 12) -> str:
    """The project's cold path against the reference's, stage by stage, then by top-level module."""
    rows = []
    wall = paths["wall_ms"]
    for stage in ("import", "client", "driver"):
        ours_label, reference_label = COLD_STAGE_LABELS[stage]
        rows.append([ours_label, _median(wall["project"][stage]), _spread(wall["project"][stage]),
                     _median(wall["project-deps-no-pyc"][stage]), reference_label, _median(wall["reference"][stage]),
                     _spread(wall["reference"][stage]), paths["ratio"][stage], paths["ratio_cpu"][stage],
                     paths["ratio_deps_no_pyc"][stage], wall["project"][stage]["samples"]])
    whole = paths["whole_process_ms"]
    rows.append(["whole process (interpreter start-up to exit)", _median(whole["project"]),
                 _spread(whole["project"]), _median(whole["project-deps-no-pyc"]), "whole process",
                 _median(whole["reference"]), _spread(whole["reference"]), paths["ratio_whole_process"], "",
                 paths["ratio_whole_process_deps_no_pyc"], whole["project"]["samples"]])
    stages = table(["this project", "median ms", "p10-p90 ms", "dependencies without .pyc, median ms",
                    "reference (AWS's functions)", "median ms", "p10-p90 ms", "ratio", "ratio of CPU time",
                    "ratio, dependencies without .pyc", "samples"], rows)
    by_module = paths["import_self_ms_by_top_level"]
    columns = ("project", "project-deps-no-pyc", "reference")
    names = sorted(set().union(*(by_module[c] for c in columns)),
                   key=lambda name: -max(by_module[c].get(name, 0.0) for c in columns))[:top]
    module_rows = [[name, *(f"{by_module[c].get(name, 0.0):.1f}" for c in columns)] for name in names]
    module_rows.append(["all modules", *(f"{sum(by_module[c].values()):.1f}" for c in columns)])
    modules = table(["top-level module (-X importtime self time, median ms)", "this project",
                     "dependencies without .pyc", "reference"], module_rows)
    return stages + "\n\n" + modules + "\n\nCPU time: user + system time of the process (time.process_time)."


def _first_invocation_table(results: dict[str, Any]) -> str:
    rows = []
    for strategy, section in results["strategies"].items():
        first = section["first_invocation"]
        rows.append([strategy, "first invocation of each step", _median(first["import_ms"]),
                     *(_median(first["first_call_ms"][step]) for step in STEPS),
                     _median(first["first_rotation_ms"])])
        rows.append([strategy, "later invocations", "-",
                     *(_median(first["later_call_ms"][step]) for step in STEPS),
                     _median(first["later_rotation_ms"])])
    return table(["strategy", "median ms", "import", *STEPS, "full rotation"], rows)


def _throughput_table(results: dict[str, Any]) -> str:
    rows = []
    for strategy, section in results["strategies"].items():
        for run in section["throughput"]:
            rows.append([strategy, run["workers"], run["rotations"], f"{run['wall_s']:.2f}",
                         f"{run['rotations_per_s']:.1f}", _median(run["latency_ms"]), f"{run['latency_ms']['p90']:.1f}",
                         run["sm_calls_per_rotation"], run["db_connection_attempts_per_rotation"]])
    return table(["strategy", "workers", "rotations", "wall s", "rotations/s", "latency median ms",
                  "latency p90 ms", "SM calls/rotation", "DB attempts/rotation"], rows)


def _short_path(path: str) -> str:
    absolute = Path(path)
    return str(absolute.relative_to(REPO_ROOT)) if absolute.is_relative_to(REPO_ROOT) else path


def _artifact_table(artifact: dict[str, Any]) -> str:
    if not artifact.get("available"):
        return table(["artifact", "unzipped", "zipped", "files", "source"],
                     [["RotationFunction", "n/a", "n/a", "n/a", artifact["reason"]]])
    largest = ", ".join(f"{name} {mib}" for name, mib in artifact["largest_mib"].items())
    stale = artifact["rotation_files_differing_from_working_tree"]
    source = artifact["source"] + (f"; {stale} rotation/ files differ from the working tree" if stale else "")
    return table(["artifact", "unzipped MiB", "zipped MiB", "files", "largest parts (MiB)", "source"],
                 [[_short_path(artifact["path"]), artifact["unzipped_mib"], artifact["zipped_mib"],
                   artifact["files"], largest, source]])


def budget_table(checks: list[Check]) -> str:
    def verdict(check: Check) -> str:
        if check.ok is None:
            return f"n/a: {check.why}" if check.why else "n/a"
        return "ok" if check.ok else "EXCEEDED" + (f": {check.why}" if check.why else "")

    return table(["budget", "limit", "measured", "result"],
                 [[check.name, check.limit, check.measured, verdict(check)] for check in checks])


def render(results: dict[str, Any], checks: list[Check]) -> str:
    settings = results["settings"]
    sections = [
        "## Rotation benchmark",
        machine_line(results),
        f"{settings['rounds']} timed rotations after {settings['warmup']} warm-up per row; throughput "
        f"{settings['rotations_per_worker']} rotations per worker; cold start over {settings['samples']} fresh "
        "interpreter(s). Secrets Manager is moto over HTTP in the same process: count the calls, not their latency.",
        "### Round trips per step (secret with \"ssl\": false)",
        _round_trip_table(results),
        "Secrets Manager operations per step:",
        _operations_table(results),
        "### Per full rotation, by the secret's ssl key (in-process wall time of the four invocations)",
        _variant_table(results),
        "### Cold start: import time",
        _import_table(results["cold_start"]),
        "### Cold start: this project against the reference (fresh interpreter, no .pyc of the function's "
        "modules, as in /var/task)",
        cold_path_tables(results["cold_start"]["cold_paths"]),
        "### Cold start: first invocation versus later ones (fresh interpreter, median)",
        _first_invocation_table(results),
        "### Throughput: concurrent workers (threads), each rotating its own secret",
        _throughput_table(results),
        "### Lambda artifact (sam build)",
        _artifact_table(results["artifact"]),
        "### Budgets",
        budget_table(checks),
    ]
    return "\n\n".join(sections) + "\n"


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The figures worth comparing between two runs, by a stable name."""
    figures: dict[str, float] = {}
    for strategy, section in results.get("strategies", {}).items():
        for key, variant in section.get("variants", {}).items():
            if variant.get("available"):
                figures[f"{strategy} {key} SM calls"] = variant["sm_calls"]["per_rotation"]
                figures[f"{strategy} {key} DB attempts"] = variant["db_connection_attempts"]["per_rotation"]
                figures[f"{strategy} {key} median ms"] = variant["wall_ms"]["median"]
                figures[f"{strategy} {key} p90 ms"] = variant["wall_ms"]["p90"]
        first = section.get("first_invocation")
        if first:
            figures[f"{strategy} first rotation ms"] = first["first_rotation_ms"]["median"]
        for run in section.get("throughput", []):
            figures[f"{strategy} rotations/s with {run['workers']} worker(s)"] = run["rotations_per_s"]
    for key, stats in results.get("cold_start", {}).get("import_ms", {}).items():
        if stats:
            figures[f"import {key} ms"] = stats["median"]
    cold_paths = results.get("cold_start", {}).get("cold_paths", {})
    for path, stages in cold_paths.get("wall_ms", {}).items():
        for stage, stats in stages.items():
            figures[f"cold path {path} {stage} ms"] = stats["median"]
    for stage, ratio in cold_paths.get("ratio", {}).items():
        if ratio is not None:
            figures[f"cold path ratio {stage}"] = ratio
    artifact = results.get("artifact", {})
    if artifact.get("available"):
        figures["artifact unzipped MiB"] = artifact["unzipped_mib"]
    return figures


def comparison(old: dict[str, Any], new: dict[str, Any]) -> str:
    before, after = headline(old), headline(new)
    rows = []
    for name in [*after, *(name for name in before if name not in after)]:
        old_value, new_value = before.get(name), after.get(name)
        if old_value is None or new_value is None:
            rows.append([name, old_value if old_value is not None else "-",
                         new_value if new_value is not None else "-", "", ""])
            continue
        delta = new_value - old_value
        percent = f"{delta / old_value * 100:+.1f}%" if old_value else ""
        rows.append([name, old_value, new_value, f"{delta:+.2f}", percent])
    date_old = old.get("machine", {}).get("date", "?")
    date_new = new.get("machine", {}).get("date", "?")
    return f"### Compared with the run of {date_old} (this run: {date_new})\n\n" + table(
        ["figure", "old", "new", "delta", "delta %"], rows
    ) + "\n"
