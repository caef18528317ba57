"""A container's cold start shows in its logs: the first invocation says so and how long the handler's import took.

Each case runs in a fresh interpreter, which is what a new Lambda container is. The invocations are refused
events (no AWS call, no database), because the log lines, not the outcome, are what this is about.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_TWO_INVOCATIONS = """
import json, sys
from rotation import handler
for _ in range(2):
    try:
        handler.rotate({"Step": "notAStep", "SecretId": "arn:aws:secretsmanager:us-east-1:1:secret:x",
                        "ClientRequestToken": "t"}, None)
    except Exception:
        pass
"""


@pytest.fixture
def two_invocations_in_a_new_container(aws_env) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", _TWO_INVOCATIONS], capture_output=True, text=True,
                          check=True, timeout=120)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # One error line per invocation (the metrics documents carry no "level").
    return [line for line in lines if line.get("level") == "ERROR"]


def test_the_first_invocation_reports_the_cold_start_and_the_init_time(two_invocations_in_a_new_container):
    first, _ = two_invocations_in_a_new_container
    assert first["cold_start"] is True
    assert 0 < first["init_ms"] < 60_000


def test_later_invocations_are_warm(two_invocations_in_a_new_container):
    _, second = two_invocations_in_a_new_container
    assert second["cold_start"] is False
    assert "init_ms" not in second
