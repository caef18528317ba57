"""`rotation demo`: the whole story runs on real components, proves what it claims, and leaves nothing behind.

The demo starts its own PostgreSQL and moto server (that is what it demonstrates), so these tests do not use
the shared servers. Leftovers are looked for where they would be: each subprocess gets its own TMPDIR, which
must be empty afterwards, and no process may still name it on its command line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from helpers import can_login

import rotation.database
from rotation_tools.cli import main
from rotation_tools.commands.demo import wants_colour
from rotation_tools.demo import MASK, READER, READER_CLONE, DemoOptions, run_demo
from rotation_tools.local.postgres import find_bindir

#: Figures the summary promises (README): step timings and counts.
EXPECTED_FIGURES = (
    "postgres_start_ms", "secrets_manager_start_ms", "bootstrap_ms",
    "single_user_rotation_createSecret_ms", "single_user_rotation_setSecret_ms",
    "single_user_rotation_testSecret_ms", "single_user_rotation_finishSecret_ms", "single_user_rotation_total_ms",
    "alternating_rotation_1_total_ms", "alternating_rotation_2_total_ms",
    "reader_instance_start_ms", "reader_endpoint_rotation_setSecret_ms", "reader_endpoint_rotation_testSecret_ms",
    "reader_endpoint_rotation_total_ms",
    "passwords_checked", "server_log_lines", "password_statements", "scram_logins", "function_log_lines",
    "checks_passed",
)
#: Checks whose presence (and success) is the point of the story, by step.
KEY_CHECKS = {
    1: "the master is not a superuser, as on Aurora",
    4: "INSERT is refused with 'permission denied for table films' (SQLSTATE 42501)",
    5: "the old password (AWSPREVIOUS) is refused",
    6: f"{READER_CLONE} was created by the first rotation",
    7: "the old password (AWSPREVIOUS) is refused on the reader",
    8: "no password appears in the server logs",
}
#: The story's acts, in order (the reader-endpoint act is 7, before the log proof).
ACTS = list(range(1, 9))
STORY_TIMEOUT = 120


# ============================================================================================ helpers


def demo_env(tmpdir: Path, **extra: str) -> dict[str, str]:
    """The environment of a demo subprocess: its own TMPDIR, and AWS settings that must not be followed."""
    tmpdir.mkdir(exist_ok=True)
    return {
        **os.environ,
        "TMPDIR": str(tmpdir),
        "PYTHONIOENCODING": "utf-8",
        # A profile that exists nowhere: if the demo let boto3 see it, every call would fail.
        "AWS_PROFILE": "must-not-be-used-by-the-demo",
        **extra,
    }


def processes_naming(path: Path) -> list[str]:
    """Command lines of running processes that mention ``path`` (a postmaster still using its data dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in text:
            found.append(text.strip())
    return found


def assert_nothing_left(tmpdir: Path) -> None:
    deadline = time.monotonic() + 10  # a postmaster may take a moment to exit after pg_ctl returned
    while processes_naming(tmpdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_naming(tmpdir) == []
    assert sorted(p.name for p in tmpdir.iterdir()) == []


@pytest.fixture
def demo_process(tmp_path: Path) -> Iterator[Any]:
    """Factory: start ``python -m rotation_tools demo ARGS`` in the background; killed if a test leaves it running."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rotation_tools", "demo", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
            env=demo_env(tmp_path / "tmp"),
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the demo's own cleanup, so the test run leaves nothing behind
            proc.wait(timeout=60)


def read_until(proc: subprocess.Popen[str], marker: str) -> str:
    """Stdout up to and including the first line containing ``marker``."""
    seen = []
    deadline = time.monotonic() + STORY_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the demo ended before {marker!r}: {''.join(seen)}{proc.stderr.read()}")
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} within {STORY_TIMEOUT}s")


def check_names(document: dict[str, Any]) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for check in document["checks"]:
        names.setdefault(check["step"], []).append(check["name"])
    return names


# ============================================================================================ the story


def test_the_story_in_process_verifies_every_claim(capsys: pytest.CaptureFixture[str]) -> None:
    environment_before = dict(os.environ)
    adapter_before = rotation.database.PostgresDatabase

    exit_code = main(["demo", "--json"])

    document = json.loads(capsys.readouterr().out)
    failed = [check for check in document["checks"] if not check["passed"]]
    assert (exit_code, document["ok"], failed, document["skipped_steps"]) == (0, True, [], [])
    assert [step["number"] for step in document["steps"]] == ACTS
    names = check_names(document)
    for step, name in KEY_CHECKS.items():
        assert name in names[step]
    figures = document["figures"]
    assert set(EXPECTED_FIGURES) <= set(figures)
    assert figures["checks_failed"] == 0 and figures["checks_passed"] == len(document["checks"])
    assert figures["insert_refused_sqlstate"] == "42501"
    assert figures["clone_created"] == READER_CLONE
    assert figures["awscurrent_user"] == READER  # two alternating rotations bring it back
    assert figures["reader_insert_refused_sqlstate"] == "25006", "the reader refuses writes as a hot standby does"
    assert figures["passwords_checked"] >= 7
    assert figures["alter_role_statements"] >= 3
    # The secrets are shown, masked.
    shown = "\n".join(line for step in document["steps"] for line in step["lines"])
    assert f'"password": "{MASK}"' in shown
    # Everything it started is gone, and the caller's environment is as it was.
    assert document["resources"] is None, "nothing it started still exists: the report lists none of it"
    assert document["cleaned_up"] and not any(Path(path).exists() for path in document["cleaned_up"])
    assert dict(os.environ) == environment_before
    assert rotation.database.PostgresDatabase is adapter_before, "the endpoint names were mapped for the act only"


def test_the_story_as_a_command_exits_0_and_leaves_nothing_behind(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"

    result = subprocess.run(
        [sys.executable, "-m", "rotation_tools", "demo"], capture_output=True, text=True, encoding="utf-8",
        env=demo_env(tmpdir), timeout=STORY_TIMEOUT, check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for number in ACTS:
        assert f"\n{number}. " in out
    assert "Summary: ✓ every check passed" in out
    assert "✗" not in out
    assert "\033[" not in out, "no colour when stdout is not a terminal"
    arn_lines = [line for line in out.splitlines() if "arn:aws:secretsmanager:" in line]
    assert arn_lines and not [line for line in arn_lines if line.rstrip().endswith(":")], "an ARN ends where it ends"
    assert "Traceback" not in result.stderr
    assert_nothing_left(tmpdir)


def test_a_failing_step_fails_the_demo_and_stops_the_story(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The function's own configuration error: the bootstrap (step 3) cannot generate a password.
    monkeypatch.setenv("PASSWORD_LENGTH", "many")

    exit_code = main(["demo", "--json"])

    document = json.loads(capsys.readouterr().out)
    failed = [(check["step"], check["detail"]) for check in document["checks"] if not check["passed"]]
    assert exit_code == 1 and document["ok"] is False
    assert len(failed) == 1 and failed[0][0] == 3 and "PASSWORD_LENGTH" in failed[0][1]
    assert len(document["skipped_steps"]) == len(ACTS) - 3
    assert document["resources"] is None
    assert document["cleaned_up"] and not any(Path(path).exists() for path in document["cleaned_up"])


# ============================================================================================ the reader endpoint


@dataclass
class ReaderAct:
    """What act 7 left behind, looked at from outside while the demo's servers still run."""

    endpoint: dict[str, Any]
    #: The reader secret's versions with the reader endpoint as host: before the rotation, and the rotation's.
    before: dict[str, Any]
    rotated: dict[str, Any]
    rotated_stages: list[str]
    current: dict[str, Any]
    logs_in: dict[str, bool]
    in_recovery: bool
    master_insert_sqlstate: str | None
    writer_log: str
    reader_log: str


def look_at_the_reader_act(resources: Any) -> ReaderAct:
    reader = resources.reader
    client = boto3.session.Session().client(
        "secretsmanager", endpoint_url=resources.endpoint_url, region_name=resources.region,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    versions = client.list_secret_version_ids(SecretId=resources.reader_secret_arn, IncludeDeprecated=True)["Versions"]
    history = [(version.get("VersionStages", []), json.loads(client.get_secret_value(
        SecretId=resources.reader_secret_arn, VersionId=version["VersionId"])["SecretString"])) for version in versions]
    on_reader = [(stages, value) for stages, value in history if value["host"] == reader.reader_endpoint]
    current = next(value for stages, value in history if "AWSCURRENT" in stages)
    rotated_stages, rotated = next((stages, value) for stages, value in on_reader
                                   if value["password"] == current["password"])
    before = next(value for _, value in on_reader if value["password"] != current["password"])
    # The endpoints' Aurora names resolve only inside the demo: libpq gets their addresses as hostaddr.
    where = {"reader": {"hostaddr": reader.reader_address}, "writer": {"hostaddr": reader.cluster_address}}
    logs_in = {f"{which} password on the {server}": can_login(secret, **hostaddr)
               for which, secret in (("new", rotated), ("old", before)) for server, hostaddr in where.items()}
    master = json.loads(client.get_secret_value(SecretId=resources.master_secret_arn,
                                                VersionStage="AWSCURRENT")["SecretString"])
    with psycopg.connect(host=reader.reader_endpoint, hostaddr=reader.reader_address, port=reader.endpoint_port,
                         dbname="appdb", user=master["username"], password=master["password"], sslmode="disable",
                         connect_timeout=5, autocommit=True) as conn:
        recovering = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        try:
            conn.execute("INSERT INTO films (code, title, did) VALUES ('XX001', 'Nope', 1)")
            master_insert_sqlstate = None
        except psycopg.Error as exc:
            master_insert_sqlstate = exc.sqlstate
    # Each server logs to server.log in its working directory.
    return ReaderAct(
        endpoint={"name": reader.reader_endpoint, "port": reader.endpoint_port}, before=before, rotated=rotated,
        rotated_stages=rotated_stages, current=current, logs_in=logs_in, in_recovery=recovering,
        master_insert_sqlstate=master_insert_sqlstate,
        writer_log=(Path(resources.workdir) / "server.log").read_text(),
        reader_log=(Path(reader.workdir) / "server.log").read_text(),
    )


def test_the_reader_endpoint_act_rotated_a_secret_whose_host_is_a_real_hot_standby() -> None:
    seen: list[ReaderAct] = []

    report = run_demo(DemoOptions(), while_running=lambda report: seen.append(look_at_the_reader_act(report.resources)))

    assert report.ok, [check for check in report.checks if not check.passed]
    act, = seen
    # The secret pointed at the reader endpoint, and the rotation's version still does (the host is never
    # rewritten); afterwards the demo put it back on the server's address, with the new password.
    assert (act.before["host"], act.before["port"]) == (act.endpoint["name"], act.endpoint["port"])
    assert ".cluster-ro-" in act.endpoint["name"] and "masterarn" not in act.before
    assert act.rotated["host"] == act.endpoint["name"] and act.rotated["username"] == READER
    assert "AWSPREVIOUS" in act.rotated_stages and act.current["password"] == act.rotated["password"]
    assert act.logs_in == {"new password on the reader": True, "new password on the writer": True,
                           "old password on the reader": False, "old password on the writer": False}
    # A real hot standby: in recovery, and even the master (who may write films) is refused an INSERT there.
    assert act.in_recovery is True and act.master_insert_sqlstate == "25006"
    # reader_user changed its own password on the writer twice (act 5, then act 7 through the cluster endpoint's
    # name); nothing ever tried to on the reader, where the function logged in to prove the new password.
    assert act.writer_log.count(f'{READER}@appdb LOG:  statement: ALTER ROLE "{READER}" WITH PASSWORD') == 2
    assert "ALTER ROLE" not in act.reader_log
    assert re.search(rf"connection authorized: user={READER} database=appdb application_name=secrets-rotation",
                     act.reader_log)
    assert report.cleaned_up and not any(Path(path).exists() for path in report.cleaned_up)


# ============================================================================================ interrupted and kept


@dataclass(frozen=True)
class Interruption:
    args: tuple[str, ...]
    #: Send SIGINT once stdout shows this.
    after: str
    exit_code: int


INTERRUPTIONS = {
    "ctrl-c-in-the-middle-of-the-story": Interruption((), "1. Create the cluster", 130),
    "ctrl-c-ends-a-kept-demo": Interruption(("--keep",), "Ctrl-C stops the servers", 0),
}


@pytest.mark.parametrize("case", INTERRUPTIONS.values(), ids=INTERRUPTIONS.keys())
def test_ctrl_c_stops_and_deletes_everything(case: Interruption, demo_process: Any, tmp_path: Path) -> None:
    proc = demo_process(*case.args)
    read_until(proc, case.after)

    proc.send_signal(signal.SIGINT)

    assert proc.wait(timeout=60) == case.exit_code
    assert "Traceback" not in proc.stderr.read()
    assert_nothing_left(tmp_path / "tmp")


def test_keep_leaves_a_cluster_to_explore_with_the_printed_details(demo_process: Any, tmp_path: Path) -> None:
    proc = demo_process("--keep", "--json")
    document = json.loads(read_json_document(proc))
    resources, commands = document["resources"], document["keep"]
    assert document["ok"] is True

    # What the printed commands do: read the secret from the endpoint, log in with its user and password.
    client = boto3.session.Session().client(
        "secretsmanager", endpoint_url=resources["secrets_manager"]["endpoint_url"],
        region_name=resources["secrets_manager"]["region"], aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    secret = json.loads(client.get_secret_value(SecretId=resources["secrets"][READER],
                                                VersionStage="AWSCURRENT")["SecretString"])
    postgres = resources["postgres"]
    with psycopg.connect(host=postgres["host"], port=postgres["port"], dbname="appdb", user=secret["username"],
                         password=secret["password"], sslmode="disable", connect_timeout=5) as conn:
        assert conn.execute("SELECT title FROM films").fetchall() == [("Bananas",)]
    assert f"PGPORT={postgres['port']}" in commands["environment"]
    assert resources["secrets_manager"]["endpoint_url"] in commands["environment"]
    assert secret["password"] not in json.dumps(document), "passwords are fetched by the commands, never printed"

    # The reader-endpoint act's hot standby and endpoints are kept too: the printed login reaches the standby.
    assert document["resources"]["reader_instance"] is not None
    on_reader = run_printed(commands["environment"], commands["login_function"],
                            commands["psql_reader_endpoint"] + " -tAc 'SELECT pg_is_in_recovery(), session_user'")
    assert on_reader.returncode == 0, on_reader.stdout + on_reader.stderr
    assert on_reader.stdout.strip() == f"t|{secret['username']}"

    # The printed event commands run the rotation's four steps, one invocation each, against the kept stack.
    ran = run_printed(commands["environment"], commands["write_events"], commands["invoke_events"])
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.count('"changed"') == 4, ran.stdout
    rotated = json.loads(client.get_secret_value(SecretId=resources["secrets"][READER],
                                                 VersionStage="AWSCURRENT")["SecretString"])
    assert rotated["password"] != secret["password"]
    with psycopg.connect(host=postgres["host"], port=postgres["port"], dbname="appdb", user=rotated["username"],
                         password=rotated["password"], sslmode="disable", connect_timeout=5) as conn:
        assert conn.execute("SELECT count(*) FROM films").fetchone() == (1,)

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert_nothing_left(tmp_path / "tmp")


def run_printed(*commands: str) -> subprocess.CompletedProcess[str]:
    """Run commands a kept demo printed, in one bash, as a person pastes them (this venv's tools on PATH)."""
    bindir = str(Path(sys.executable).parent)
    return subprocess.run(["bash", "-c", "set -e; " + "; ".join(commands)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"},
                          check=False)


def read_json_document(proc: subprocess.Popen[str]) -> str:
    """The --keep --json document: printed whole (indented, its closing brace alone on a line), then it waits."""
    lines = []
    deadline = time.monotonic() + STORY_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the demo ended early: {''.join(lines)}{proc.stderr.read()}")
        lines.append(line)
        if line == "}\n":
            return "".join(lines)
    raise AssertionError(f"no JSON document within {STORY_TIMEOUT}s")


# ============================================================================================ cannot start


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@dataclass(frozen=True)
class StartFailure:
    #: Command-line arguments; {port} is replaced by a port something already listens on.
    args: tuple[str, ...]
    #: Words the message must contain: what is wrong and the fix.
    names: tuple[str, ...]


START_FAILURES = {
    "postgres-binaries-missing": StartFailure(("--pg-bin", "/nonexistent"),
                                              ("--pg-bin=/nonexistent", "initdb", "pg_config --bindir")),
    "postgres-port-taken": StartFailure(("--port", "{port}"), ("already in use", "--port 0")),
    "secrets-manager-port-taken": StartFailure(("--sm-port", "{port}"), ("already in use", "--sm-port")),
    # The reader-endpoint act's standby is a pg_basebackup: known before anything starts.
    "pg_basebackup-missing": StartFailure(("--pg-bin", "{server-only bindir}"), ("no pg_basebackup", "PG_BIN")),
}


@pytest.mark.parametrize("case", START_FAILURES.values(), ids=START_FAILURES.keys())
def test_a_component_that_cannot_start_is_named_with_its_fix(
    case: StartFailure, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server_only = tmp_path / "bin"  # initdb, pg_ctl and postgres, as a minimal installation has them
    server_only.mkdir()
    for name in ("initdb", "pg_ctl", "postgres"):
        (server_only / name).symlink_to(find_bindir() / name)
    with _listening_socket() as taken:
        port = str(taken.getsockname()[1])
        exit_code = main(["demo", *(arg.replace("{port}", port).replace("{server-only bindir}", str(server_only))
                                    for arg in case.args)])

    err = capsys.readouterr().err
    assert exit_code == 1
    assert err.startswith("error: ") and "Traceback" not in err
    for words in case.names:
        assert words in err


# ============================================================================================ colour


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@dataclass(frozen=True)
class ColourCase:
    out: io.StringIO
    env: dict[str, str]
    flags: tuple[str, ...]
    colour: bool


COLOUR = {
    "terminal": ColourCase(Terminal(), {}, (), True),
    "pipe-or-file": ColourCase(io.StringIO(), {}, (), False),
    "NO_COLOR-set": ColourCase(Terminal(), {"NO_COLOR": "1"}, (), False),
    "NO_COLOR-empty-is-unset": ColourCase(Terminal(), {"NO_COLOR": ""}, (), True),  # as no-color.org says
    "--no-color": ColourCase(Terminal(), {}, ("--no-color",), False),
    "--json": ColourCase(Terminal(), {}, ("--json",), False),
}


@pytest.mark.parametrize("case", COLOUR.values(), ids=COLOUR.keys())
def test_colour_only_on_a_terminal_that_did_not_opt_out(case: ColourCase) -> None:
    args = argparse.Namespace(no_color="--no-color" in case.flags, json="--json" in case.flags)
    assert wants_colour(args, case.out, case.env) is case.colour
