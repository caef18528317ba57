"""benchmarks/bench_storm.py runs end to end, small: every rotation succeeds, nothing is lost, figures printed.

The storm's own figures (200 secrets, 16 workers, max_connections 20) come from running the benchmark; this only
proves the harness: it plays the service, checks every secret afterwards and reports what it promises.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.database


def test_the_storm_benchmark_rotates_every_secret_and_reports(tmp_path: Path) -> None:
    json_out = tmp_path / "storm.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_storm.py"), "--secrets", "6", "--workers", "2",
         "--max-connections", "12", "--app-connections", "2", "--retry-pause", "0.1", "--json-out", str(json_out)],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )
    assert proc.returncode == 0, f"storm exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    figures = json.loads(json_out.read_text())
    assert figures["rotations"] == 6
    assert figures["failed_after_retries"] == 0
    assert figures["lost_or_wrong"] == []
    assert figures["sampler"]["error"] is None and figures["sampler"]["samples"] > 0
    assert figures["peak_function_connections"] <= 2, "two workers, one connection each at a time"
    assert all(record["succeeded"] for record in figures["records"])
    for line in ("failed rotations after the service's retries | 0", "peak connections held by the function"):
        assert line in proc.stdout
