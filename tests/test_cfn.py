"""CloudFormation custom-resource responses, received by a real HTTPS server on 127.0.0.1 (cfn_responses.py).

CloudFormation waits for one PUT to the pre-signed ResponseURL; these tests play S3's part and check that the
answer always arrives, exactly once: on success, on an error, and before the Lambda times out.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cfn_responses import ResponseServer, custom_resource_event

from rotation import cfn
from rotation.exceptions import BootstrapError, InvalidEventError
from rotation_tools.local.lambda_context import LambdaContext


def succeed(_request: cfn.CustomResourceRequest) -> cfn.Outcome:
    return cfn.Outcome("rds-db-credentials/demo/reader", "created", {"Username": "reader"})


def fail_with_our_error(_request: cfn.CustomResourceRequest) -> cfn.Outcome:
    raise BootstrapError("table(s) public.nope do not exist in database 'appdb'")


def fail_unexpectedly(_request: cfn.CustomResourceRequest) -> cfn.Outcome:
    raise ValueError("connection string host=db password=hunter2")


@dataclass(frozen=True)
class Scenario:
    work: Callable[[cfn.CustomResourceRequest], cfn.Outcome]
    request_type: str
    physical_id: str | None
    status: str
    expected_physical_id: str
    reason_has: str
    reason_lacks: str = "hunter2"


SCENARIOS = {
    "create-succeeds": Scenario(succeed, "Create", None, "SUCCESS", "rds-db-credentials/demo/reader", "created"),
    "update-keeps-its-id-on-failure": Scenario(fail_with_our_error, "Update", "rds-db-credentials/demo/reader",
                                               "FAILED", "rds-db-credentials/demo/reader", "public.nope"),
    "failed-create-gets-a-not-created-id": Scenario(fail_with_our_error, "Create", None, "FAILED",
                                                    cfn.NOT_CREATED_PREFIX, "public.nope do not exist"),
    "unexpected-error-names-the-type-only": Scenario(fail_unexpectedly, "Create", None, "FAILED",
                                                     cfn.NOT_CREATED_PREFIX, "unexpected ValueError"),
}


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_every_outcome_is_answered_once(response_server: ResponseServer, scenario: Scenario) -> None:
    event = custom_resource_event(response_server.url, scenario.request_type, physical_id=scenario.physical_id)

    returned = cfn.serve(event, LambdaContext("bootstrap", timeout_seconds=60), scenario.work)

    answer = response_server.next_response()
    assert answer["Status"] == scenario.status == returned["Status"]
    assert answer["PhysicalResourceId"].startswith(scenario.expected_physical_id)
    assert scenario.reason_has in answer["Reason"]
    assert scenario.reason_lacks not in answer["Reason"]
    assert {k: answer[k] for k in ("StackId", "RequestId", "LogicalResourceId")} == {
        k: event[k] for k in ("StackId", "RequestId", "LogicalResourceId")
    }
    # S3 checks the signature against the headers it was signed with: no content type.
    assert response_server.headers[0].get("Content-Type", "") == ""
    response_server.assert_no_more()


def test_answers_failed_before_the_lambda_times_out(response_server: ResponseServer) -> None:
    release, finished = threading.Event(), threading.Event()

    def stuck(request: cfn.CustomResourceRequest) -> cfn.Outcome:
        release.wait(timeout=10)  # a database that does not answer, until the test lets go
        finished.set()
        return succeed(request)

    # 5.3 s left and a 5 s margin: the timer answers after ~0.3 s, while the work is still stuck.
    context = LambdaContext("bootstrap", timeout_seconds=5.3)
    worker = threading.Thread(target=cfn.serve, args=(custom_resource_event(response_server.url), context, stuck))
    worker.start()
    try:
        answer = response_server.next_response(timeout=5)
        assert not finished.is_set(), "the answer came from the timer, not from the work"
    finally:
        release.set()
        worker.join(timeout=5)

    assert answer["Status"] == "FAILED"
    assert "timeout" in answer["Reason"] and "Re-running is safe" in answer["Reason"]
    assert context.log_stream_name in answer["Reason"]
    assert finished.is_set()
    response_server.assert_no_more()  # the late SUCCESS is not sent: CloudFormation has its answer


def test_a_transient_s3_error_is_retried(response_server: ResponseServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cfn, "_PUT_BACKOFF_SECONDS", 0.01)
    response_server.fail_first = 1
    cfn.serve(custom_resource_event(response_server.url), None, succeed)
    assert response_server.next_response()["Status"] == "SUCCESS"


def test_a_long_reason_is_shortened_to_fit_cloudformations_limit(response_server: ResponseServer) -> None:
    def verbose(_request: cfn.CustomResourceRequest) -> cfn.Outcome:
        return cfn.Outcome("id", "granted SELECT on " + ", ".join(f"public.t{i}" for i in range(2000)))

    cfn.serve(custom_resource_event(response_server.url), None, verbose)

    answer = response_server.next_response()
    assert len(json.dumps(answer).encode()) <= cfn.MAX_RESPONSE_BYTES
    assert answer["Reason"].endswith("[truncated]")


INVALID_REQUESTS = {
    "unknown-request-type": ({"RequestType": "Replace"}, "RequestType"),
    "update-without-physical-id": ({"RequestType": "Update"}, "PhysicalResourceId"),
    "response-url-not-http": ({"ResponseURL": "file:///etc/passwd"}, "ResponseURL"),
    "response-url-plain-http": ({"ResponseURL": "http://127.0.0.1:9/cfn-response"}, "must be an https URL"),
    "properties-not-an-object": ({"ResourceProperties": ["x"]}, "ResourceProperties"),
}


@pytest.mark.parametrize(("change", "key"), INVALID_REQUESTS.values(), ids=INVALID_REQUESTS.keys())
def test_a_malformed_request_names_the_key(response_server: ResponseServer, change: dict, key: str) -> None:
    """Refused, and CloudFormation answered FAILED with the reason wherever the event has an https ResponseURL
    (else the stack would wait an hour for an answer)."""
    event = {**custom_resource_event(response_server.url), **change}
    with pytest.raises(InvalidEventError, match=key):
        cfn.serve(event, None, succeed)
    if event["ResponseURL"] == response_server.url:
        answer = response_server.next_response()
        assert answer["Status"] == "FAILED" and key in answer["Reason"]
        assert answer["RequestId"] == event["RequestId"]
    response_server.assert_no_more()


def test_the_response_url_stays_out_of_reprs(response_server: ResponseServer) -> None:
    request = cfn.CustomResourceRequest.parse(custom_resource_event(response_server.url))
    assert "Signature" not in repr(request)
