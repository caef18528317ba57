"""Assertions about what a secret can do against the real server, shared by the end-to-end tests.

They take RDS-format secret dicts (what Secrets Manager holds), so a test can ask "does the value now in
AWSCURRENT actually log in?" without caring how the secret was produced.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import psycopg.errors
import pytest

from rotation_tools.local.aurora import login_accepted, secret_conninfo


def connect(secret: Mapping[str, Any], **overrides: Any) -> psycopg.Connection[Any]:
    """An autocommit connection with the secret's credentials (``verify-full`` when it says ``ssl``)."""
    return psycopg.connect(**secret_conninfo(secret, **overrides), autocommit=True)


def can_login(secret: Mapping[str, Any], **overrides: Any) -> bool:
    """True if the credentials are accepted, False if the server refuses them.

    Anything else (server down, TLS failure, unknown database) propagates: a test asserting "the old password
    no longer works" must not pass because nothing works.
    """
    return login_accepted(secret, **overrides)


def assert_refused_insert(secret: Mapping[str, Any]) -> None:
    """The role behind ``secret`` may read ``films`` but writing is refused with SQLSTATE 42501."""
    with connect(secret) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            conn.execute("INSERT INTO films (code, title, did) VALUES ('XX001', 'Nope', 1)")
    assert caught.value.sqlstate == "42501"


def select_titles(secret: Mapping[str, Any]) -> list[str]:
    with connect(secret) as conn:
        return [row[0] for row in conn.execute("SELECT title FROM films ORDER BY code")]


# --- network paths that fail in the three ways an operator meets ----------------------------------------

@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections at once: bound (so nobody else takes it), not listening."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """Accepts TCP connections (the kernel does) and never says a word: a hung proxy, a half-open path."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@contextlib.contextmanager
def blackhole_listener() -> Iterator[int]:
    """Connection attempts get no answer at all, as with a security group that drops them.

    A listener with backlog 0 holding one unaccepted connection makes the kernel drop every further SYN.
    """
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        yield port


# --- a relay an attacker could put between the function and the server ----------------------------------

_SSL_REQUEST_CODE = 80877103
_PROTOCOL_3 = 196608


class RecordingRelay:
    """A TCP relay on 127.0.0.1 that forwards to a server and records the first packet of every connection.

    What an attacker who can run a process the function reaches would do: a plaintext startup packet shows
    who logs in through it, an SSLRequest shows the client insisted on TLS. Bounded: it stops with the block.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.first_packets: list[bytes] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> RecordingRelay:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self._target, timeout=5) as server:
            client.settimeout(0.2)
            server.settimeout(0.2)
            first = True
            while not self._stop.is_set():
                for source, sink in ((client, server), (server, client)):
                    try:
                        data = source.recv(65536)
                    except TimeoutError:
                        continue
                    except OSError:
                        return
                    if not data:
                        return
                    if first and source is client:
                        self.first_packets.append(data)
                        first = False
                    sink.sendall(data)

    @property
    def tls_requests(self) -> int:
        return sum(1 for packet in self.first_packets if _code(packet) == _SSL_REQUEST_CODE)

    @property
    def plaintext_logins(self) -> list[str]:
        """The user names of startup packets sent in plaintext through the relay."""
        users = []
        for packet in self.first_packets:
            if _code(packet) != _PROTOCOL_3:
                continue
            fields = packet[8:].split(b"\x00")
            pairs = dict(zip(fields[::2], fields[1::2], strict=False))
            users.append(pairs.get(b"user", b"").decode(errors="replace"))
        return users


def _code(packet: bytes) -> int | None:
    return struct.unpack("!I", packet[4:8])[0] if len(packet) >= 8 else None
