"""CloudFormation custom resources: parse the request, do the work, always answer the ResponseURL.

CloudFormation waits for a PUT to the pre-signed ResponseURL; a function that raises, or is killed by its own
timeout, without answering leaves the stack "in progress" for an hour. :func:`serve` therefore answers in
every case: SUCCESS with the work's result, FAILED with the error's message, and FAILED from a timer thread a
few seconds before the Lambda timeout if the work has not finished by then. Exactly one answer is sent,
whichever comes first; a later one would be ignored by CloudFormation and only confuse the log.

The ResponseURL is a bearer credential for this one answer (its query string is a signature), so it is kept
out of logs and reprs; only its host is ever mentioned.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from rotation.exceptions import InvalidEventError, RotationError
from rotation.observability import logger

SUCCESS, FAILED = "SUCCESS", "FAILED"
CREATE, UPDATE, DELETE = "Create", "Update", "Delete"
REQUEST_TYPES = (CREATE, UPDATE, DELETE)

#: Seconds before the Lambda timeout at which the timer answers FAILED: enough for one PUT to S3.
TIMEOUT_MARGIN_SECONDS = 5.0
#: CloudFormation rejects response bodies over 4096 bytes; the reason is what gets shortened.
MAX_RESPONSE_BYTES = 4096
#: PhysicalResourceId of a resource whose Create failed: the Delete that CloudFormation sends during the
#: rollback recognises it and removes nothing (a failed Create must not remove what existed before it).
NOT_CREATED_PREFIX = "not-created-"

_PUT_ATTEMPTS = 3
_PUT_TIMEOUT_SECONDS = 10
_PUT_BACKOFF_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class CustomResourceRequest:
    request_type: str
    #: Pre-signed S3 URL: whoever holds it can answer for this resource. Never logged.
    response_url: str = field(repr=False)
    stack_id: str
    request_id: str
    logical_resource_id: str
    resource_type: str
    physical_resource_id: str | None
    properties: Mapping[str, Any]
    old_properties: Mapping[str, Any] | None = None

    @staticmethod
    def matches(event: Any) -> bool:
        return isinstance(event, Mapping) and "RequestType" in event and "ResponseURL" in event

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> CustomResourceRequest:
        def optional_text(key: str) -> str | None:
            value = event.get(key)
            if value is None:
                return None
            if not isinstance(value, str) or not value:
                raise InvalidEventError(f"CloudFormation request key {key!r} must be a non-empty string")
            return value

        def text(key: str) -> str:
            value = optional_text(key)
            if value is None:
                raise InvalidEventError(f"CloudFormation request key {key!r} must be a non-empty string")
            return value

        request_type = text("RequestType")
        if request_type not in REQUEST_TYPES:
            raise InvalidEventError(
                f"CloudFormation request has RequestType {request_type!r}; expected one of {', '.join(REQUEST_TYPES)}"
            )
        url = text("ResponseURL")
        if urlsplit(url).scheme != "https":
            # CloudFormation's are pre-signed S3 URLs, always https; anything else is not CloudFormation asking.
            raise InvalidEventError("CloudFormation request key 'ResponseURL' must be an https URL")
        properties = event.get("ResourceProperties", {})
        old_properties = event.get("OldResourceProperties")
        for key, value in (("ResourceProperties", properties), ("OldResourceProperties", old_properties)):
            if value is not None and not isinstance(value, Mapping):
                raise InvalidEventError(f"CloudFormation request key {key!r} must be an object")
        return cls(
            request_type=request_type,
            response_url=url,
            stack_id=text("StackId"),
            request_id=text("RequestId"),
            logical_resource_id=text("LogicalResourceId"),
            resource_type=optional_text("ResourceType") or "",
            # Only a Create has no physical id yet.
            physical_resource_id=optional_text("PhysicalResourceId") if request_type == CREATE
            else text("PhysicalResourceId"),
            properties=properties,
            old_properties=old_properties,
        )

    @classmethod
    def salvage(cls, event: Mapping[str, Any]) -> CustomResourceRequest | None:
        """What can be read of an event that does not parse, to answer FAILED with; None without an https
        ResponseURL (then there is nobody to answer, and nowhere we would send an answer)."""
        def text(key: str) -> str:
            value = event.get(key)
            return value if isinstance(value, str) else ""

        url = text("ResponseURL")
        if urlsplit(url).scheme != "https":
            return None
        request_type = text("RequestType")
        return cls(
            request_type=request_type if request_type in REQUEST_TYPES else CREATE,
            response_url=url,
            stack_id=text("StackId"),
            request_id=text("RequestId"),
            logical_resource_id=text("LogicalResourceId"),
            resource_type=text("ResourceType"),
            physical_resource_id=text("PhysicalResourceId") or None,
            properties={},
        )

    @property
    def failure_physical_id(self) -> str:
        """The id to answer with when the work fails: the existing one, or the "nothing created" marker."""
        return self.physical_resource_id or f"{NOT_CREATED_PREFIX}{self.logical_resource_id}-{self.request_id}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the work reports back on success."""

    physical_resource_id: str
    reason: str
    #: Values for Fn::GetAtt. Never put a secret here: CloudFormation shows them in its console.
    data: Mapping[str, str] = field(default_factory=dict)


def put_response(url: str, body: bytes) -> None:
    """PUT the response body to the pre-signed URL, retrying transient failures."""
    # The pre-signed URL was signed without a content type: sending one would break the signature.
    request = urllib.request.Request(  # noqa: S310 - the scheme was checked to be https when parsing
        url, data=body, method="PUT", headers={"Content-Type": "", "Content-Length": str(len(body))}
    )
    host = urlsplit(url).hostname
    for attempt in range(1, _PUT_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(request, timeout=_PUT_TIMEOUT_SECONDS) as reply:  # noqa: S310
                reply.read()
            return
        except urllib.error.HTTPError as exc:
            # 4xx: the URL expired or the body was refused; repeating the same request cannot help.
            if exc.code < 500 or attempt == _PUT_ATTEMPTS:
                raise RotationError(f"CloudFormation response to {host} was refused: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            if attempt == _PUT_ATTEMPTS:
                raise RotationError(f"cannot send the CloudFormation response to {host}: {exc}") from exc
        time.sleep(_PUT_BACKOFF_SECONDS * attempt)


def response_body(request: CustomResourceRequest, status: str, reason: str, physical_id: str,
                  data: Mapping[str, str] | None = None) -> bytes:
    document = {
        "Status": status,
        "Reason": reason,
        "PhysicalResourceId": physical_id,
        "StackId": request.stack_id,
        "RequestId": request.request_id,
        "LogicalResourceId": request.logical_resource_id,
        "NoEcho": False,
        "Data": dict(data or {}),
    }
    body = json.dumps(document).encode()
    excess = len(body) - MAX_RESPONSE_BYTES
    if excess > 0:
        document["Reason"] = reason[: max(0, len(reason) - excess - 20)] + " [truncated]"
        body = json.dumps(document).encode()
    return body


class Responder:
    """Sends the single answer CloudFormation waits for, from whichever thread gets there first."""

    def __init__(self, request: CustomResourceRequest,
                 send: Callable[[str, bytes], None] = put_response) -> None:
        self._request = request
        self._send = send
        self._lock = threading.Lock()
        self.status: str | None = None

    def respond(self, status: str, reason: str, physical_id: str, data: Mapping[str, str] | None = None) -> bool:
        """Send the answer unless one was already sent; True when this call sent it."""
        with self._lock:
            if self.status is not None:
                return False
            body = response_body(self._request, status, reason, physical_id, data)
            try:
                self._send(self._request.response_url, body)
            except RotationError as exc:
                # Left unsent, so the deadline timer may still try (a later, different answer beats none).
                logger.error(str(exc), extra={"error": "CloudFormationResponseFailed"})
                return False
            self.status = status
            logger.info(f"CloudFormation response sent: {status}",
                        extra={"physical_resource_id": physical_id, "cfn_reason": reason})
            return True


def start_deadline_timer(context: Any, on_deadline: Callable[[], None],
                         margin_seconds: float = TIMEOUT_MARGIN_SECONDS) -> threading.Timer | None:
    """Call ``on_deadline`` ``margin_seconds`` before the Lambda times out (None without a Lambda context)."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    delay = max(0.0, remaining() / 1000 - margin_seconds)
    timer = threading.Timer(delay, on_deadline)
    timer.daemon = True
    timer.start()
    return timer


Work = Callable[[CustomResourceRequest], Outcome]


def serve(event: Mapping[str, Any], context: Any, work: Work,
          margin_seconds: float = TIMEOUT_MARGIN_SECONDS,
          send: Callable[[str, bytes], None] = put_response) -> dict[str, Any]:
    """Run ``work`` for a custom-resource event and answer CloudFormation whatever happens.

    Does not raise after answering: Lambda retries a failed asynchronous invocation, and CloudFormation has
    already been told. The returned dict (status and reason) is for logs and local callers.
    """
    try:
        request = CustomResourceRequest.parse(event)
    except InvalidEventError as exc:
        # CloudFormation waits an hour for an answer it will never get unless we send one: answer FAILED
        # wherever the event lets us, then report the problem as usual.
        salvaged = CustomResourceRequest.salvage(event)
        if salvaged is not None:
            Responder(salvaged, send).respond(FAILED, str(exc), salvaged.failure_physical_id)
        raise
    responder = Responder(request, send)
    log_stream = getattr(context, "log_stream_name", None)
    see_log = f"; details in CloudWatch log stream {log_stream}" if log_stream else ""

    def on_deadline() -> None:
        sent = responder.respond(
            FAILED,
            f"{request.request_type} did not finish before the function's timeout{see_log}. "
            "Re-running is safe: a new attempt finishes whatever this one started",
            request.failure_physical_id,
        )
        if sent:
            logger.error("answered FAILED to CloudFormation: the function is about to time out",
                         extra={"error": "Timeout"})

    timer = start_deadline_timer(context, on_deadline, margin_seconds)
    try:
        outcome = work(request)
    except RotationError as exc:
        responder.respond(FAILED, str(exc), request.failure_physical_id)
        return {"Status": responder.status, "Reason": str(exc)}
    except Exception as exc:
        # The message of an unexpected exception is not ours to vet for secrets: name the type only.
        reason = f"unexpected {type(exc).__name__}{see_log}"
        logger.exception("unexpected failure", extra={"error": type(exc).__name__})
        responder.respond(FAILED, reason, request.failure_physical_id)
        return {"Status": responder.status, "Reason": reason}
    finally:
        if timer is not None:
            timer.cancel()
    if not responder.respond(SUCCESS, outcome.reason, outcome.physical_resource_id, outcome.data):
        logger.warning("the work finished after CloudFormation had been answered; the next Create/Update will "
                       "find everything in place", extra={"physical_resource_id": outcome.physical_resource_id})
    return {"Status": responder.status, "Reason": outcome.reason,
            "PhysicalResourceId": outcome.physical_resource_id, "Data": dict(outcome.data)}
