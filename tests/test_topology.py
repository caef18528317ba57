"""The local Aurora-shaped topology, and the real servers' words for every transient failure we retry.

The topology (rotation_tools/local/topology.py) is what the reader-endpoint and failover tests stand on, so it is
proven here first: the reader is a real hot standby (refuses writes with 25006, replays the writer's password
changes), the endpoints forward and follow a failover, and a promoted replica keeps the roles.

Each scenario also feeds the failure the real server produced to :func:`rotation.transient.classify`: the
classification table in tests/test_transient.py is only as good as its match with what PostgreSQL says.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator

import psycopg
import psycopg.errors
import pytest

from rotation.transient import Transient, classify
from rotation_tools.local.topology import Endpoint, Topology, in_recovery, start_topology

pytestmark = pytest.mark.database


def transient_kind(exc: psycopg.Error, *, writes: bool) -> Transient | None:
    return classify(exc.sqlstate, str(exc), writes=writes)


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    """A writer and its hot standby, shared by the tests that do not fail over."""
    with start_topology(settings={"max_connections": 20}) as started:
        yield started


@pytest.fixture
def fresh_topology() -> Iterator[Topology]:
    """A topology of its own, for a test that fails over (about two seconds to build)."""
    with start_topology(log_statement="none") as started:
        yield started


def make_login(topology: Topology, password: str = "first-password") -> str:
    name = f"app_{uuid.uuid4().hex[:8]}"
    with topology.connect(topology.writer_host) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    topology.wait_replayed()
    return name


def can_login(topology: Topology, host: str, user: str, password: str) -> bool:
    try:
        with topology.connect(host, user, password):
            return True
    except psycopg.OperationalError as exc:
        if "password authentication failed" in str(exc):
            return False
        raise


# ------------------------------------------------------------------------------------------- the reader


def test_the_reader_endpoint_is_a_hot_standby_that_refuses_writes_with_25006(topology: Topology) -> None:
    name = make_login(topology)
    with topology.connect(topology.reader_host, name, "first-password") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as caught:
            conn.execute(f"ALTER ROLE {name} PASSWORD 'second-password'")
    assert caught.value.sqlstate == "25006"
    assert transient_kind(caught.value, writes=True) is Transient.FAILOVER
    assert transient_kind(caught.value, writes=False) is None


def test_a_password_changed_on_the_writer_reaches_the_reader(topology: Topology) -> None:
    name = make_login(topology)
    with topology.connect(topology.writer_host) as conn:
        conn.execute(f"ALTER ROLE {name} PASSWORD 'second-password'")
    topology.wait_replayed()
    assert can_login(topology, topology.reader_host, name, "second-password")
    assert not can_login(topology, topology.reader_host, name, "first-password")


def test_the_endpoints_share_one_port_and_map_aurora_names_to_their_own_loopback_addresses(
    topology: Topology,
) -> None:
    addresses = topology.host_addresses()
    assert set(addresses) == {topology.writer_host, topology.reader_host}
    assert ".cluster-ro-" in topology.reader_host and ".cluster-ro-" not in topology.writer_host
    assert len(set(addresses.values())) == 2
    assert topology.cluster_endpoint.port == topology.reader_endpoint.port == topology.port
    with topology.connect(topology.writer_host) as writer, topology.connect(topology.reader_host) as reader:
        assert writer.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        assert reader.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_too_many_connections_is_the_servers_53300_and_classified_as_such(topology: Topology) -> None:
    name = make_login(topology)
    held: list[psycopg.Connection] = []
    try:
        with pytest.raises(psycopg.OperationalError) as caught:
            for _ in range(25):  # max_connections is 20, minus the superuser's reserved slots
                held.append(topology.writer.connect(name, "first-password"))
    finally:
        for conn in held:
            conn.close()
    assert transient_kind(caught.value, writes=False) is Transient.TOO_MANY_CONNECTIONS
    assert 10 < len(held) < 20


# ------------------------------------------------------------------------------------------- failover


def test_failover_promotes_the_reader_and_the_cluster_endpoint_follows_it(fresh_topology: Topology) -> None:
    topology = fresh_topology
    name = make_login(topology)
    old_writer, replica = topology.writer, topology.reader
    assert replica is not None
    session = topology.connect(topology.writer_host)
    topology.failover()
    with pytest.raises(psycopg.OperationalError) as caught:
        session.execute("SELECT 1")
    assert transient_kind(caught.value, writes=False) is Transient.FAILOVER
    assert not old_writer.running
    assert topology.writer is replica and not in_recovery(replica)
    # The role made before the failover survived it, and the new writer takes a password change.
    with topology.connect(topology.writer_host) as conn:
        conn.execute(f"ALTER ROLE {name} PASSWORD 'after-failover'")
    assert can_login(topology, topology.writer_host, name, "after-failover")
    # With no replica left, the reader endpoint leads to the writer, as Aurora's does.
    assert can_login(topology, topology.reader_host, name, "after-failover")


@pytest.mark.parametrize("stop_mode", ["fast", "immediate"], ids=["fast-shutdown", "crash"])
def test_connecting_while_the_writer_is_down_fails_transiently(fresh_topology: Topology, stop_mode: str) -> None:
    topology = fresh_topology
    failures: list[psycopg.Error] = []

    def connect_while_down() -> None:
        with pytest.raises(psycopg.OperationalError) as caught:
            topology.connect(topology.writer_host)
        failures.append(caught.value)

    topology.failover(stop_mode=stop_mode, between=connect_while_down)
    assert len(failures) == 1
    assert transient_kind(failures[0], writes=True) is Transient.FAILOVER
    with topology.connect(topology.writer_host) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_fast_shutdown_terminates_sessions_with_57p01(fresh_topology: Topology) -> None:
    topology = fresh_topology
    session = topology.writer.connect()  # directly, so the server's own FATAL reaches us through no forwarder
    stopper = threading.Thread(target=topology.stop_writer, kwargs={"mode": "fast"})
    stopper.start()
    stopper.join(timeout=60)
    with pytest.raises(psycopg.OperationalError) as caught:
        session.execute("SELECT 1")
    session.close()
    assert transient_kind(caught.value, writes=False) is Transient.FAILOVER


def test_a_cluster_endpoint_still_naming_a_standby_refuses_writes_with_25006(fresh_topology: Topology) -> None:
    topology = fresh_topology
    name = make_login(topology)
    topology.point_cluster_endpoint_at_reader()
    with topology.connect(topology.writer_host) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as caught:
            conn.execute(f"ALTER ROLE {name} PASSWORD 'nope'")
    assert transient_kind(caught.value, writes=True) is Transient.FAILOVER


# ------------------------------------------------------------------------------------------- the forwarder


def test_an_endpoint_is_bounded_and_refuses_when_it_points_nowhere() -> None:
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        target = upstream.getsockname()
        with Endpoint("test", "127.0.0.1", 0, target, max_connections=2).start() as endpoint:
            clients = [socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) for _ in range(3)]
            accepted = [upstream.accept()[0] for _ in range(2)]
            # The third is closed by the forwarder at once: reading gives EOF instead of blocking.
            assert clients[2].recv(1) == b""
            assert endpoint.accepted == 2 and endpoint.refused == 1
            clients[0].sendall(b"ping")
            assert accepted[0].recv(4) == b"ping"
            endpoint.repoint(None)
            late = socket.create_connection(("127.0.0.1", endpoint.port), timeout=5)
            assert late.recv(1) == b""
            assert endpoint.open_connections == 0
            for sock in (*clients, *accepted, late):
                sock.close()
