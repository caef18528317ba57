"""The benchmark (benchmarks/rotation_bench.py) runs end to end, writes every section, and its budgets hold.

One short run (one timed rotation per row, one fresh interpreter per cold-start figure) against the benchmark's
own real PostgreSQL, TLS PostgreSQL and moto server. Budgets are counts, so they are asserted here; timings
depend on the machine and never are. The artifact is left to tests/test_packaging.py, which builds it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
SINGLE, ALTERNATING = "single-user", "alternating-users"
SSL_VARIANTS = ("ssl-false", "no-ssl-key", "ssl-true")
SM_CALLS_BUDGET = {SINGLE: 11, ALTERNATING: 12}
DB_CONNECTIONS_BUDGET = {SINGLE: 2, ALTERNATING: 3}


@pytest.fixture(scope="module")
def bench_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    json_out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "rotation_bench.py"), "--rounds", "1", "--warmup", "1", "--workers", "2",
         "--rotations-per-worker", "1", "--samples", "1", "--skip-artifact", "--json-out", str(json_out)],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )
    assert proc.returncode == 0, f"benchmark exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(json_out.read_text())


@pytest.fixture(scope="module")
def bench_budgets(bench_results: dict[str, Any]) -> Any:
    """The benchmark's own budget module, for checking edited copies of the real results."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_budgets
    finally:
        sys.path.remove(str(BENCHMARKS))
    return bench_budgets


def test_results_hold_every_section(bench_results: dict[str, Any]) -> None:
    assert {"machine", "settings", "strategies", "cold_start", "artifact", "budgets", "budgets_hold"} <= set(
        bench_results)
    assert set(bench_results["strategies"]) == {SINGLE, ALTERNATING}
    for section in bench_results["strategies"].values():
        assert set(section["variants"]) == set(SSL_VARIANTS)
        assert section["variants"]["ssl-false"]["wall_ms"]["samples"] == 1
        assert [run["workers"] for run in section["throughput"]] == [1, 2]
        assert section["first_invocation"]["first_call_ms"]["setSecret"]["samples"] == 1
    assert bench_results["cold_start"]["import_ms"]["handler"]["samples"] == 1
    assert bench_results["artifact"] == {"available": False, "reason": "--skip-artifact"}
    assert bench_results["budgets_hold"] is True


@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
@pytest.mark.parametrize("ssl_variant", SSL_VARIANTS)
def test_round_trips_per_rotation_within_budget(bench_results, strategy, ssl_variant) -> None:
    variant = bench_results["strategies"][strategy]["variants"][ssl_variant]
    if not variant["available"]:
        # Same rule as the pg_tls fixture: CI jobs that must exercise TLS set REQUIRE_TLS_TESTS=1.
        if os.environ.get("REQUIRE_TLS_TESTS") == "1":
            pytest.fail(f"REQUIRE_TLS_TESTS=1 but the benchmark had no TLS server: {variant['reason']}")
        pytest.skip(f"no TLS server on this machine: {variant['reason']}")
    assert variant["sm_calls"]["per_rotation"] <= SM_CALLS_BUDGET[strategy]
    assert variant["db_connection_attempts"]["per_rotation"] <= DB_CONNECTIONS_BUDGET[strategy]
    assert variant["server_connections"]["per_rotation"] <= DB_CONNECTIONS_BUDGET[strategy]


@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
def test_round_trips_hold_under_concurrency(bench_results, strategy) -> None:
    for run in bench_results["strategies"][strategy]["throughput"]:
        assert run["sm_calls_per_rotation"] <= SM_CALLS_BUDGET[strategy]
        assert run["db_connection_attempts_per_rotation"] <= DB_CONNECTIONS_BUDGET[strategy]


def test_handler_import_defers_psycopg_and_the_tracer(bench_results) -> None:
    assert bench_results["cold_start"]["imported_by_handler"] == {"psycopg": False, "aws_xray_sdk": False}
    loaded_by = {step for section in bench_results["strategies"].values()
                 for step in section["first_invocation"]["psycopg_first_loaded_by"]}
    assert loaded_by == {"setSecret"}, "createSecret must not need the database driver"


# --- the budget check itself, on edited copies of the real results ---------------------------------------------

def _one_more_set_secret_call(results: dict[str, Any]) -> None:
    counts = results["strategies"][SINGLE]["variants"]["ssl-false"]["sm_calls"]
    counts["per_step"]["setSecret"] += 1
    counts["per_rotation"] += 1
    counts["operations"]["setSecret"]["GetSecretValue"] += 1


def _tls_fallback_connection(results: dict[str, Any]) -> None:
    counts = results["strategies"][ALTERNATING]["variants"]["ssl-false"]["server_connections"]
    counts["per_step"]["testSecret"] += 1
    counts["per_rotation"] += 1


def _psycopg_imported_at_import(results: dict[str, Any]) -> None:
    results["cold_start"]["imported_by_handler"]["psycopg"] = True
    results["cold_start"]["first_importers"]["psycopg"] = ["rotation/handler.py:12"]


def _slow_cold_start(results: dict[str, Any]) -> None:
    """Five samples (enough to judge a time), the handler's import at 0.9x the reference's wall and CPU time."""
    paths = results["cold_start"]["cold_paths"]
    for measure in ("wall_ms", "cpu_ms"):
        for stats in paths[measure]["project"].values():
            stats["samples"] = 5
    paths["ratio"]["import"] = paths["ratio_cpu"]["import"] = 0.9
    for stage in ("client", "driver"):
        paths["ratio"][stage] = paths["ratio_cpu"][stage] = 0.5
    paths["import_self_ms_by_top_level"]["project"] = {"botocore": 150.0, "rotation": 24.0}
    paths["import_self_ms_by_top_level"]["reference"] = {"botocore": 150.0, "boto3": 20.0}


def _artifact(mib: float) -> Any:
    def edit(results: dict[str, Any]) -> None:
        results["artifact"] = {"available": True, "unzipped_mib": mib, "largest_mib": {"psycopg_binary.libs": 11.4}}

    return edit


@pytest.mark.parametrize(
    ("edit", "failing_check", "explanation"),
    [
        pytest.param(_one_more_set_secret_call, "single-user, \"ssl\": false: Secrets Manager calls per rotation",
                     "setSecret made 4, design 3 (DescribeSecret x1, GetSecretValue x3)", id="sm-call-over-budget"),
        pytest.param(_tls_fallback_connection,
                     "alternating-users, \"ssl\": false: DB connections accepted by the server per rotation",
                     "testSecret made 2, design 1", id="server-sees-an-extra-connection"),
        pytest.param(_psycopg_imported_at_import, "`import rotation.handler` leaves psycopg unimported",
                     "imported via rotation/handler.py:12", id="psycopg-imported-by-the-handler"),
        pytest.param(_artifact(20.5), "sam build artifact (RotationFunction), unzipped", "psycopg_binary.libs 11.4",
                     id="artifact-over-20-mib"),
        pytest.param(_slow_cold_start, "`import rotation.handler` / `import boto3`, fresh interpreter, rotation/ "
                     "without .pyc", "botocore 150 ms (reference 150), rotation 24 ms (reference 0)",
                     id="handler-import-over-0.7x-the-reference"),
    ],
)
def test_an_exceeded_budget_fails_the_run_and_says_why(bench_results, bench_budgets, edit, failing_check,
                                                       explanation) -> None:
    results = copy.deepcopy(bench_results)
    edit(results)
    checks = bench_budgets.check_budgets(results)
    assert [check.name for check in checks if check.ok is False] == [failing_check]
    assert explanation in next(check.why for check in checks if check.ok is False)
    assert not bench_budgets.budgets_hold(checks)


def test_an_unmeasured_artifact_is_reported_not_failed(bench_results, bench_budgets) -> None:
    checks = bench_budgets.check_budgets(bench_results)
    artifact = next(check for check in checks if check.name.startswith("sam build artifact"))
    assert (artifact.ok, artifact.measured) == (None, "n/a")
    assert bench_budgets.budgets_hold(checks)
