"""The bootstrap request: the direct event or a custom resource's ResourceProperties, parsed and checked once."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rotation.config import StrategyName
from rotation.credentials import MAX_IDENTIFIER_BYTES, SSL_MODES
from rotation.exceptions import InvalidEventError
from rotation.policy import CREATED_BY_TAG
from rotation.protocol import CLONE_SUFFIX

GROUP_ROLE_SUFFIX = "_readonly"
DEFAULT_SCHEMAS = ("public",)

_REQUIRED_KEYS = ("MasterSecretId", "Username")
_OPTIONAL_KEYS = (
    "DBName", "Host", "Port", "SSL", "Schemas", "Tables", "GroupRole", "SecretName", "KmsKeyId", "Tags",
    "Strategy", "RemoveOnDelete", "ReadOnlyTransactions",
)
#: Keys CloudFormation adds to ResourceProperties itself.
_CLOUDFORMATION_KEYS = ("ServiceToken", "ServiceTimeout")
_SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
_STRATEGIES = (StrategyName.SINGLE_USER, StrategyName.ALTERNATING_USERS)
# One part of a table name: "quoted" (with "" for a quote) or bare (folded to lower case, as SQL does).
_NAME_PART = r'(?:"(?:[^"]|"")+"|[^".\s]+)'
_TABLE_NAME = re.compile(rf"\s*({_NAME_PART})\.({_NAME_PART})\s*")


@dataclass(frozen=True, slots=True, order=True)
class TableName:
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def _unquote(part: str) -> str:
    if part.startswith('"'):
        return part[1:-1].replace('""', '"')
    return part.lower()


class _Properties:
    """Typed reads of the event's keys, each failure naming the key."""

    def __init__(self, event: Any, what: str) -> None:
        if not isinstance(event, Mapping):
            raise InvalidEventError(f"{what} must be a JSON object, got {type(event).__name__}")
        unknown = sorted(set(event) - {*_REQUIRED_KEYS, *_OPTIONAL_KEYS, *_CLOUDFORMATION_KEYS})
        if unknown:
            raise InvalidEventError(
                f"{what} has unknown key(s) {', '.join(map(repr, unknown))}; accepted keys: "
                f"{', '.join((*_REQUIRED_KEYS, *_OPTIONAL_KEYS))}"
            )
        self._event = event
        self._what = what

    def bad(self, key: str, expected: str) -> InvalidEventError:
        return InvalidEventError(f"{self._what} key {key!r} must be {expected}")

    def text(self, key: str) -> str | None:
        value = self._event.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.bad(key, "a non-empty string")
        return value.strip()

    def required_text(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            raise InvalidEventError(f"{self._what} is missing the key {key!r}")
        return value

    def required_identifier(self, key: str) -> str:
        return self._identifier(key, self.required_text(key))

    def identifier(self, key: str, *, default: str) -> str:
        return self._identifier(key, self.text(key) or default)

    def _identifier(self, key: str, value: str) -> str:
        if len(value.encode()) > MAX_IDENTIFIER_BYTES:
            raise self.bad(key, f"at most {MAX_IDENTIFIER_BYTES} bytes long (PostgreSQL's limit), got {value!r}")
        if "\x00" in value:
            raise self.bad(key, "free of NUL characters")
        if value.startswith("pg_"):
            raise self.bad(key, f"a name not starting with 'pg_' (reserved by PostgreSQL), got {value!r}")
        return value

    def port(self, key: str) -> int | None:
        value = self._event.get(key)
        if value is None:
            return None
        # CloudFormation passes every property value as a string.
        if isinstance(value, str) and value.strip().isdecimal():  # not isdigit: int("²") fails
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise self.bad(key, f"a TCP port number (1-65535), got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._event.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise self.bad(key, f"true or false, got {value!r}")

    def names(self, key: str) -> tuple[str, ...] | None:
        value = self._event.get(key)
        if value is None:
            return None
        if isinstance(value, str):  # a CloudFormation CommaDelimitedList passed as a plain string
            value = [part for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.bad(key, "a non-empty list of non-empty strings")
        return tuple(dict.fromkeys(v.strip() for v in value))

    def ssl(self, key: str) -> bool | str | None:
        value = self._event.get(key)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "false"):
                return lowered == "true"
            if lowered in SSL_MODES:
                return lowered
        raise self.bad(key, f"true, false or one of {', '.join(sorted(SSL_MODES))} (the secret's 'ssl' key)")

    def tags(self, key: str) -> tuple[tuple[str, str], ...]:
        value = self._event.get(key)
        if value is None:
            return ()
        if isinstance(value, Mapping):
            pairs = list(value.items())
        elif isinstance(value, list) and all(isinstance(t, Mapping) and set(t) == {"Key", "Value"} for t in value):
            pairs = [(t["Key"], t["Value"]) for t in value]
        else:
            raise self.bad(key, 'an object {"key": "value"} or a list of {"Key": ..., "Value": ...}')
        if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in pairs):
            raise self.bad(key, "tags with non-empty string keys and string values")
        if any(k == CREATED_BY_TAG[0] for k, _ in pairs):
            # The mark a Delete trusts: only the bootstrap's own CreateSecret sets it.
            raise self.bad(key, f"free of the reserved key {CREATED_BY_TAG[0]!r}")
        return tuple(pairs)


def _table_name(raw: str, what: str) -> TableName:
    match = _TABLE_NAME.fullmatch(raw)
    if match is None:
        raise InvalidEventError(
            f"{what} key 'Tables' has {raw!r}; each entry must be schema.table (quote names that need it: "
            '"My Schema"."My Table")'
        )
    schema, name = (_unquote(part) for part in match.groups())
    return TableName(schema, name)


@dataclass(frozen=True, slots=True)
class BootstrapRequest:
    """The bootstrap event (or a custom resource's ResourceProperties), parsed once."""

    master_secret_id: str
    username: str
    group_role: str
    strategy: StrategyName
    schemas: tuple[str, ...] = DEFAULT_SCHEMAS
    #: None: every table and sequence in ``schemas``; otherwise exactly these.
    tables: tuple[TableName, ...] | None = None
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    #: The secret's ``ssl`` key (True, False or an sslmode); None: as in the master secret.
    ssl: bool | str | None = None
    secret_name: str | None = None
    kms_key_id: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    remove_on_delete: bool = False
    #: ``default_transaction_read_only = on`` on the login roles too (opt-in; the group always has it).
    read_only_transactions: bool = False

    @property
    def clone(self) -> str:
        """The alternating users' second login (AWS's convention); may exceed 63 bytes for single-user."""
        return self.username + CLONE_SUFFIX

    @classmethod
    def parse(cls, event: Any, what: str = "Bootstrap event") -> BootstrapRequest:
        props = _Properties(event, what)
        username = props.required_identifier("Username")
        default_group = username + GROUP_ROLE_SUFFIX
        if props.text("GroupRole") is None and len(default_group.encode()) > MAX_IDENTIFIER_BYTES:
            raise props.bad("GroupRole", f"given: {username!r} is too long to derive {default_group!r} from it")
        group_role = props.identifier("GroupRole", default=default_group)
        raw_strategy = props.text("Strategy") or StrategyName.SINGLE_USER.value
        try:
            strategy = StrategyName(raw_strategy.lower())
        except ValueError:
            strategy = None
        if strategy not in _STRATEGIES:
            raise props.bad("Strategy", f"one of {', '.join(_STRATEGIES)}, got {raw_strategy!r}")
        raw_tables = props.names("Tables")
        tables = None if raw_tables is None else tuple(_table_name(t, what) for t in raw_tables)
        schemas = props.names("Schemas")
        if tables:
            # USAGE is needed on every listed table's schema, whether or not Schemas names it.
            schemas = tuple(dict.fromkeys((*(schemas or ()), *(t.schema for t in tables))))
        elif schemas is None:
            schemas = DEFAULT_SCHEMAS
        for schema in schemas:
            if len(schema.encode()) > MAX_IDENTIFIER_BYTES:
                raise props.bad("Schemas", f"a list of names of at most {MAX_IDENTIFIER_BYTES} bytes")
        secret_name = props.text("SecretName")
        if secret_name is not None and not _SECRET_NAME.fullmatch(secret_name):
            raise props.bad("SecretName", "1-512 characters from A-Z a-z 0-9 / _ + = . @ -")
        request = cls(
            master_secret_id=props.required_text("MasterSecretId"),
            username=username,
            group_role=group_role,
            strategy=strategy,
            schemas=schemas,
            tables=tables,
            host=props.text("Host"),
            port=props.port("Port"),
            dbname=props.text("DBName"),
            ssl=props.ssl("SSL"),
            secret_name=secret_name,
            kms_key_id=props.text("KmsKeyId"),
            tags=props.tags("Tags"),
            remove_on_delete=props.boolean("RemoveOnDelete", False),
            read_only_transactions=props.boolean("ReadOnlyTransactions", False),
        )
        request._check_names(props)
        return request

    def _check_names(self, props: _Properties) -> None:
        if self.group_role == self.username:
            raise props.bad("GroupRole", f"different from Username ({self.username!r}): privileges live on the "
                                         "group so that the alternating users' clone shares them")
        if self.strategy is StrategyName.ALTERNATING_USERS:
            if self.username.endswith(CLONE_SUFFIX):
                raise props.bad("Username", f"a name not ending in {CLONE_SUFFIX!r} (alternating users adds it)")
            if len(self.clone.encode()) > MAX_IDENTIFIER_BYTES:
                raise props.bad("Username", f"at most {MAX_IDENTIFIER_BYTES - len(CLONE_SUFFIX)} bytes long for "
                                            f"alternating users, which adds {CLONE_SUFFIX!r}")
            if self.group_role == self.clone:
                raise props.bad("GroupRole", f"different from {self.clone!r}, the alternating users' clone")
