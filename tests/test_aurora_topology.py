"""Aurora as it really runs: a reader endpoint as the secret's host, a writer failover at every point of a
rotation, and a connection storm against a small max_connections, on real servers.

The topology (rotation_tools/local/topology.py) is a writer and its streaming hot standby behind a cluster and a
reader endpoint with Aurora-style names; the function reaches those names through the database adapter's
``host_addresses`` seam (libpq's ``hostaddr``), as production reaches them through DNS. Rotations are played as
the service plays them (tests/service.py), through the handler. Every scenario ends with what users care about:
the new AWSCURRENT logs in (on the writer and on the reader), the old single-user password is refused, and
AWSCURRENT was never locked out along the way.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from helpers import can_login
from service import ALL_STEPS, invoke, resume

import rotation.database
from rotation.database import APPLICATION_NAME
from rotation.events import Step
from rotation.exceptions import RotationError, TooManyConnections, WriterUnknown
from rotation_tools.local.aurora import create_app_role, setup_aurora_like
from rotation_tools.local.postgres import PostgresServer, start_postgres
from rotation_tools.local.secretsmanager import LocalSecretsManager
from rotation_tools.local.topology import READER_HOST, WRITER_HOST, Topology, start_topology

pytestmark = pytest.mark.database

SINGLE, ALTERNATING = "single-user", "alternating-users"
CUSTOM_HOST = WRITER_HOST.replace(".cluster-", ".cluster-custom-", 1)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared_topology() -> Iterator[Topology]:
    """Writer + hot standby for the scenarios that do not fail over."""
    with start_topology() as topology:
        yield topology


@pytest.fixture
def fresh_topology() -> Iterator[Topology]:
    """A topology of its own for a scenario that fails over (a couple of seconds to build)."""
    with start_topology(log_statement="none") as topology:
        yield topology


def route(monkeypatch: pytest.MonkeyPatch, addresses: dict[str, str], **options: Any) -> None:
    """The function's adapter resolves the topology's names to its loopback addresses (the test seam)."""
    monkeypatch.setattr(rotation.database, "PostgresDatabase",
                        functools.partial(rotation.database.PostgresDatabase, host_addresses=addresses, **options))


@dataclass
class Cluster:
    """An Aurora-like cluster (non-superuser CREATEROLE master) on a topology, and secrets aimed at its names."""

    topology: Topology
    sm: LocalSecretsManager
    master_local: dict[str, Any]
    master_arn: str
    addresses: dict[str, str] = field(default_factory=dict)

    def on(self, secret: dict[str, Any], host: str) -> dict[str, Any]:
        return {**secret, "host": host, "port": self.topology.port, "ssl": False}

    def user(self, strategy: str, host: str) -> tuple[str, dict[str, Any]]:
        local = create_app_role(self.topology.writer, self.master_local, f"app_{uuid.uuid4().hex[:8]}")
        secret = self.on(local, host)
        if strategy == ALTERNATING:
            secret["masterarn"] = self.master_arn
        self.topology.wait_replayed()
        return self.sm.create_secret(f"aurora/{uuid.uuid4().hex}", secret), secret

    def logs_in(self, secret: dict[str, Any], host: str | None = None) -> bool:
        host = host or secret["host"]
        return can_login({**secret, "host": host}, hostaddr=self.addresses[host])


def make_cluster(topology: Topology, sm: LocalSecretsManager, monkeypatch: pytest.MonkeyPatch,
                 **options: Any) -> Cluster:
    master_local = setup_aurora_like(topology.writer)
    topology.wait_replayed()
    addresses = {**topology.host_addresses(), CUSTOM_HOST: topology.reader_endpoint.address}
    master = {**master_local, "host": WRITER_HOST, "port": topology.port, "ssl": False,
              "dbClusterIdentifier": WRITER_HOST.split(".", 1)[0]}
    master_arn = sm.create_secret(f"aurora/master-{uuid.uuid4().hex[:8]}", master)
    route(monkeypatch, addresses, **options)
    return Cluster(topology, sm, master_local, master_arn, addresses)


@pytest.fixture
def shared_cluster(shared_topology: Topology, sm: LocalSecretsManager, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    return make_cluster(shared_topology, sm, monkeypatch)


# --------------------------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
def test_a_secret_on_the_reader_endpoint_rotates_and_its_new_password_logs_in_on_the_reader(
    shared_cluster: Cluster, sm: LocalSecretsManager, strategy: str
) -> None:
    cluster = shared_cluster
    arn, original = cluster.user(strategy, READER_HOST)
    token = sm.stage_pending(arn)
    for step in ALL_STEPS:
        invoke(step, arn, token)
        assert cluster.logs_in(sm.value(arn, "AWSCURRENT")) or (strategy == SINGLE and step in (Step.SET, Step.TEST))
    current = sm.value(arn, "AWSCURRENT")
    assert current["host"] == READER_HOST, "the secret's host is never rewritten"
    assert current["password"] != original["password"]
    # testSecret waited for the change to reach the reader: no wait is needed here.
    assert cluster.logs_in(current, READER_HOST)
    assert cluster.logs_in(current, WRITER_HOST)
    if strategy == SINGLE:
        cluster.topology.wait_replayed()
        assert not cluster.logs_in(original, READER_HOST)
        assert not cluster.logs_in(original, WRITER_HOST)
    else:
        assert current["username"] == original["username"] + "_clone"


def test_a_custom_endpoint_without_a_way_to_find_the_writer_is_refused_and_nothing_changes(
    shared_cluster: Cluster, sm: LocalSecretsManager
) -> None:
    cluster = shared_cluster
    arn, original = cluster.user(SINGLE, CUSTOM_HOST)
    token = sm.stage_pending(arn)
    invoke(Step.CREATE, arn, token)
    with pytest.raises(WriterUnknown, match="nothing was changed") as caught:
        invoke(Step.SET, arn, token)
    assert original["password"] not in str(caught.value)
    assert cluster.logs_in(original, WRITER_HOST), "nothing changed"
    assert sm.value(arn, "AWSCURRENT") == original


# --------------------------------------------------------------------------------------------- failover


@dataclass
class FailoverInStep:
    """Starts a failover the moment the function does ``trigger`` inside ``step`` (its connection, or its
    role-changing statement), and lets the function go on while the writer is down and the replica promotes."""

    topology: Topology
    step: Step
    trigger: str  # "connect" or "statement"
    pause_s: float = 0.5
    fired: threading.Event = field(default_factory=threading.Event)
    current_step: Step | None = None
    thread: threading.Thread | None = None

    def _failover(self, writer_down: threading.Event) -> None:
        def down_for_a_while() -> None:
            writer_down.set()
            time.sleep(self.pause_s)

        self.topology.failover(between=down_for_a_while)

    def _fire(self) -> None:
        if self.fired.is_set() or self.current_step is not self.step:
            return
        self.fired.set()
        writer_down = threading.Event()
        self.thread = threading.Thread(target=self._failover, args=(writer_down,), name="failover")
        self.thread.start()
        writer_down.wait(timeout=60)

    @contextlib.contextmanager
    def installed(self) -> Iterator[FailoverInStep]:
        original_connect, original_execute = psycopg.connect, psycopg.Connection.execute
        ours: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()

        def connect(*args: Any, **kwargs: Any) -> psycopg.Connection:
            if kwargs.get("application_name") != APPLICATION_NAME:
                return original_connect(*args, **kwargs)
            if self.trigger == "connect":
                self._fire()
            conn = original_connect(*args, **kwargs)
            ours.add(conn)
            return conn

        def execute(conn: psycopg.Connection, query: Any, *args: Any, **kwargs: Any) -> Any:
            if self.trigger == "statement" and conn in ours and isinstance(query, psycopg.sql.Composable):
                if query.as_string(conn).upper().startswith(("ALTER ROLE", "CREATE ROLE")):
                    self._fire()
            return original_execute(conn, query, *args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(psycopg, "connect", connect)
            patch.setattr(psycopg.Connection, "execute", execute)
            try:
                yield self
            finally:
                if self.thread is not None:
                    self.thread.join(timeout=120)


POINTS = {
    # Between steps: the failover completes while the service is between invocations.
    "after-createSecret": (Step.CREATE, None),
    "after-setSecret": (Step.SET, None),
    "after-testSecret": (Step.TEST, None),
    # Inside a step: the writer goes away as the function works, and the replica is promoted while it retries.
    "inside-setSecret-at-the-password-change": (Step.SET, "statement"),
    "inside-setSecret-at-login": (Step.SET, "connect"),
    "inside-testSecret-at-login": (Step.TEST, "connect"),
}


@pytest.mark.parametrize("strategy", [SINGLE, ALTERNATING])
@pytest.mark.parametrize("point", list(POINTS))
def test_a_writer_failover_at_any_point_of_a_rotation_is_ridden_out_without_a_lockout(
    fresh_topology: Topology, sm: LocalSecretsManager, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, strategy: str, point: str
) -> None:
    cluster = make_cluster(fresh_topology, sm, monkeypatch)
    arn, original = cluster.user(strategy, WRITER_HOST)
    step_at, trigger = POINTS[point]
    injector = FailoverInStep(fresh_topology, step_at, trigger or "none")
    token = sm.stage_pending(arn)
    with injector.installed():
        for step in ALL_STEPS:
            injector.current_step = step
            invoke(step, arn, token)  # no step fails: the function rides the failover out inside its budget
            if trigger is None and step is step_at:
                fresh_topology.failover()
            in_window = strategy == SINGLE and step in (Step.SET, Step.TEST)
            assert in_window or cluster.logs_in(sm.value(arn, "AWSCURRENT")), f"AWSCURRENT locked out after {step}"
    if trigger is not None:
        assert injector.fired.is_set(), "the failover happened inside the step"
        retries = [record.getMessage() for record in caplog.records if "transient failure" in record.getMessage()]
        assert retries, "the function retried through the failover"
        assert all("failover" in message for message in retries)
    assert fresh_topology.reader is None and len(fresh_topology.former) == 1, "the replica was promoted"
    current = sm.value(arn, "AWSCURRENT")
    assert current["password"] != original["password"]
    assert cluster.logs_in(current, WRITER_HOST)
    assert cluster.logs_in(current, READER_HOST)
    if strategy == SINGLE:
        assert not cluster.logs_in(original, WRITER_HOST)


def test_a_failover_longer_than_the_budget_fails_the_step_clearly_and_the_services_retry_converges(
    fresh_topology: Topology, sm: LocalSecretsManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = make_cluster(fresh_topology, sm, monkeypatch, retry_budget_s=1.0)
    arn, original = cluster.user(SINGLE, WRITER_HOST)
    token = sm.stage_pending(arn)
    invoke(Step.CREATE, arn, token)
    fresh_topology.stop_writer()  # the writer is gone and nothing is promoted yet
    with pytest.raises(RotationError, match="failover in progress, Secrets Manager will retry"):
        invoke(Step.SET, arn, token)
    fresh_topology.promote_reader()
    fresh_topology.follow_new_writer()
    resume(arn, token)
    current = sm.value(arn, "AWSCURRENT")
    assert cluster.logs_in(current, WRITER_HOST)
    assert not cluster.logs_in(original, WRITER_HOST)


# --------------------------------------------------------------------------------------------- storms


@pytest.fixture
def small_server() -> Iterator[PostgresServer]:
    """max_connections 8, of which 2 are reserved for the superuser: 6 slots for everyone else."""
    with start_postgres(log_statement="none",
                        settings={"max_connections": 8, "superuser_reserved_connections": 2}) as server:
        yield server


def hold_every_slot(server: PostgresServer, secret: dict[str, Any]) -> list[psycopg.Connection]:
    """The applications take every connection slot left (until the server answers 'too many clients')."""
    held: list[psycopg.Connection] = []
    while True:
        try:
            held.append(psycopg.connect(host=server.host, port=server.port, user=secret["username"],
                                        password=secret["password"], dbname=secret["dbname"], sslmode="disable",
                                        autocommit=True))
        except psycopg.OperationalError:
            return held


def storm_secrets(server: PostgresServer, sm: LocalSecretsManager, count: int) -> list[tuple[str, dict[str, Any]]]:
    master = setup_aurora_like(server)
    master_arn = sm.create_secret(f"storm/master-{uuid.uuid4().hex[:8]}", {**master, "ssl": False})
    made = []
    for n in range(count):
        secret = {**create_app_role(server, master, f"storm_{n}_{uuid.uuid4().hex[:6]}"), "ssl": False}
        if n % 2:
            secret["masterarn"] = master_arn
        made.append((sm.create_secret(f"storm/{uuid.uuid4().hex}", secret), secret))
    return made


def test_a_connection_storm_is_ridden_out_and_every_secret_rotates(
    small_server: PostgresServer, sm: LocalSecretsManager
) -> None:
    secrets = storm_secrets(small_server, sm, 8)
    app = secrets[0][1]
    tokens = {arn: sm.stage_pending(arn) for arn, _ in secrets}
    held = hold_every_slot(small_server, app)
    log_before = len(small_server.server_log())
    failures: list[str] = []

    def rotate(arn: str) -> None:
        for step in ALL_STEPS:
            try:
                invoke(step, arn, tokens[arn])
            except RotationError as exc:
                failures.append(f"{step}: {exc.code}")
                raise

    with contextlib.ExitStack() as stack:
        threads = [threading.Thread(target=rotate, args=(arn,)) for arn, _ in secrets]
        for thread in threads:
            thread.start()
        stack.callback(lambda: [thread.join(timeout=120) for thread in threads])
        time.sleep(1.0)  # every rotation meets a full server, then the applications let go of most slots
        for conn in held[:-1]:
            conn.close()
    held[-1].close()
    assert failures == [], "the function's own retries rode out the storm: the service needed none"
    assert "too many clients" in small_server.server_log()[log_before:] or \
        "connection slots are reserved" in small_server.server_log()[log_before:], "the storm happened"
    for arn, original in secrets:
        current = sm.value(arn, "AWSCURRENT")
        assert can_login(current), f"{original['username']}: the new AWSCURRENT logs in"
        if "masterarn" not in original:
            assert not can_login(original)


def test_a_storm_longer_than_the_budget_fails_clearly_and_the_services_retry_converges(
    small_server: PostgresServer, sm: LocalSecretsManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    route(monkeypatch, {}, retry_budget_s=1.0)
    (arn, original), = storm_secrets(small_server, sm, 1)
    token = sm.stage_pending(arn)
    invoke(Step.CREATE, arn, token)
    held = hold_every_slot(small_server, original)
    try:
        with pytest.raises(TooManyConnections, match="Secrets Manager will retry"):
            invoke(Step.SET, arn, token)
    finally:
        for conn in held:
            conn.close()
    assert can_login(original), "nothing changed while the server was full"
    resume(arn, token)
    assert can_login(sm.value(arn, "AWSCURRENT"))
    assert not can_login(original)
