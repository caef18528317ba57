"""Assertions about what a secret can do against the real server, shared by the end-to-end tests.

They take RDS-format secret dicts (what Secrets Manager holds), so a test can ask "does the value now in
AWSCURRENT actually log in?" without caring how the secret was produced.
"""

from __future__ import annotations

import contextlib
import socket
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
