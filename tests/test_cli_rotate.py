"""`rotation rotate`: "rotate immediately" played locally, against real PostgreSQL and the moto server.

The command runs in this process (``rotation_tools.cli.main``) with the environment the fixtures point at moto; each
scenario checks what a user cares about: which credentials log in afterwards, where the staging labels are,
and what the command said.
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import uuid
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import assert_refused_insert, can_login

from rotation import wiring
from rotation.config import Settings
from rotation.events import Step
from rotation.secrets_store import SecretsManagerStore
from rotation_tools.cli import main
from rotation_tools.commands.rotate import explain_failure
from rotation_tools.local.driver import StepResult, rotate_now

SINGLE, ALTERNATING = "single-user", "alternating-users"


@pytest.fixture
def master_arn(cluster: dict[str, Any], store_secret) -> str:
    return store_secret(cluster, name=f"rds!cluster-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def user_secret(make_app_user, store_secret, master_arn):
    """Factory: (arn, secret) of a fresh app user, with ``masterarn`` for alternating users."""

    def factory(strategy: str = SINGLE, **overrides: Any) -> tuple[str, dict[str, Any]]:
        secret = make_app_user()
        if strategy == ALTERNATING:
            secret["masterarn"] = master_arn
        return store_secret({**secret, **overrides}), secret

    return factory


def labels(sm, arn: str) -> dict[str, set[str]]:
    """label -> the version ids carrying it (a well-formed secret has one per label)."""
    found: dict[str, set[str]] = {}
    for version, stages in sm.stages(arn).items():
        for stage in stages:
            found.setdefault(stage, set()).add(version)
    return found


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["rotate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- rotating -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    strategy: str
    #: After the rotation, the previous credentials...
    previous_logs_in: bool
    username_suffix: str


ROTATIONS = [
    pytest.param(Outcome(SINGLE, previous_logs_in=False, username_suffix=""),
                 id="single-user: same user, new password, old password refused"),
    pytest.param(Outcome(ALTERNATING, previous_logs_in=True, username_suffix="_clone"),
                 id="alternating-users: the clone logs in and the original keeps working"),
]


@pytest.mark.parametrize("outcome", ROTATIONS)
def test_rotate_end_to_end(sm, pg, user_secret, capsys, monkeypatch, outcome):
    monkeypatch.setenv("ROTATION_STRATEGY", outcome.strategy)
    arn, original = user_secret(outcome.strategy)
    old_version = sm.stages(arn).popitem()[0]

    code, out, err = run_cli(capsys, "--secret-id", arn)

    assert code == 0, err
    new = sm.value(arn, "AWSCURRENT")
    assert new["username"] == original["username"] + outcome.username_suffix
    assert new["password"] != original["password"]
    assert can_login(new)
    assert_refused_insert(new)  # the new login has the user's privileges, not more
    assert can_login(original) is outcome.previous_logs_in
    token = labels(sm, arn)["AWSCURRENT"].pop()
    assert labels(sm, arn)["AWSPREVIOUS"] == {old_version}
    assert labels(sm, arn).get("AWSPENDING", {token}) == {token}, "no AWSPENDING left on another version"
    for step in ("createSecret", "setSecret", "testSecret", "finishSecret"):
        assert re.search(rf"^  {step} +\d+\.\d ms  \S", out, re.MULTILINE), f"{step} reported with its duration"
    assert f"AWSCURRENT is now version {token}" in out
    assert new["password"] not in out + err
    assert new["password"] not in pg.server_log(), "the server received a verifier, never the password"


def test_consecutive_rotations_each_start_cleanly(sm, user_secret, capsys):
    arn, _ = user_secret()

    first = json.loads(run_cli(capsys, "--secret-id", arn, "--json")[1])
    second = json.loads(run_cli(capsys, "--secret-id", arn, "--json")[1])

    assert first["ok"] and second["ok"]
    assert labels(sm, arn)["AWSCURRENT"] == {second["token"]}
    assert labels(sm, arn)["AWSPREVIOUS"] == {first["token"]}
    assert can_login(sm.value(arn, "AWSCURRENT"))
    assert not can_login(sm.value(arn, "AWSPREVIOUS"))


def test_json_report_lists_each_step_with_its_timing(sm, user_secret, capsys):
    arn, _ = user_secret()

    code, out, _ = run_cli(capsys, "--secret-id", arn, "--json")

    report = json.loads(out)
    assert code == 0
    assert report["ok"] is True
    assert report["secret_arn"] == arn
    assert report["strategy"] == SINGLE
    assert [step["step"] for step in report["steps"]] == ["createSecret", "setSecret", "testSecret", "finishSecret"]
    assert all(step["ok"] and step["seconds"] >= 0 for step in report["steps"])
    assert labels(sm, arn)["AWSCURRENT"] == {report["token"]}


# --- failing, and resuming ------------------------------------------------------------------------------


class TcpRelay:
    """A local port that refuses connections while closed and forwards them to the real server while open.

    It plays the network path to the database: a security group without the rule, then fixed (or the reverse).
    """

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._stop = threading.Event()

    def open(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        threading.Thread(target=self._accept, args=(self._listener, self._stop), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            # shutdown() first: close() alone leaves the port accepting until the blocked accept() returns.
            with suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self._target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def network_path(pg):
    relay = TcpRelay(pg.port)
    yield relay
    relay.close()


def test_unreachable_database_fails_cleanly_and_resumes_with_the_token(sm, user_secret, network_path, capsys):
    arn, original = user_secret(port=network_path.port)
    current_before = labels(sm, arn)["AWSCURRENT"]

    code, out, err = run_cli(capsys, "--secret-id", arn)

    assert code == 1
    assert "failed at setSecret: DatabaseUnreachable" in err
    assert f"127.0.0.1:{network_path.port}" in err, "the message names the address that did not answer"
    assert "createSecret: stored new credentials" in err, "what was done"
    token = re.search(r"version (\S+) is labelled AWSPENDING and holds the new credentials", err).group(1)
    assert f"rotation rotate --secret-id {arn} --token {token}" in err, "how to resume"
    assert labels(sm, arn)["AWSCURRENT"] == current_before
    assert labels(sm, arn)["AWSPENDING"] == {token}
    assert can_login(original), "AWSCURRENT still works: setSecret never reached the database"

    network_path.open()
    code, out, err = run_cli(capsys, "--secret-id", arn, "--token", token)

    assert code == 0, err
    assert "AWSPENDING already holds a value (a retry); kept as is" in out, "createSecret reused the pending version"
    assert labels(sm, arn)["AWSCURRENT"] == {token}
    new = sm.value(arn, "AWSCURRENT")
    assert can_login(new)
    assert not can_login({**original, "port": network_path.port})


def test_json_report_of_a_failure_says_what_is_pending(sm, user_secret, network_path, capsys):
    arn, _ = user_secret(port=network_path.port)

    code, out, _ = run_cli(capsys, "--secret-id", arn, "--json")

    report = json.loads(out)
    assert code == 1
    assert report["ok"] is False
    assert report["failed_step"] == "setSecret"
    assert report["error"]["code"] == "DatabaseUnreachable"
    assert [step["ok"] for step in report["steps"]] == [True, False]
    assert report["pending"] == {"current_version": labels(sm, arn)["AWSCURRENT"].pop(), "pending_has_value": True}
    assert report["resume_command"] == f"rotation rotate --secret-id {arn} --token {report['token']}"


def test_network_lost_after_set_secret_warns_that_the_single_user_password_changed(sm, user_secret, network_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("ROTATION_STRATEGY", SINGLE)
    arn, original = user_secret(port=network_path.port)
    network_path.open()
    settings = Settings.from_env()
    store = SecretsManagerStore(sm.client())

    def lose_the_network_after_set_secret(result: StepResult) -> None:
        if result.step is Step.SET:
            network_path.close()

    report = rotate_now(store, lambda: wiring.database(settings), settings, arn,
                        on_step=lose_the_network_after_set_secret)
    explanation = io.StringIO()
    explain_failure(report, explanation)

    assert (report.failed.step, report.failed.error) == (Step.TEST, "DatabaseUnreachable"), report.failed.action
    assert report.pending.pending_has_value is True
    assert "warning: single-user rotation already set the new password" in explanation.getvalue()
    network_path.open()
    assert not can_login(original), "the warning is true: AWSCURRENT's password was replaced"

    resumed = rotate_now(store, lambda: wiring.database(settings), settings, arn, token=report.token)

    assert resumed.ok, resumed.failed
    assert [step.action for step in resumed.steps][:2] == [
        "AWSPENDING already holds a value (a retry); kept as is",
        "AWSPENDING already logs in (an earlier attempt set it); nothing to change",
    ]
    assert can_login(sm.value(arn, "AWSCURRENT"))


# --- refusing -------------------------------------------------------------------------------------------


def test_refuses_while_a_previous_rotation_is_incomplete(sm, user_secret, capsys):
    arn, original = user_secret()
    unfinished = sm.stage_pending(arn)
    before = sm.stages(arn)

    code, _, err = run_cli(capsys, "--secret-id", arn)

    assert code == 1
    assert "A previous rotation isn't complete" in err
    assert f"--token {unfinished}" in err and "rotation repair" in err, "both ways out are named"
    assert sm.stages(arn) == before, "nothing was changed"
    assert can_login(original)


def test_token_of_the_unfinished_rotation_completes_it(sm, user_secret, capsys):
    arn, original = user_secret()
    unfinished = sm.stage_pending(arn)  # the service staged it, then the function never ran

    code, _, err = run_cli(capsys, "--secret-id", arn, "--token", unfinished)

    assert code == 0, err
    assert labels(sm, arn)["AWSCURRENT"] == {unfinished}
    assert can_login(sm.value(arn, "AWSCURRENT"))
    assert not can_login(original)


def test_unknown_secret_is_an_error_not_a_crash(capsys):
    code, _, err = run_cli(capsys, "--secret-id", f"no-such-secret-{uuid.uuid4().hex}")

    assert code == 1
    assert "ResourceNotFoundException" in err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no --secret-id"),
        pytest.param(["--secret-id", "x", "--token", "too-short"], id="token shorter than RotateSecret allows"),
        pytest.param(["--secret-id", "x", "--bogus"], id="unknown option"),
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["rotate", *argv])

    assert exited.value.code == 2
    assert "usage: rotation" in capsys.readouterr().err
