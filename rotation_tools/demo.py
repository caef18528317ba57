"""``rotation demo``: the story the project exists for, played end to end on real components.

A real PostgreSQL (SCRAM-SHA-256 over TCP, every statement logged) set up the way Aurora sets up its master
user, and the Secrets Manager API served by moto over HTTP, both started here and stopped here; later a
streaming hot standby of that server joins it behind Aurora-named cluster and reader endpoints
(rotation_tools.local.topology). Each step of the story is a function that does one thing through the same code
paths as production (the bootstrap and rotation Lambda handlers, invoked in-process with the events the service
sends) and then checks the outcome a user cares about against the real components: a login accepted or refused,
an INSERT refused with SQLSTATE 42501 (or 25006 on the standby), which version AWSCURRENT labels. A failed check
makes the demo fail; nothing here only prints.

No password is ever shown: secret documents are printed masked, and the last step proves that neither the
servers' logs nor the function's log lines ever held one of the passwords the story used.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import io
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors

import rotation.database
from rotation.database import APPLICATION_NAME, role_exists
from rotation.events import Step
from rotation.exceptions import LocalToolError
from rotation.ports import AWSCURRENT, AWSPENDING, AWSPREVIOUS
from rotation.protocol import CLONE_SUFFIX
from rotation_tools.local.aurora import login_accepted, secret_conninfo, setup_aurora_like
from rotation_tools.local.lambda_context import LambdaContext
from rotation_tools.local.postgres import PostgresServer, find_bindir, start_postgres
from rotation_tools.local.secretsmanager import LocalSecretsManager
from rotation_tools.local.topology import (
    CLUSTER_ID,
    Topology,
    add_reader,
    check_reader_prerequisites,
    in_recovery,
)

READER = "reader_user"
READER_CLONE = READER + CLONE_SUFFIX
DBNAME = "appdb"
MASK = "********"
ROTATION_STEPS = (Step.CREATE, Step.SET, Step.TEST, Step.FINISH)
INSERT_FILM = "INSERT INTO films (code, title, did) VALUES ('UA503', 'Sleeper', 105)"
SELECT_FILMS = "SELECT code, title FROM films ORDER BY code"
PERMISSION_DENIED_FILMS = "permission denied for table films"
READ_ONLY_INSERT = "cannot execute INSERT in a read-only transaction"

# libpq reports a refused login without a SQLSTATE: the message is all there is to match.
_LOG_STATEMENT = re.compile(r"\] (?P<user>[^@\s]*)@(?P<db>\S*) LOG:  statement: (?P<sql>.*)$")
_PASSWORD_STATEMENT = re.compile(r"^(CREATE|ALTER) ROLE .*PASSWORD '(?P<value>[^']*)'", re.IGNORECASE)


# ============================================================================================ the report


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(slots=True)
class StepReport:
    """What one step of the story did (``lines``, for a person), verified (``checks``) and measured."""

    number: int
    title: str
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(check.passed for check in self.checks)

    def say(self, line: str = "") -> None:
        self.lines.append(line)

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(passed), detail))
        return bool(passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "title": self.title,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "lines": list(self.lines),
            "checks": [check.to_dict() for check in self.checks],
            "figures": dict(self.figures),
        }


@dataclass(frozen=True, slots=True)
class ReaderResources:
    """The reader-endpoint act's part of the cluster: the hot standby and the endpoints in front of both servers.

    The endpoints' Aurora-style names resolve only inside the demo (the function's database adapter maps them to
    the loopback addresses); from another shell, connect to the addresses.
    """

    instance_host: str
    instance_port: int
    data_dir: str
    workdir: str
    endpoint_port: int
    cluster_endpoint: str
    cluster_address: str
    reader_endpoint: str
    reader_address: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": {"host": self.instance_host, "port": self.instance_port, "data_dir": self.data_dir,
                         "workdir": self.workdir},
            "endpoints": {
                "cluster": {"name": self.cluster_endpoint, "address": self.cluster_address, "port": self.endpoint_port},
                "reader": {"name": self.reader_endpoint, "address": self.reader_address, "port": self.endpoint_port},
            },
        }


@dataclass(frozen=True, slots=True)
class Resources:
    """Where the story ran, so a person (``--keep``) or a test can look at it. No passwords."""

    postgres_host: str
    postgres_port: int
    postgres_version: int
    postgres_bindir: str
    data_dir: str
    workdir: str
    endpoint_url: str
    region: str
    master_secret_arn: str = ""
    reader_secret_arn: str = ""
    #: The hot standby and the endpoints, once the reader-endpoint act has started them.
    reader: ReaderResources | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "postgres": {"host": self.postgres_host, "port": self.postgres_port, "version": self.postgres_version,
                         "bindir": self.postgres_bindir, "data_dir": self.data_dir, "workdir": self.workdir},
            "secrets_manager": {"endpoint_url": self.endpoint_url, "region": self.region},
            "secrets": {"master": self.master_secret_arn, READER: self.reader_secret_arn},
            "reader_instance": self.reader.to_dict() if self.reader else None,
        }


@dataclass(slots=True)
class DemoReport:
    steps: list[StepReport]
    seconds: float
    resources: Resources | None
    #: Steps left out because an earlier one failed.
    skipped: tuple[str, ...] = ()
    #: Directories the demo created and deleted at the end (None while they still exist, as with --keep).
    cleaned_up: tuple[str, ...] | None = None

    @property
    def checks(self) -> list[Check]:
        return [check for step in self.steps for check in step.checks]

    @property
    def ok(self) -> bool:
        return bool(self.steps) and not self.skipped and all(step.ok for step in self.steps)

    @property
    def figures(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for step in self.steps:
            merged.update(step.figures)
        merged["checks_passed"] = sum(check.passed for check in self.checks)
        merged["checks_failed"] = sum(not check.passed for check in self.checks)
        merged["demo_seconds"] = round(self.seconds, 2)
        return merged

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "steps": [step.to_dict() for step in self.steps],
            "skipped_steps": list(self.skipped),
            "checks": [{"step": step.number, **check.to_dict()} for step in self.steps for check in step.checks],
            "figures": self.figures,
            "resources": self.resources.to_dict() if self.resources else None,
            "cleaned_up": list(self.cleaned_up) if self.cleaned_up is not None else None,
        }


# ============================================================================================ the story's state


@dataclass(frozen=True, slots=True)
class DemoOptions:
    pg_bin: str | None = None
    #: 0: a free port.
    pg_port: int = 0
    sm_port: int = 0


@dataclass(eq=False)
class Story:
    """What the steps share: the running components and the secrets created so far."""

    options: DemoOptions
    bindir: Path
    cleanup: contextlib.ExitStack
    server: PostgresServer | None = None
    secrets: LocalSecretsManager | None = None
    master_arn: str = ""
    reader_arn: str = ""
    #: The server above (the writer), a hot standby of it and the endpoints: from the reader-endpoint act on.
    topology: Topology | None = None
    #: Every JSON log line and metric document the Lambda handlers printed.
    function_log: io.StringIO = field(default_factory=io.StringIO, repr=False)

    @contextlib.contextmanager
    def capturing_function_output(self) -> Iterator[None]:
        """Keep the handlers' log lines and metrics for the leak check, and out of the story's own output.

        Both streams: the CLI's --json mode sends the function's log lines to stderr.
        """
        with contextlib.redirect_stdout(self.function_log), contextlib.redirect_stderr(self.function_log):
            yield

    @property
    def pg(self) -> PostgresServer:
        if self.server is None:
            raise LocalToolError("PostgreSQL is not running (the first step did not complete)")
        return self.server

    @property
    def sm(self) -> LocalSecretsManager:
        if self.secrets is None:
            raise LocalToolError("the local Secrets Manager is not running (the first step did not complete)")
        return self.secrets

    def value(self, secret_id: str, stage: str = AWSCURRENT) -> dict[str, Any]:
        return self.sm.value(secret_id, stage)

    def servers(self) -> list[PostgresServer]:
        """The writer and, from the reader-endpoint act on, its hot standby: every server log of the story."""
        standby = self.topology.reader if self.topology is not None else None
        return [server for server in (self.server, standby) if server is not None]

    def cleaned_up_paths(self) -> tuple[str, ...]:
        return tuple(str(server.workdir) for server in self.servers())

    def resources(self) -> Resources | None:
        if self.server is None or self.secrets is None:
            return None
        reader = None
        if self.topology is not None and self.topology.reader is not None:
            standby, topology = self.topology.reader, self.topology
            reader = ReaderResources(
                instance_host=standby.host, instance_port=standby.port, data_dir=str(standby.data_dir),
                workdir=str(standby.workdir), endpoint_port=topology.port, cluster_endpoint=topology.writer_host,
                cluster_address=topology.cluster_endpoint.address, reader_endpoint=topology.reader_host,
                reader_address=topology.reader_endpoint.address,
            )
        return Resources(
            postgres_host=self.server.host, postgres_port=self.server.port, postgres_version=self.server.version,
            postgres_bindir=str(self.server.bindir), data_dir=str(self.server.data_dir),
            workdir=str(self.server.workdir), endpoint_url=self.secrets.endpoint_url, region=self.secrets.region,
            master_secret_arn=self.master_arn, reader_secret_arn=self.reader_arn, reader=reader,
        )


# ============================================================================================ helpers


def masked(document: Mapping[str, Any]) -> str:
    """The secret's JSON as the console shows it, with the password replaced."""
    shown = {key: (MASK if key == "password" else value) for key, value in document.items()}
    return json.dumps(shown, indent=2)


def _indented(text: str, prefix: str = "    ") -> list[str]:
    return [prefix + line for line in text.splitlines()]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _attempt(conn: psycopg.Connection, statement: str) -> tuple[str | None, str]:
    """Run ``statement``; return (None, "ok") or the SQLSTATE and the server's message of its refusal."""
    try:
        conn.execute(statement)
    except psycopg.errors.Error as exc:
        message = exc.diag.message_primary or str(exc)
        return exc.sqlstate, message
    return None, "ok"


def _attempt_insert(conn: psycopg.Connection, say: Callable[[str], None]) -> tuple[str | None, str]:
    """INSERT into films as the session is, and say what happened; returns the final refusal.

    An administrator may have set ``default_transaction_read_only`` on the role (the bootstrap's
    ReadOnlyTransactions): that refuses the write first (25006) but any session can switch it off, so the
    INSERT is tried again without it. The privileges are the barrier that must refuse it (42501).
    """
    state, message = _attempt(conn, INSERT_FILM)
    say(f"    {INSERT_FILM};  ->  ERROR {state}: {message}")
    if state == "25006":
        conn.execute("SET default_transaction_read_only = off")
        say("    SET default_transaction_read_only = off;  -- the read-only default is defence in depth only")
        state, message = _attempt(conn, INSERT_FILM)
        say(f"    {INSERT_FILM};  ->  ERROR {state}: {message}")
    return state, message


def _superuser_value(server: PostgresServer, query: str, params: Sequence[Any] = ()) -> Any:
    with server.connect(dbname=DBNAME) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _role_exists(server: PostgresServer, name: str) -> bool:
    with server.connect(dbname=DBNAME) as conn:
        return role_exists(conn, name)


def _logged_statements(server: PostgresServer) -> list[tuple[str, str, str]]:
    """(user, database, statement) for every statement line in the server log."""
    return _statements_in(server.server_log())


def _statements_in(log: str) -> list[tuple[str, str, str]]:
    found = []
    for line in log.splitlines():
        match = _LOG_STATEMENT.search(line)
        if match:
            found.append((match["user"], match["db"], match["sql"]))
    return found


def scram_verifier_matches(verifier: str, password: str) -> bool:
    """Whether ``verifier`` (``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``) encodes ``password``.

    RFC 5802/7677 as PostgreSQL stores it. SASLprep is skipped: it leaves the ASCII passwords the password
    policy generates unchanged.
    """
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier)
    if match is None:
        return False
    iterations, salt, stored_key, server_key = match.groups()
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    expected_stored = base64.b64encode(hashlib.sha256(client_key).digest()).decode()
    expected_server = base64.b64encode(hmac.new(salted, b"Server Key", "sha256").digest()).decode()
    return hmac.compare_digest(expected_stored, stored_key) and hmac.compare_digest(expected_server, server_key)


@dataclass(frozen=True, slots=True)
class RotationRun:
    token: str
    #: (step, seconds, action) for each of the four invocations.
    steps: tuple[tuple[Step, float, str], ...]

    @property
    def seconds(self) -> float:
        return sum(seconds for _, seconds, _ in self.steps)


def rotate_immediately(story: Story, secret_arn: str) -> RotationRun:
    """What "Rotate secret immediately" does: stage AWSPENDING, then invoke the rotation handler four times."""
    from rotation.handler import rotate

    token = story.sm.stage_pending(secret_arn)
    steps = []
    for step in ROTATION_STEPS:
        event = {"Step": step.value, "SecretId": secret_arn, "ClientRequestToken": token}
        context = LambdaContext(function_name="RotationFunction", timeout_seconds=30)
        started = time.perf_counter()
        with story.capturing_function_output():
            response = rotate(event, context)
        steps.append((step, time.perf_counter() - started, str(response.get("action", ""))))
    return RotationRun(token, tuple(steps))


def _report_rotation(report: StepReport, run: RotationRun, label: str) -> None:
    report.say(f"{label}: token {run.token}")
    key = re.sub(r"\W", "_", label)
    for step, seconds, action in run.steps:
        report.say(f"    {step.value:<13} {_ms(seconds):>8.1f} ms  {action}")
        report.figures[f"{key}_{step.value}_ms"] = _ms(seconds)
    report.figures[f"{key}_total_ms"] = _ms(run.seconds)


def _check_stages(report: StepReport, story: Story, secret_arn: str, run: RotationRun, label: str) -> None:
    """AWSCURRENT on the new version, AWSPENDING nowhere else: what lets the next rotation start."""
    stages = story.sm.stages(secret_arn)
    current = next((version for version, labels in stages.items() if AWSCURRENT in labels), None)
    stray_pending = [version for version, labels in stages.items() if AWSPENDING in labels and AWSCURRENT not in labels]
    report.check(f"{label}: AWSCURRENT moved to the rotation's version", current == run.token,
                 f"AWSCURRENT is on {current}")
    report.check(f"{label}: no AWSPENDING left on another version", not stray_pending,
                 f"stray AWSPENDING on {stray_pending}" if stray_pending else "the next rotation can start")


# ============================================================================================ the steps


def create_cluster(story: Story, report: StepReport) -> StepReport:
    """Start PostgreSQL (SCRAM) and Secrets Manager; the master user as Aurora makes it, and its secret."""
    options = story.options

    started = time.perf_counter()
    try:
        story.secrets = LocalSecretsManager(port=options.sm_port)
    except LocalToolError as exc:
        if options.sm_port and "already in use" in str(exc):
            raise LocalToolError(f"port {options.sm_port} on 127.0.0.1 (asked for the Secrets Manager endpoint) is "
                                 "already in use: stop what listens there, or pass another --sm-port (0 picks a "
                                 "free one)") from exc
        raise
    story.cleanup.callback(story.secrets.stop)
    report.figures["secrets_manager_start_ms"] = _ms(time.perf_counter() - started)
    story.cleanup.enter_context(story.secrets.isolated_environment())

    started = time.perf_counter()
    story.server = start_postgres(story.bindir, port=options.pg_port, log_statement="all")
    story.cleanup.callback(story.server.stop)
    report.figures["postgres_start_ms"] = _ms(time.perf_counter() - started)
    report.figures["postgres_version"] = story.server.version
    server = story.server

    started = time.perf_counter()
    master = setup_aurora_like(server, dbname=DBNAME)
    # Aurora names each cluster; a fresh identifier per run keeps secret names apart when moto's state is shared.
    master["dbClusterIdentifier"] = f"demo-cluster-{uuid.uuid4().hex[:8]}"
    story.master_arn = story.sm.create_secret(
        f"rds!cluster-{uuid.uuid4()}", master,
        Description=f"Master credentials of {master['dbClusterIdentifier']} (RDS-style master secret)",
    )
    report.figures["cluster_setup_ms"] = _ms(time.perf_counter() - started)

    report.say(f"PostgreSQL {server.version} on {server.host}:{server.port} ({server.bindir}), "
               f"every statement logged to {server.log_file}")
    report.say(f"Secrets Manager API (moto) at {story.sm.endpoint_url}")
    report.say("master secret, as the console shows it (password masked):")
    report.say(f"  ARN {story.master_arn}")
    report.lines += _indented(masked(master))

    facts = _superuser_value(
        server,
        "SELECT json_build_object('super', r.rolsuper, 'createrole', r.rolcreaterole, "
        "'scram', r.rolpassword LIKE 'SCRAM-SHA-256$%%', "
        "'owner', (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s), "
        "'encryption', current_setting('password_encryption')) FROM pg_authid r WHERE r.rolname = %s",
        (DBNAME, master["username"]),
    )
    report.check("the master is not a superuser, as on Aurora", facts and facts["super"] is False,
                 f"{master['username']}: rolsuper={facts and facts['super']}")
    report.check("the master has CREATEROLE", facts and facts["createrole"] is True)
    report.check(f"the master owns database {DBNAME}", facts and facts["owner"] == master["username"],
                 f"owner: {facts and facts['owner']}")
    report.check("passwords are stored as SCRAM-SHA-256 verifiers",
                 facts and facts["scram"] is True and facts["encryption"] == "scram-sha-256",
                 f"password_encryption={facts and facts['encryption']}")
    stored = story.value(story.master_arn)
    report.check("the master secret, read back by ARN, logs in over TCP", login_accepted(stored))
    wrong = {**stored, "password": stored["password"][::-1] + "x"}
    report.check("a wrong password is refused (authentication is enforced, not trust)", not login_accepted(wrong))
    return report


def create_films(story: Story, report: StepReport) -> StepReport:
    """The master creates ``films`` and inserts a row; shown from the server's own statement log."""
    master = story.value(story.master_arn)
    statements = [statement for user, db, statement in _logged_statements(story.pg)
                  if user == master["username"] and db == DBNAME
                  and re.match(r"(CREATE TABLE|INSERT INTO) .*films", statement)]
    report.say(f"the server log shows {master['username']} ran, in {DBNAME}:")
    report.lines += [f"    {statement};" for statement in statements]
    report.check("the master ran CREATE TABLE films and an INSERT (statement log)",
                 {s.split(" ", 1)[0] for s in statements} >= {"CREATE", "INSERT"},
                 f"{len(statements)} statements found")
    owner = _superuser_value(story.pg, "SELECT tableowner::text FROM pg_tables WHERE schemaname = 'public' "
                                       "AND tablename = 'films'")
    report.check("films is owned by the master", owner == master["username"], f"owner: {owner}")
    with psycopg.connect(**secret_conninfo(master), autocommit=True) as conn:
        rows = conn.execute(SELECT_FILMS).fetchall()
    report.say(f"    {SELECT_FILMS};  ->  {rows}")
    report.check("the master reads the row back", ("UA502", "Bananas") in rows, f"{len(rows)} row(s)")
    report.figures["films_rows"] = len(rows)
    return report


def bootstrap_reader(story: Story, report: StepReport) -> StepReport:
    """``reader_user`` with SELECT on films, through the bootstrap Lambda handler."""
    from rotation.handler import bootstrap

    # events/bootstrap.json, for this cluster: the master secret names the host and port.
    event = {"MasterSecretId": story.master_arn, "Username": READER, "DBName": DBNAME, "Schemas": ["public"],
             "Tables": ["public.films"], "Strategy": "single-user"}
    report.say("event: " + json.dumps(event))
    started = time.perf_counter()
    with story.capturing_function_output():
        response = bootstrap(event, LambdaContext(function_name="BootstrapFunction", timeout_seconds=60))
    report.figures["bootstrap_ms"] = _ms(time.perf_counter() - started)
    story.reader_arn = response.get("SecretArn", "")
    report.say(f"response: {json.dumps(response)}")

    secret = story.value(story.reader_arn)
    report.say("the new secret, as the console shows it (password masked):")
    report.say(f"  ARN {story.reader_arn}")
    report.lines += _indented(masked(secret))
    name = story.sm.client().describe_secret(SecretId=story.reader_arn)["Name"]
    report.check("the function answered with the secret's ARN, the user and its group role",
                 response.get("Username") == READER and response.get("GroupRole") == f"{READER}_readonly"
                 and story.reader_arn.startswith("arn:aws:secretsmanager:"), f"secret name {name}")
    report.check("the secret is RDS-format, for this server and database",
                 (secret.get("username"), secret.get("host"), secret.get("port"), secret.get("dbname"))
                 == (READER, story.pg.host, story.pg.port, DBNAME))
    member = _superuser_value(story.pg, "SELECT pg_has_role(%s, %s, 'MEMBER')", (READER, f"{READER}_readonly"))
    report.check(f"{READER} is a member of {READER}_readonly", member is True)
    report.check(f"{READER} logs in with the secret", login_accepted(secret))
    return report


def query_editor(story: Story, report: StepReport) -> StepReport:
    """The Query Editor's way: username and password from the secret by ARN; SELECT works, INSERT refused."""
    response = story.sm.client().get_secret_value(SecretId=story.reader_arn, VersionStage=AWSCURRENT)
    credentials = json.loads(response["SecretString"])
    # The Query Editor takes only username and password from the secret; the cluster gives the endpoint.
    session = {"host": story.pg.host, "port": story.pg.port, "dbname": DBNAME,
               "username": credentials["username"], "password": credentials["password"]}
    report.say(f"GetSecretValue({story.reader_arn}) -> username {credentials['username']!r}, password {MASK}")
    with psycopg.connect(**secret_conninfo(session), autocommit=True) as conn:
        who = conn.execute("SELECT session_user::text").fetchone()[0]
        rows = conn.execute(SELECT_FILMS).fetchall()
        report.say(f"    {SELECT_FILMS};  ->  {rows}")
        privilege_state, privilege_message = _attempt_insert(conn, report.say)
    report.check(f"the session is {READER}", who == READER, f"session_user={who}")
    report.check("SELECT on films works", ("UA502", "Bananas") in rows, f"{len(rows)} row(s)")
    report.check(f"INSERT is refused with '{PERMISSION_DENIED_FILMS}' (SQLSTATE 42501)",
                 privilege_state == "42501" and PERMISSION_DENIED_FILMS in privilege_message,
                 f"{privilege_state}: {privilege_message}")
    rows_after = _superuser_value(story.pg, "SELECT count(*) FROM films")
    report.check("films is unchanged", rows_after == len(rows), f"{rows_after} row(s)")
    report.figures["insert_refused_sqlstate"] = privilege_state
    return report


def rotate_single_user(story: Story, report: StepReport) -> StepReport:
    """"Rotate immediately", single-user: the four steps; the new password logs in, the old one is refused."""
    before = story.value(story.reader_arn)
    run = rotate_immediately(story, story.reader_arn)
    _report_rotation(report, run, "single-user rotation")
    _check_stages(report, story, story.reader_arn, run, "single-user rotation")
    current, previous = story.value(story.reader_arn), story.value(story.reader_arn, AWSPREVIOUS)
    report.check("the user is the same, the password is new",
                 current["username"] == READER and current["password"] != before["password"])
    report.check("AWSPREVIOUS holds the old password", previous["password"] == before["password"])
    report.check("the new password (AWSCURRENT) logs in", login_accepted(current))
    report.check("the old password (AWSPREVIOUS) is refused", not login_accepted(previous))
    report.say(f"AWSCURRENT: {current['username']} (new password) logs in; AWSPREVIOUS: old password refused")
    return report


def rotate_alternating(story: Story, report: StepReport) -> StepReport:
    """Alternating users: masterarn attached by editing the secret, then two rotations."""
    edited = {**story.value(story.reader_arn), "masterarn": story.master_arn}
    # As a person editing the secret in the console does: a new AWSCURRENT version with the extra key.
    story.sm.put_current(story.reader_arn, edited)
    report.say(f"secret edited: masterarn = {story.master_arn}")
    clone_existed = _role_exists(story.pg, READER_CLONE)

    expected_current = (READER_CLONE, READER)
    for number, expected in enumerate(expected_current, start=1):
        label = f"alternating rotation {number}"
        run = rotate_immediately(story, story.reader_arn)
        _report_rotation(report, run, label)
        _check_stages(report, story, story.reader_arn, run, label)
        current, previous = story.value(story.reader_arn), story.value(story.reader_arn, AWSPREVIOUS)
        report.check(f"{label}: AWSCURRENT is {expected}", current["username"] == expected,
                     f"AWSCURRENT username {current['username']}")
        report.check(f"{label}: masterarn and the other keys survived",
                     {k: v for k, v in current.items() if k not in ("username", "password")}
                     == {k: v for k, v in edited.items() if k not in ("username", "password")})
        both = {current["username"]: login_accepted(current), previous["username"]: login_accepted(previous)}
        report.check(f"{label}: both users log in (AWSCURRENT and AWSPREVIOUS)",
                     set(both) == {READER, READER_CLONE} and all(both.values()), f"{both}")
        report.say(f"    AWSCURRENT -> {current['username']}, AWSPREVIOUS -> {previous['username']}; "
                   + ", ".join(f"{user} {'logs in' if ok else 'REFUSED'}" for user, ok in both.items()))

    report.check(f"{READER_CLONE} was created by the first rotation",
                 not clone_existed and _role_exists(story.pg, READER_CLONE))
    clone = story.value(story.reader_arn, AWSPREVIOUS)
    with psycopg.connect(**secret_conninfo(clone), autocommit=True) as conn:
        rows = conn.execute(SELECT_FILMS).fetchall()
        state, message = _attempt_insert(conn, lambda _line: None)
    report.check(f"{READER_CLONE} reads films and is refused an INSERT (42501), like {READER}",
                 bool(rows) and state == "42501", f"{state}: {message}")
    report.figures["clone_created"] = READER_CLONE
    report.figures["awscurrent_user"] = story.value(story.reader_arn)["username"]
    return report


@contextlib.contextmanager
def _names_resolved(addresses: Mapping[str, str]) -> Iterator[None]:
    """The endpoints' DNS, for the function only and while the block runs: its database adapter maps each
    Aurora-style name to its endpoint's loopback address through the adapter's ``host_addresses`` seam (libpq's
    ``hostaddr``, so ``host`` keeps the name), exactly as the topology tests do. Production resolves by DNS."""
    adapter = rotation.database.PostgresDatabase
    rotation.database.PostgresDatabase = functools.partial(adapter, host_addresses=dict(addresses))
    try:
        yield
    finally:
        rotation.database.PostgresDatabase = adapter


def _add_reader_instance(story: Story) -> Topology:
    """The cluster gains a reader: a streaming hot standby of the story's server (``pg_basebackup -R``), and the
    cluster (writer) and reader endpoints in front of the two, with the names Aurora gives them."""
    cluster = story.value(story.master_arn)["dbClusterIdentifier"]
    domain = f"{CLUSTER_ID}.{story.sm.region}.rds.amazonaws.com"
    story.topology = add_reader(story.pg, writer_host=f"{cluster}.cluster-{domain}",
                                reader_host=f"{cluster}.cluster-ro-{domain}")
    # The reader side is this act's; the writer is the story's own server, stopped with the story.
    for part in (story.topology.reader_endpoint, story.topology.cluster_endpoint, story.topology.reader):
        story.cleanup.callback(part.stop)
    return story.topology


def _function_logins(log: str) -> list[str]:
    """Users the rotation function logged in as, in a part of a server log (its connections carry its name)."""
    return re.findall(rf"connection authorized: user=(\S+) database=\S+ application_name={APPLICATION_NAME}\b", log)


def rotate_on_the_reader_endpoint(story: Story, report: StepReport) -> StepReport:
    """Aurora's reader endpoint: the secret's host is a hot standby, which refuses writes; the rotation still works."""
    started = time.perf_counter()
    topology = _add_reader_instance(story)
    report.figures["reader_instance_start_ms"] = _ms(time.perf_counter() - started)
    writer, standby = topology.writer, topology.reader
    assert standby is not None
    report.say(f"a reader instance joins the cluster: a streaming hot standby of the writer (pg_basebackup -R), "
               f"PostgreSQL {standby.version} on {standby.host}:{standby.port}, ready in "
               f"{report.figures['reader_instance_start_ms']:.0f} ms")
    report.say("the endpoints, each a TCP forwarder on its own loopback address; their names reach the function "
               "through its database adapter (libpq hostaddr), as DNS does on AWS:")
    report.say(f"    cluster (writer)  {topology.writer_host}  ->  {topology.cluster_endpoint.address}:{topology.port}"
               f"  ->  writer {writer.host}:{writer.port}")
    report.say(f"    reader            {topology.reader_host}  ->  {topology.reader_endpoint.address}:{topology.port}"
               f"  ->  reader instance {standby.host}:{standby.port}")
    report.check("the reader instance is a hot standby (pg_is_in_recovery)", in_recovery(standby))

    before = story.value(story.reader_arn)
    # Single-user (no masterarn): the old password must stop working, on the reader too.
    on_reader = {**{k: v for k, v in before.items() if k != "masterarn"},
                 "host": topology.reader_host, "port": topology.port}
    story.sm.put_current(story.reader_arn, on_reader)
    report.say(f"secret edited: host = {topology.reader_host}, port = {topology.port}, masterarn removed "
               "(single-user)")

    log_marks = {server: len(server.server_log()) for server in (writer, standby)}
    accepted = {endpoint: endpoint.accepted for endpoint in (topology.cluster_endpoint, topology.reader_endpoint)}
    with _names_resolved(topology.host_addresses()):
        run = rotate_immediately(story, story.reader_arn)
    through = {endpoint.name: endpoint.accepted - accepted[endpoint] for endpoint in accepted}
    writer_log, standby_log = (server.server_log()[log_marks[server]:] for server in (writer, standby))
    _report_rotation(report, run, "reader endpoint rotation")
    _check_stages(report, story, story.reader_arn, run, "reader endpoint rotation")

    current, previous = story.value(story.reader_arn), story.value(story.reader_arn, AWSPREVIOUS)
    report.check("the secret's host is still the reader endpoint (the function never rewrites it)",
                 current["host"] == topology.reader_host and current["username"] == READER
                 and current["password"] != before["password"], f"host {current['host']}")
    changes = [sql for user, _, sql in _statements_in(writer_log) if user == READER and _PASSWORD_STATEMENT.match(sql)]
    tried_on_reader = [sql for _, _, sql in _statements_in(standby_log) if _PASSWORD_STATEMENT.match(sql)]
    report.check("the password change ran on the writer, reached by the cluster endpoint's name",
                 len(changes) == 1 and through["cluster"] > 0 and not tried_on_reader,
                 f"{len(changes)} ALTER ROLE on the writer, none on the reader; {through['cluster']} connection(s) "
                 "through the cluster endpoint")
    # A login refused on the reader before the change replicated is testSecret waiting, as it may (bounded).
    refused_while_replicating = standby_log.count(f'password authentication failed for user "{READER}"')
    report.check("testSecret logged in on the reader instance",
                 READER in _function_logins(standby_log) and through["reader"] > 0,
                 f"{_function_logins(standby_log).count(READER)} login(s) by the function on the reader after "
                 f"{refused_while_replicating} refused while the change replicated; {through['reader']} "
                 "connection(s) through the reader endpoint")
    report.figures["reader_logins_refused_while_replicating"] = refused_while_replicating
    reader_address = {"hostaddr": topology.reader_endpoint.address}
    report.check("the new password (AWSCURRENT) logs in on the reader", login_accepted(current, **reader_address))
    report.check("the old password (AWSPREVIOUS) is refused on the reader",
                 not login_accepted(previous, **reader_address))

    with psycopg.connect(**secret_conninfo(current, **reader_address), autocommit=True) as conn:
        rows = conn.execute(SELECT_FILMS).fetchall()
        report.say(f"on the reader, as {READER} with the new password:")
        report.say(f"    {SELECT_FILMS};  ->  {rows}")
        state, message = _attempt_insert(conn, report.say)
    report.check("SELECT on films works on the reader", ("UA502", "Bananas") in rows, f"{len(rows)} row(s)")
    report.check("INSERT on the reader is refused: it is read-only (SQLSTATE 25006)",
                 state == "25006" and READ_ONLY_INSERT in message, f"{state}: {message}")
    master = story.value(story.master_arn)
    master_on_reader = topology.conninfo(topology.reader_host, master["username"], master["password"], DBNAME)
    with psycopg.connect(**master_on_reader, autocommit=True) as conn:
        master_state, master_message = _attempt(conn, INSERT_FILM)
    report.check("even the master, who may INSERT into films, is refused on the reader (25006)",
                 master_state == "25006", f"{master_state}: {master_message}")
    rows_after = _superuser_value(story.pg, "SELECT count(*) FROM films")
    report.check("films is unchanged on the writer", rows_after == len(rows), f"{rows_after} row(s)")
    report.figures["reader_insert_refused_sqlstate"] = state

    # The endpoint names resolve only inside this process; what follows (--keep's commands, run from other
    # shells) needs the secret on the server's own address again: the secret as it was, with its new password.
    story.sm.put_current(story.reader_arn, {**before, "password": current["password"]})
    report.say(f"secret edited back: host = {before['host']}, port = {before['port']}, masterarn restored (the "
               "endpoint names resolve only inside this demo)")
    report.check("the edited-back secret logs in", login_accepted(story.value(story.reader_arn)))
    return report


def prove_no_plaintext(story: Story, report: StepReport) -> StepReport:
    """No password ever reached the servers' logs (nor the function's log lines)."""
    # password -> whose it was; the superuser's too, although only this demo's setup ever used it.
    passwords: dict[str, str] = {story.pg.superuser_password: f"{story.pg.superuser} (the server's superuser)"}
    client = story.sm.client()
    for arn in (story.master_arn, story.reader_arn):
        versions = client.list_secret_version_ids(SecretId=arn, IncludeDeprecated=True)["Versions"]
        for version in versions:
            value = json.loads(client.get_secret_value(SecretId=arn, VersionId=version["VersionId"])["SecretString"])
            passwords.setdefault(value["password"], f"{value['username']} (version {version['VersionId'][:8]})")
    users = sorted({holder.split(" (")[0] for holder in passwords.values()})
    report.say(f"{len(passwords)} distinct passwords used in the story, of: {', '.join(users)}")

    # The writer's log, and the reader instance's once the reader-endpoint act has run: logins went there too.
    server_log = "\n".join(server.server_log() for server in story.servers())
    function_log = story.function_log.getvalue()
    # Password changes are made on the writer only (a hot standby refuses them).
    statements = _logged_statements(story.pg)
    password_statements = [s for _, _, s in statements if _PASSWORD_STATEMENT.match(s)]
    verifiers = [m["value"] for s in password_statements if (m := _PASSWORD_STATEMENT.match(s))]
    alter_role = [s for s in password_statements if s.upper().startswith("ALTER ROLE")]
    authenticated = re.findall(r"connection authenticated: .*method=(\S+)", server_log)
    in_server_log = [holder for password, holder in passwords.items() if password in server_log]
    in_function_log = [holder for password, holder in passwords.items() if password in function_log]

    report.check(f"every password of the story was checked ({READER} old and new, {READER_CLONE}, master)",
                 {READER, READER_CLONE, "master_user"} <= set(users) and len(passwords) >= 6,
                 f"{len(passwords)} passwords")
    logs = " and ".join(("the writer's", "the reader instance's")[:len(story.servers())])
    report.check("no password appears in the server logs", not in_server_log,
                 f"found: {', '.join(in_server_log)}" if in_server_log
                 else f"{len(server_log.splitlines())} lines of {logs}")
    report.check("no password appears in the function's log lines", not in_function_log,
                 f"found: {', '.join(in_function_log)}" if in_function_log
                 else f"{len(function_log.splitlines())} lines")
    # The check above means something only if the passwords did reach the log in some form: each one set
    # through SQL must show up as a statement carrying the SCRAM verifier of exactly that password.
    set_by_sql = {password: holder for password, holder in passwords.items() if password != story.pg.superuser_password}
    unmatched = [holder for password, holder in set_by_sql.items()
                 if not any(scram_verifier_matches(verifier, password) for verifier in verifiers)]
    report.check("the log recorded every password change, as the SCRAM-SHA-256 verifier of that password",
                 bool(set_by_sql) and not unmatched and len(verifiers) == len(set_by_sql),
                 f"missing: {', '.join(unmatched)}" if unmatched else
                 f"{len(verifiers)} CREATE/ALTER ROLE ... PASSWORD statements for {len(set_by_sql)} passwords, "
                 f"{len(alter_role)} of them ALTER ROLE")
    report.check("every login was authenticated with scram-sha-256",
                 bool(authenticated) and set(authenticated) == {"scram-sha-256"},
                 f"{len(authenticated)} logins, methods {sorted(set(authenticated))}")
    report.say(f"server log: {len(server_log.splitlines())} lines, {len(statements)} statements, "
               f"{len(password_statements)} CREATE/ALTER ROLE ... PASSWORD, each with a SCRAM verifier, e.g.:")
    if alter_role:
        report.say("    " + re.sub(r"'SCRAM-SHA-256\$[^']*'", "'SCRAM-SHA-256$4096:...'", alter_role[-1]))
    report.figures.update(
        passwords_checked=len(passwords), server_log_lines=len(server_log.splitlines()),
        statements_logged=len(statements), password_statements=len(password_statements),
        alter_role_statements=len(alter_role), scram_logins=len(authenticated),
        function_log_lines=len(function_log.splitlines()),
    )
    return report


#: The story, in order: (title, step). A step fills the report it is given and returns it.
STORY: tuple[tuple[str, Callable[[Story, StepReport], StepReport]], ...] = (
    ("Create the cluster: PostgreSQL with SCRAM-SHA-256, an Aurora-style master and its secret", create_cluster),
    ("As the master, create films and insert a row", create_films),
    (f"Bootstrap {READER} with SELECT on films (the bootstrap function)", bootstrap_reader),
    ("Connect with the secret as the Query Editor does: SELECT works, INSERT is refused", query_editor),
    ('"Rotate immediately", single-user: the four steps', rotate_single_user),
    (f"Alternating users: attach masterarn, rotate twice ({READER} <-> {READER_CLONE})", rotate_alternating),
    (f"Aurora's reader endpoint: {READER}'s secret on a hot standby rotates", rotate_on_the_reader_endpoint),
    ("The servers' logs never contained a password", prove_no_plaintext),
)


# ============================================================================================ running it


def _run_step(step: Callable[[Story, StepReport], StepReport], story: Story, report: StepReport) -> StepReport:
    started = time.perf_counter()
    try:
        step(story, report)
    except LocalToolError:
        raise  # a missing binary or a taken port: the caller reports it with its fix, not as a failed check
    except Exception as exc:
        # Whatever broke (a refused login, a handler error), the story cannot go on: a failed check, with the
        # checks the step had already made kept in the report.
        report.check("the step ran to the end", False, f"{type(exc).__name__}: {exc}")
    report.seconds = time.perf_counter() - started
    return report


def run_demo(
    options: DemoOptions,
    on_step: Callable[[StepReport], None] | None = None,
    while_running: Callable[[DemoReport], None] | None = None,
) -> DemoReport:
    """Play the story; stop at the first step with a failed check. Everything started is stopped on return.

    ``while_running`` is called with the finished report while the servers are still up (``--keep``), and the
    cleanup waits for it to return. Raises :class:`LocalToolError` (after cleaning up) when a component cannot
    start, with the fix in its message.
    """
    bindir = find_bindir(options.pg_bin)
    # What the reader-endpoint act needs, known before anything starts: pg_basebackup next to the server's binaries
    # (a --pg-bin may lack it), and loopback addresses of their own for the endpoints (Linux routes 127.0.0.0/8).
    check_reader_prerequisites(bindir)
    started = time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        story = Story(options, bindir, cleanup)
        reports: list[StepReport] = []
        for number, (title, step) in enumerate(STORY, start=1):
            report = _run_step(step, story, StepReport(number, title))
            reports.append(report)
            if on_step is not None:
                on_step(report)
            if not report.ok:
                break
        skipped = tuple(title for title, _ in STORY[len(reports):])
        result = DemoReport(reports, time.perf_counter() - started, story.resources(), skipped)
        if while_running is not None:
            while_running(result)
    # Everything it names was stopped and deleted: a report that still listed it would point at nothing.
    return dataclasses.replace(result, resources=None, cleaned_up=story.cleaned_up_paths())


__all__ = [
    "Check", "DemoOptions", "DemoReport", "Resources", "StepReport", "Story", "login_accepted", "masked",
    "rotate_immediately", "run_demo",
]
