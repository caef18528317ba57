"""A local stand-in for the S3 bucket behind CloudFormation's ResponseURL, and custom-resource events to send.

HTTPS, as S3's pre-signed URLs are: the function answers no other scheme.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import ssl
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rotation_tools.local.certificates import make_certificates


@dataclass
class ResponseServer:
    """Collects the bodies PUT to it; ``fail_first`` answers that many requests with HTTP 500 first."""

    url: str
    received: queue.Queue = field(default_factory=queue.Queue)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail_first: int = 0

    def next_response(self, timeout: float = 10) -> dict[str, Any]:
        return self.received.get(timeout=timeout)

    def assert_no_more(self, wait: float = 0.3) -> None:
        with pytest.raises(queue.Empty):
            self.received.get(timeout=wait)


@contextlib.contextmanager
def serve_responses() -> Iterator[ResponseServer]:
    """A local stand-in for the S3 bucket behind ResponseURL."""
    state = ResponseServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if state.fail_first > 0:
                state.fail_first -= 1
                self.send_response(500)
                self.end_headers()
                return
            state.headers.append(dict(self.headers))
            state.received.put(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with tempfile.TemporaryDirectory(prefix="cfn-response-") as certs:
        # HTTPS, as S3's pre-signed URLs: the function answers no other scheme. The clients trust this CA for the
        # block's duration (OpenSSL reads SSL_CERT_FILE whenever a default context is made).
        ca_file, cert_file, key_file = make_certificates(Path(certs))
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        # A pre-signed URL carries its signature in the query string, as S3's do.
        state.url = f"https://localhost:{server.server_port}/cfn-response?X-Amz-Signature=not-a-real-signature"
        saved = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = str(ca_file)
        try:
            yield state
        finally:
            if saved is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = saved
            server.shutdown()
            server.server_close()


def custom_resource_event(response_url: str, request_type: str = "Create", properties: dict | None = None,
                          physical_id: str | None = None, **extra: Any) -> dict[str, Any]:
    event = {
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:bootstrap",
        "ResponseURL": response_url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/app-db-users/0c4e7a90",
        "RequestId": str(uuid.uuid4()),
        "ResourceType": "Custom::ReadOnlyUser",
        "LogicalResourceId": "ReaderUser",
        "ResourceProperties": {"ServiceToken": "arn:aws:lambda:...", **(properties or {})},
        **extra,
    }
    if physical_id is not None:
        event["PhysicalResourceId"] = physical_id
    return event
