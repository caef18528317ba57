"""`rotation status`: the fleet view, against moto over HTTP (Secrets Manager and CloudWatch Logs).

A fleet of one function's secrets in every state a person must tell apart: healthy, stuck (AWSPENDING left on
a version that is not AWSCURRENT), overdue (its window passed without a rotation), plus secrets of another
function that must not appear. The function's log group holds an error line about the stuck secret.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import boto3
import pytest
from helpers import closed_port

from rotation_tools.cli import main

DAY = 86400


@pytest.fixture
def fleet(sm, make_app_user, cluster, store_secret) -> dict[str, Any]:
    name = f"status-test-{uuid.uuid4().hex[:8]}"
    function_arn = f"arn:aws:lambda:{sm.region}:123456789012:function:{name}"
    other_arn = f"arn:aws:lambda:{sm.region}:123456789012:function:someone-else-{uuid.uuid4().hex[:6]}"
    now = time.time()

    def secret(label: str, *, days: int = 30, last_rotated: float, function: str = function_arn,
               masterarn: bool = False) -> str:
        value = make_app_user()
        if masterarn:
            value["masterarn"] = store_secret(cluster)
        arn = store_secret(value, name=f"{name}/{label}")
        sm.enable_rotation(arn, lambda_arn=function, automatically_after_days=days)
        sm.set_rotation_dates(arn, last_rotated=last_rotated)
        return arn

    arns = {
        "healthy": secret("healthy", last_rotated=now - DAY),
        "healthy-alternating": secret("healthy-alternating", last_rotated=now - 2 * DAY, masterarn=True),
        "stuck": secret("stuck", last_rotated=now - DAY),
        "overdue": secret("overdue", days=1, last_rotated=now - 5 * DAY),
        "other-function": secret("other-function", days=1, last_rotated=now - 5 * DAY, function=other_arn),
    }
    sm.stage_pending(arns["stuck"])
    logs = boto3.client("logs", endpoint_url=sm.endpoint_url, region_name=sm.region)
    group = f"/aws/lambda/{name}"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="2026/11/30/[$LATEST]0")
    millis = int(now * 1000)
    lines = [
        {"level": "INFO", "message": "createSecret: stored", "secret_id": arns["healthy"]},
        {"level": "ERROR", "message": "cannot reach 10.0.0.5:5432: timed out", "error": "DatabaseUnreachable",
         "secret_id": arns["stuck"]},
        {"level": "INFO", "message": "setSecret: password already set", "secret_id": arns["stuck"]},
    ]
    logs.put_log_events(logGroupName=group, logStreamName="2026/11/30/[$LATEST]0", logEvents=[
        {"timestamp": millis - 60_000 + i, "message": json.dumps(line)} for i, line in enumerate(lines)])
    return {"name": name, "function_arn": function_arn, "arns": arns}


def _status(capsys, *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["status", *argv, "--json"])
    out, err = capsys.readouterr()
    assert out, err
    return code, json.loads(out)


def _by_label(document: dict[str, Any], fleet: dict[str, Any]) -> dict[str, dict[str, Any]]:
    labels = {arn: label for label, arn in fleet["arns"].items()}
    return {labels[secret["arn"]]: secret for secret in document["secrets"] if secret["arn"] in labels}


@pytest.mark.parametrize("function", ["arn", "name"], ids=["by-function-arn", "by-function-name"])
def test_the_fleet_view_tells_healthy_stuck_and_overdue_apart(function, fleet, capsys):
    selector = fleet["function_arn"] if function == "arn" else fleet["name"]

    code, document = _status(capsys, "--function", selector)

    secrets = _by_label(document, fleet)
    assert code == 1 and document["ok"] is False
    assert set(secrets) == {"healthy", "healthy-alternating", "stuck", "overdue"}, "only this function's secrets"
    assert {label: secret["states"] for label, secret in secrets.items()} == {
        "healthy": ["healthy"], "healthy-alternating": ["healthy"], "stuck": ["stuck"], "overdue": ["overdue"]}
    assert secrets["stuck"]["pending_version"] and secrets["stuck"]["pending_since"]
    assert secrets["overdue"]["overdue_since"] and secrets["overdue"]["next_rotation"] < document["checked_at"]
    assert secrets["healthy"]["next_rotation"] > document["checked_at"] and secrets["healthy"]["last_rotated"]
    assert {label: secret["strategy"] for label, secret in secrets.items()} == {
        "healthy": "single-user", "healthy-alternating": "alternating-users", "stuck": "single-user",
        "overdue": "single-user"}
    assert secrets["stuck"]["last_failure"]["message"] == "DatabaseUnreachable: cannot reach 10.0.0.5:5432: timed out"
    assert secrets["healthy"]["last_failure"] == {"readable": True, "at": None, "message": None, "reason": None}
    assert document["counts"] == {"secrets": 4, "healthy": 2, "stuck": 1, "overdue": 1, "rotation-disabled": 0}


def test_the_table_names_what_needs_attention_and_how_to_act(fleet, capsys):
    code = main(["status", "--function", fleet["function_arn"]])

    out = capsys.readouterr().out
    assert code == 1
    assert out.splitlines()[0].split() == ["SECRET", "STRATEGY", "LAST", "ROTATED", "NEXT", "ROTATION", "STATE",
                                           "LAST", "FAILURE"]
    assert f"{fleet['name']}/stuck: AWSPENDING is stuck on version" in out
    assert f"rotation repair --secret-id {fleet['arns']['stuck']}" in out
    assert f"{fleet['name']}/overdue: rotation was due" in out
    assert "DatabaseUnreachable: cannot reach 10.0.0.5:5432" in out
    assert out.rstrip().endswith("4 secrets rotated by " + fleet["function_arn"] + ": 2 healthy, 1 stuck, 1 overdue, "
                                 "0 with rotation disabled")
    assert "password" not in out, "metadata only: nothing of a value is shown"


def test_a_healthy_fleet_exits_0(sm, make_app_user, store_secret, capsys):
    function = f"healthy-only-{uuid.uuid4().hex[:8]}"
    arn = store_secret(make_app_user())
    sm.enable_rotation(arn, lambda_arn=f"arn:aws:lambda:{sm.region}:123456789012:function:{function}")
    sm.set_rotation_dates(arn, last_rotated=time.time())

    code, document = _status(capsys, "--function", function)

    assert (code, document["ok"], [s["states"] for s in document["secrets"]]) == (0, True, [["healthy"]])
    assert document["secrets"][0]["last_failure"]["reason"] == f"no log group /aws/lambda/{function}"


def test_unreadable_logs_are_said_so_and_do_not_hide_the_states(fleet, capsys, monkeypatch):
    with closed_port() as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL_LOGS", f"http://127.0.0.1:{port}")
        code, document = _status(capsys, "--function", fleet["function_arn"])

    secrets = _by_label(document, fleet)
    assert code == 1 and secrets["stuck"]["states"] == ["stuck"]
    assert all(secret["last_failure"]["readable"] is False for secret in secrets.values())
    assert "EndpointConnectionError" in secrets["stuck"]["last_failure"]["reason"]


def test_without_a_function_every_rotation_enabled_secret_is_listed(fleet, sm, make_app_user, store_secret,
                                                                    capsys):
    not_rotated = store_secret(make_app_user())

    _, document = _status(capsys, "--no-logs")

    listed = {secret["arn"] for secret in document["secrets"]}
    assert set(fleet["arns"].values()) <= listed and not_rotated not in listed
