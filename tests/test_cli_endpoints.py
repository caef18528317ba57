"""Messages that fit where the endpoint is: a local server that is not running is not a missing VPC route, and a
secret ARN names its own region."""

from __future__ import annotations

import json
import os
import socket
import uuid

import pytest
from helpers import closed_port

from rotation.events import Step
from rotation.exceptions import SecretsManagerUnreachable
from rotation.handler import rotate
from rotation_tools.cli import main
from rotation_tools.local.lambda_context import LambdaContext


def _this_machines_address() -> str | None:
    """A non-loopback address of this machine (no packet is sent), or None when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only selects the outgoing interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_an_unreachable_remote_endpoint_names_the_vpc_route_fix(monkeypatch):
    """The same failure at an address that is not this machine's loopback: the fix is the private subnet's."""
    address = _this_machines_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to stand for a remote endpoint")
    with socket.socket() as sock:
        sock.bind((address, 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused at once
        for name in ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "SECRETS_MANAGER_ENDPOINT"):
            monkeypatch.setenv(name, f"http://{address}:{port}")
        event = {"Step": Step.CREATE.value, "SecretId": "arn:aws:secretsmanager:us-east-1:123456789012:secret:x",
                 "ClientRequestToken": str(uuid.uuid4())}

        with pytest.raises(SecretsManagerUnreachable, match="interface VPC endpoint for secretsmanager") as raised:
            rotate(event, LambdaContext("endpoint-test", timeout_seconds=30))

    assert "is the local server" not in str(raised.value)


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        pytest.param("rotate", [], id="rotate"),
        pytest.param("doctor", [], id="doctor"),
        pytest.param("status", [], id="status"),
    ],
)
def test_an_unreachable_loopback_endpoint_asks_whether_the_local_server_runs(command, extra, capsys, monkeypatch):
    with closed_port() as port:
        for name in ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "SECRETS_MANAGER_ENDPOINT"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
        argv = [command, *([] if command == "status" else ["--secret-id", "some-secret"]), *extra]

        code = main(argv)

    out, err = capsys.readouterr()
    said = " ".join((out + err).split())  # the doctor's table wraps long lines
    assert code == 1
    assert "is the local server running" in said
    assert "VPC endpoint" not in said and "NAT gateway" not in said


def test_a_secret_arn_supplies_the_region_when_none_is_configured(make_app_user, store_secret, capsys, monkeypatch):
    arn = store_secret(make_app_user())
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)

    code = main(["doctor", "--secret-id", arn, "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["secret_arn"] == arn
    assert "AWS_REGION" not in os.environ and "AWS_DEFAULT_REGION" not in os.environ, "only for the command"


def test_a_secret_name_without_a_region_still_names_the_fix(capsys, monkeypatch):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)

    code = main(["doctor", "--secret-id", "just-a-name", "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 1 and "AWS_REGION" in json.dumps(report)
