"""The "Amazon RDS database credentials" secret format, parsed and validated.

The parsed object keeps the whole original document so that keys we do not know (``dbClusterIdentifier``,
a team's own annotations) survive rotation untouched; only ``username`` and ``password`` are ever replaced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from rotation.exceptions import SecretFormatError
from rotation.topology import Endpoint

POSTGRES_ENGINES = frozenset({"postgres", "aurora-postgresql"})
DEFAULT_PORT = 5432
DEFAULT_DBNAME = "postgres"
#: PostgreSQL truncates identifiers at NAMEDATALEN-1 bytes; a silently truncated username would rotate the
#: wrong role.
MAX_IDENTIFIER_BYTES = 63
#: libpq's sslmode values we accept as given. "allow" and "prefer" are refused: they downgrade silently.
SSL_MODES = frozenset({"disable", "require", "verify-ca", "verify-full"})


def check_identifier(name: str, what: str) -> str:
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise SecretFormatError(f"{what} {name!r} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte limit")
    if "\x00" in name:
        raise SecretFormatError(f"{what} contains a NUL character")
    return name


def parse_secret_string(secret_string: str | None, source: str) -> dict[str, Any]:
    """Decode a SecretString into a JSON object, naming ``source`` (e.g. "AWSCURRENT of <arn>") on failure."""
    if secret_string is None:
        raise SecretFormatError(f"{source} has no SecretString (binary secrets are not supported)")
    try:
        document = json.loads(secret_string)
    except ValueError:
        # The decoder's message quotes the offending text, which may be the password: do not chain it.
        raise SecretFormatError(f"{source} is not valid JSON") from None
    if not isinstance(document, dict):
        raise SecretFormatError(f"{source} must be a JSON object, got a JSON {type(document).__name__}")
    return document


def _text(document: Mapping[str, Any], key: str, source: str, *, required: bool, default: str | None = None) -> Any:
    value = document.get(key)
    if value is None:
        if required:
            raise SecretFormatError(f"{source} is missing the key {key!r}")
        return default
    if not isinstance(value, str) or not value:
        # Never echo the value: for "password" that would be the secret itself.
        raise SecretFormatError(f"{source} key {key!r} must be a non-empty string")
    if "\x00" in value:
        # libpq's connection strings end at a NUL: everything after it (sslmode included) would be dropped.
        raise SecretFormatError(f"{source} key {key!r} contains a NUL character")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            # JSON admits escapes such as "\ud800" that no driver or server can encode.
            raise SecretFormatError(f"{source} key {key!r} holds an unpaired surrogate escape, not text") from None
    return value


def _host(document: Mapping[str, Any], source: str, *, required: bool = True) -> Any:
    host = _text(document, "host", source, required=required)
    if host is not None and ("," in host or any(c.isspace() for c in host)):
        # libpq tries each host of a list in turn: N hosts cost N connect timeouts, and only one is the server.
        raise SecretFormatError(f"{source} key 'host' must be one host name or address, not a list")
    return host


def _port(document: Mapping[str, Any], source: str) -> int:
    raw = document.get("port", DEFAULT_PORT)
    if isinstance(raw, bool):
        raise SecretFormatError(f"{source} key 'port' must be a number, got a boolean")
    if isinstance(raw, str) and raw.strip().isdecimal():  # isdigit() admits "²", which int() refuses
        raw = int(raw.strip())
    if not isinstance(raw, int) or not 1 <= raw <= 65535:
        raise SecretFormatError(f"{source} key 'port' must be a TCP port number (1-65535), got {raw!r}")
    return raw


def sslmode_of(document: Mapping[str, Any], source: str) -> str:
    """libpq's sslmode for a secret's ``ssl`` key: absent or true is verify-full, false is disable."""
    raw = document.get("ssl", True)
    if raw is True:
        return "verify-full"
    if raw is False:
        return "disable"
    if isinstance(raw, str):
        lowered = raw.strip().lower()
        if lowered in {"true", "false"}:
            return "verify-full" if lowered == "true" else "disable"
        if lowered in SSL_MODES:
            return lowered
    allowed = "true, false, " + ", ".join(sorted(SSL_MODES))
    raise SecretFormatError(f"{source} key 'ssl' must be one of {allowed}; got {raw!r}")


@dataclass(frozen=True, slots=True)
class DatabaseCredentials:
    """One login: where to connect, as whom, with which password and TLS mode."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)
    dbname: str = DEFAULT_DBNAME
    sslmode: str = "verify-full"
    masterarn: str | None = None
    #: The full original secret document, kept so that rotation preserves every key.
    document: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:  # dataclass repr would be fine, but be explicit: no password, ever
        return (
            f"DatabaseCredentials(username={self.username!r}, host={self.host!r}, port={self.port}, "
            f"dbname={self.dbname!r}, sslmode={self.sslmode!r}, password=<redacted>)"
        )

    __str__ = __repr__

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)

    def at(self, endpoint: Endpoint, sslmode: str) -> DatabaseCredentials:
        """The same login, made at another server address and TLS mode (the admin's, to prove a password there)."""
        return DatabaseCredentials(endpoint.host, endpoint.port, self.username, self.password, self.dbname, sslmode,
                                   self.masterarn, self.document)

    @classmethod
    def from_secret(cls, document: Mapping[str, Any], source: str) -> DatabaseCredentials:
        """Validate a full RDS-format user secret."""
        engine = document.get("engine")
        if engine is None:
            raise SecretFormatError(
                f"{source} is missing the key 'engine' (expected one of {', '.join(sorted(POSTGRES_ENGINES))})"
            )
        if not isinstance(engine, str) or engine not in POSTGRES_ENGINES:
            raise SecretFormatError(
                f"{source} has engine {engine!r}; this function rotates "
                f"{' or '.join(sorted(POSTGRES_ENGINES))} secrets only"
            )
        masterarn = _text(document, "masterarn", source, required=False)
        return cls(
            host=_host(document, source),
            port=_port(document, source),
            username=check_identifier(_text(document, "username", source, required=True), f"{source} username"),
            password=_text(document, "password", source, required=True),
            dbname=_text(document, "dbname", source, required=False, default=DEFAULT_DBNAME),
            sslmode=sslmode_of(document, source),
            masterarn=masterarn,
            document=MappingProxyType(dict(document)),
        )

    @classmethod
    def admin_from_secret(cls, document: Mapping[str, Any], source: str, *, endpoint: Endpoint, sslmode: str,
                          dbname: str) -> DatabaseCredentials:
        """Validate an admin secret's login, which may hold only username/password (an RDS-managed master secret).

        Where and how to connect is decided by the caller from the admin side only (rotation.policy): never from
        the user secret, which someone with far less privilege may have written.
        """
        engine = document.get("engine", "postgres")
        if not isinstance(engine, str) or engine not in POSTGRES_ENGINES:
            raise SecretFormatError(f"{source} has engine {engine!r}; expected a PostgreSQL secret")
        return cls(
            host=endpoint.host,
            port=endpoint.port,
            username=check_identifier(_text(document, "username", source, required=True), f"{source} username"),
            password=_text(document, "password", source, required=True),
            # The admin logs into the user's database: roles are cluster-wide, and the user's database exists.
            dbname=dbname,
            sslmode=sslmode,
            document=MappingProxyType(dict(document)),
        )

    @staticmethod
    def admin_location(document: Mapping[str, Any], source: str) -> tuple[Endpoint | None, str]:
        """The endpoint and TLS mode an admin secret names itself (no host: None); absent ``ssl`` is verify-full."""
        host = _host(document, source, required=False)
        endpoint = None if host is None else Endpoint(host, _port(document, source))
        return endpoint, sslmode_of(document, source)

    def replaced(self, *, username: str | None = None, password: str | None = None) -> dict[str, Any]:
        """The secret document with a new username and/or password; every other key is kept as is."""
        document = dict(self.document)
        if username is not None:
            document["username"] = username
        if password is not None:
            document["password"] = password
        return document
