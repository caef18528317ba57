"""The bootstrap function: a least-privilege read-only role, its login user and its secret, in one idempotent call.

No person ever sees the password: it is generated here, stored in Secrets Manager, and reaches PostgreSQL only
as a SCRAM verifier.

Order of work, chosen so that a crash at any line leaves nothing a re-run cannot finish:

1. Read the master secret and inspect the database (read only): a missing table, a master without CREATEROLE
   or an unreachable host fails here, before anything is created.
2. Create the secret, if it does not exist, *before* the role gets its password: a role whose password
   nobody knows can never be left behind. An existing secret is the truth: it is kept, and the role is
   reset to its password if that no longer logs in.
3. Reconcile the roles and privileges in one transaction: either all of it or none of it is committed.
4. Log in with the secret and check who the session is, that it holds the group's privileges and (with
   ``ReadOnlyTransactions``) that it is read-only by default.

"Brought in line" for roles that already exist, in this database:

- The group role's explicit privileges become exactly: CONNECT on the database, USAGE on the schemas, SELECT
  on the tables (and sequences) asked for, and (without ``Tables``) default privileges for tables and
  sequences the master creates later. Anything else it holds (INSERT, CREATE, SELECT on other tables) is
  revoked. The login role gets its privileges through the group only: grants made to it directly (the
  hand-made ``GRANT SELECT ... TO reader_user`` this replaces) are revoked.
- Only grants the master made can be revoked by it. A write privilege granted by someone else fails the
  bootstrap with the object and the grantor named (a read-only promise we cannot keep is not kept
  silently); a read privilege granted by someone else is left and logged.
- Memberships in other roles are not changed but are logged: the bootstrap cannot know whether, say,
  ``rds_iam`` was granted on purpose.
- Privileges held through PUBLIC are the server's defaults and not ours to change; PostgreSQL before 15 lets
  PUBLIC CREATE in schema ``public``, which is logged with the fix.
- Role attributes: NOLOGIN for the group, LOGIN for the user, neither CREATEDB nor CREATEROLE. A role with
  SUPERUSER, REPLICATION or BYPASSRLS is refused: a CREATEROLE master cannot remove those.
- ``default_transaction_read_only = on`` is always set on the group role, where it documents intent only:
  per-role settings are applied once, at login, for the login role (and database); they are not inherited
  from groups and ``SET ROLE`` to the group does not apply them either.
- With ``ReadOnlyTransactions: true`` it is also set on the login role and on the alternating users'
  ``_clone`` if rotation created one (rotation copies the login role's settings to the clone whenever it
  sets the clone's password), and the login check requires it. Without it (the default) the bootstrap
  neither sets it on the login roles nor removes it where an administrator did: a setting someone chose on
  purpose is left as it is, and noted in the log.

The privileges are the barrier: a plain session of the login may SELECT what was granted and anything else is
refused with SQLSTATE 42501 ("permission denied for table films"), which is what the Query Editor shows.
``ReadOnlyTransactions`` adds defence in depth, for a role that might later be granted more by mistake: every
write then fails first with SQLSTATE 25006 ("cannot execute INSERT in a read-only transaction"). It is not a
boundary: any session may ``SET default_transaction_read_only = off``, after which the privileges refuse the
write (42501) as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError
from psycopg import sql

from rotation import cfn
from rotation.config import Settings, StrategyName
from rotation.credentials import (
    DEFAULT_DBNAME,
    DEFAULT_PORT,
    MAX_IDENTIFIER_BYTES,
    SSL_MODES,
    DatabaseCredentials,
    parse_secret_string,
)
from rotation.database import PostgresDatabase, scram_verifier
from rotation.exceptions import (
    BootstrapError,
    InvalidEventError,
    LoginRefused,
    PrivilegeError,
    SecretsManagerError,
    SecretsManagerUnreachable,
)
from rotation.observability import annotate, logged_failure, logger, step_metrics
from rotation.ports import AWSCURRENT, AWSPENDING
from rotation.protocol import CLONE_SUFFIX
from rotation.secrets_store import NO_ROUTE_FIX, SecretsManagerStore, secrets_manager_client

SECRET_NAME_PREFIX = "rds-db-credentials"  # noqa: S105 - a name prefix, not a password
GROUP_ROLE_SUFFIX = "_readonly"
DEFAULT_SCHEMAS = ("public",)
READ_ONLY_SETTING = "default_transaction_read_only"

# ============================================================================================ the request

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

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self._event.get(key)
        if value is None:
            if required:
                raise InvalidEventError(f"{self._what} is missing the key {key!r}")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.bad(key, "a non-empty string")
        return value.strip()

    def identifier(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.text(key, required=required) or default
        if value is None:
            return None
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
        if isinstance(value, str) and value.strip().isdigit():
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
        username = props.identifier("Username", required=True)
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
            master_secret_id=props.text("MasterSecretId", required=True),
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


# ============================================================================================ Secrets Manager


@dataclass(frozen=True, slots=True)
class ExistingSecret:
    arn: str
    name: str
    scheduled_for_deletion: bool
    kms_key_id: str | None
    #: A version labelled AWSPENDING other than AWSCURRENT: a rotation is under way.
    rotation_in_progress: bool


class BootstrapSecrets(SecretsManagerStore):
    """The Secrets Manager calls the bootstrap needs beyond rotation's, with the same error translation."""

    def find(self, name: str) -> ExistingSecret | None:
        try:
            response = self._call("describe_secret", name)
        except SecretsManagerError as exc:
            if _aws_error_code(exc) == "ResourceNotFoundException":
                return None
            raise
        stages = response.get("VersionIdsToStages", {})
        current = {v for v, labels in stages.items() if AWSCURRENT in labels}
        pending = {v for v, labels in stages.items() if AWSPENDING in labels}
        return ExistingSecret(
            arn=response["ARN"],
            name=response.get("Name", name),
            scheduled_for_deletion=response.get("DeletedDate") is not None,
            kms_key_id=response.get("KmsKeyId"),
            rotation_in_progress=bool(pending - current),
        )

    def read(self, secret_id: str, source: str) -> tuple[str, dict[str, Any]]:
        """The ARN and the parsed AWSCURRENT value of a secret."""
        response = self._call("get_secret_value", secret_id, VersionStage=AWSCURRENT)
        return response["ARN"], parse_secret_string(response.get("SecretString"), source)

    def create(self, name: str, document: Mapping[str, Any], description: str, kms_key_id: str | None,
               tags: Sequence[tuple[str, str]]) -> str:
        kwargs: dict[str, Any] = {"Name": name, "SecretString": json.dumps(dict(document)),
                                  "Description": description}
        if kms_key_id:
            kwargs["KmsKeyId"] = kms_key_id
        if tags:
            kwargs["Tags"] = [{"Key": k, "Value": v} for k, v in tags]
        try:
            return self._client.create_secret(**kwargs)["ARN"]
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            raise SecretsManagerUnreachable(
                f"cannot reach the Secrets Manager endpoint {self.endpoint} ({type(exc).__name__}): {NO_ROUTE_FIX}"
            ) from exc
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "Unknown")
            if code == "ResourceExistsException":
                raise BootstrapError(
                    f"secret {name} was created by someone else while this bootstrap ran; run it again to adopt it"
                ) from exc
            raise SecretsManagerError(f"CreateSecret {name} failed: {code}: {error.get('Message', '')}") from exc
        except BotoCoreError as exc:
            raise SecretsManagerError(f"CreateSecret {name} failed: {exc}") from exc

    def put_current(self, secret_id: str, document: Mapping[str, Any]) -> None:
        self._call("put_secret_value", secret_id, SecretString=json.dumps(dict(document)),
                   VersionStages=[AWSCURRENT])

    def tag(self, secret_id: str, tags: Sequence[tuple[str, str]]) -> None:
        self._call("tag_resource", secret_id, Tags=[{"Key": k, "Value": v} for k, v in tags])

    def delete(self, secret_id: str) -> None:
        # Only after the role is dropped: its password then opens nothing, so a recovery window would only
        # block re-creating a secret of the same name for a week.
        self._call("delete_secret", secret_id, ForceDeleteWithoutRecovery=True)


def _aws_error_code(exc: BaseException) -> str | None:
    cause = exc.__cause__
    if isinstance(cause, ClientError):
        return cause.response.get("Error", {}).get("Code")
    return None


# ============================================================================================ the database


_WRITE_FREE_PRIVILEGES = frozenset({"SELECT", "USAGE", "CONNECT", "EXECUTE"})
#: Everything aclexplode() can report; checked before a privilege name is composed into a statement.
_PRIVILEGES = frozenset({
    "SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN", "USAGE", "CREATE",
    "CONNECT", "TEMPORARY", "EXECUTE", "SET", "ALTER SYSTEM",
})
_DEFAULT_ACL_OBJECTS = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES", "n": "SCHEMAS",
                        "L": "LARGE OBJECTS"}
_FORBIDDEN_ATTRIBUTES = {"rolsuper": "SUPERUSER", "rolreplication": "REPLICATION", "rolbypassrls": "BYPASSRLS"}

# Every explicit privilege of the given roles in this database (plus the database itself and shared default
# privileges), one row per (object, privilege, grantee). The master can revoke a grant when it holds the
# grantor's privileges: its own grants, and the owner's when it belongs to the owning role (pg_database_owner
# owns schema public since PostgreSQL 15). For default privileges the grantor is the role they are for.
_ACL_ENTRIES = """
SELECT e.kind, e.schema, e.name, e.detail, e.privilege_type, pg_get_userbyid(e.grantor), r.rolname,
       pg_has_role(current_user, e.grantor, 'USAGE')
FROM (
    SELECT 'database' AS kind, NULL::text AS schema, d.datname::text AS name, NULL::text AS detail,
           a.privilege_type, a.grantor, a.grantee
      FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a WHERE d.datname = current_database()
    UNION ALL
    SELECT 'schema', NULL, n.nspname::text, NULL, a.privilege_type, a.grantor, a.grantee
      FROM pg_namespace n CROSS JOIN LATERAL aclexplode(n.nspacl) a
    UNION ALL
    SELECT CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END, n.nspname::text, c.relname::text, NULL,
           a.privilege_type, a.grantor, a.grantee
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN LATERAL aclexplode(c.relacl) a
    UNION ALL
    SELECT 'column', n.nspname::text, c.relname::text, att.attname::text, a.privilege_type, a.grantor, a.grantee
      FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           CROSS JOIN LATERAL aclexplode(att.attacl) a
     WHERE NOT att.attisdropped
    UNION ALL
    SELECT 'default', n.nspname::text, pg_get_userbyid(d.defaclrole)::text, d.defaclobjtype::text,
           a.privilege_type, a.grantor, a.grantee
      FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
           CROSS JOIN LATERAL aclexplode(d.defaclacl) a
) e JOIN pg_roles r ON r.oid = e.grantee
WHERE r.rolname = ANY(%s)
"""

# Relations the group should read, with whether the master may grant SELECT on them.
_RELATIONS_IN_SCHEMAS = """
SELECT n.nspname::text, c.relname::text, c.relkind = 'S',
       has_table_privilege(current_user, c.oid, 'SELECT WITH GRANT OPTION'), pg_get_userbyid(c.relowner)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
 ORDER BY 1, 2
"""
_LISTED_RELATIONS = """
SELECT w.schema, w.name, c.relkind = 'S',
       has_table_privilege(current_user, c.oid, 'SELECT WITH GRANT OPTION'), pg_get_userbyid(c.relowner)
  FROM unnest(%s::text[], %s::text[]) AS w(schema, name)
  LEFT JOIN pg_namespace n ON n.nspname = w.schema
  LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.name
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
"""
_SCHEMAS = """
SELECT w.name, n.oid IS NOT NULL,
       n.oid IS NOT NULL AND has_schema_privilege(current_user, n.oid, 'USAGE WITH GRANT OPTION'),
       EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a WHERE a.grantee = 0 AND a.privilege_type = 'USAGE'),
       EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a WHERE a.grantee = 0 AND a.privilege_type = 'CREATE')
  FROM unnest(%s::text[]) AS w(name) LEFT JOIN pg_namespace n ON n.nspname = w.name
"""
_ROLES = """
SELECT rolname, rolsuper, rolreplication, rolbypassrls, rolcanlogin, rolcreatedb, rolcreaterole, rolinherit,
       pg_has_role(current_user, oid, 'USAGE'),
       ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
              WHERE m.member = r.oid ORDER BY 1)
  FROM pg_roles r WHERE rolname = ANY(%s)
"""
_ROLE_SETTINGS = """
SELECT r.rolname, s.setdatabase <> 0, cfg
  FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole CROSS JOIN LATERAL unnest(s.setconfig) cfg
 WHERE r.rolname = ANY(%s)
   AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
"""


@dataclass(frozen=True, slots=True)
class Relation:
    schema: str
    name: str
    is_sequence: bool

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class AclEntry:
    kind: str  # database, schema, table, sequence, column, default
    schema: str | None
    name: str
    detail: str | None  # the column, or the default privileges' object type
    privilege: str
    grantor: str
    grantee: str
    #: Whether the master may revoke it (it holds the grantor's privileges).
    revocable: bool

    @property
    def key(self) -> tuple[str, str | None, str, str | None, str, str]:
        return (self.kind, self.schema, self.name, self.detail, self.privilege, self.grantee)

    def describe(self) -> str:
        if self.kind == "column":
            where = f"column {self.detail} of {self.schema}.{self.name}"
        elif self.kind == "default":
            objects = _DEFAULT_ACL_OBJECTS.get(self.detail or "", self.detail)
            scope = f" in schema {self.schema}" if self.schema else ""
            where = f"{objects} {self.name} creates{scope} (default privileges)"
        elif self.kind in ("table", "sequence"):
            where = f"{self.kind} {self.schema}.{self.name}"
        else:
            where = f"{self.kind} {self.name}"
        return f"{self.privilege} on {where}"


@dataclass(frozen=True, slots=True)
class RoleState:
    name: str
    forbidden: tuple[str, ...]
    can_login: bool
    create_db: bool
    create_role: bool
    inherit: bool
    held_by_master: bool
    member_of: tuple[str, ...]


@dataclass
class DatabasePlan:
    """What the database holds and what it should hold, read without changing anything."""

    master: str
    dbname: str
    server_version: int
    group_role: str
    username: str
    clone: str | None
    roles: dict[str, RoleState]
    #: Schemas to grant USAGE on (those where PUBLIC's USAGE must do are left out).
    schemas: tuple[str, ...]
    relations: tuple[Relation, ...]
    #: Schemas whose future tables the group reads (empty with ``Tables``).
    default_privilege_schemas: tuple[str, ...]
    #: Whether the login roles get ``default_transaction_read_only = on`` too (``ReadOnlyTransactions``).
    read_only_logins: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def login_roles(self) -> tuple[str, ...]:
        return (self.username, self.clone) if self.clone else (self.username,)

    def desired(self) -> set[tuple[str, str | None, str, str | None, str, str]]:
        group = self.group_role
        wanted = {("database", None, self.dbname, None, "CONNECT", group)}
        wanted |= {("schema", None, schema, None, "USAGE", group) for schema in self.schemas}
        wanted |= {("sequence" if r.is_sequence else "table", r.schema, r.name, None, "SELECT", group)
                   for r in self.relations}
        wanted |= {("default", schema, self.master, objtype, "SELECT", group)
                   for schema in self.default_privilege_schemas for objtype in ("r", "S")}
        return wanted


def _rows(conn: psycopg.Connection, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return conn.execute(query, params).fetchall()


def inspect_database(conn: psycopg.Connection, request: BootstrapRequest) -> DatabasePlan:
    """Check everything that can be checked before creating anything; raise with the exact reason."""
    master, dbname, superuser, createrole, version = conn.execute(
        "SELECT current_user::text, current_database()::text, rolsuper, rolcreaterole, "
        "current_setting('server_version_num')::int FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    where = f"database {dbname!r}"
    if not (superuser or createrole):
        raise PrivilegeError(
            f"master user {master!r} has neither CREATEROLE nor SUPERUSER, so it cannot create the roles "
            f"{request.group_role!r} and {request.username!r}; use the cluster's master user (rds_superuser on "
            "Aurora) or a role with CREATEROLE"
        )
    if master in (request.username, request.group_role):
        raise BootstrapError(f"{master!r} is the master user itself; choose another Username/GroupRole")
    warnings: list[str] = []

    names = [request.group_role, request.username, request.clone]
    roles = {row[0]: RoleState(row[0], tuple(attr for attr, flag in zip(_FORBIDDEN_ATTRIBUTES.values(), row[1:4],
                                                                          strict=True) if flag),
                               *row[4:]) for row in _rows(conn, _ROLES, (names,))}
    for role in roles.values():
        if role.forbidden:
            raise BootstrapError(
                f"role {role.name!r} already exists with {', '.join(role.forbidden)}, which a read-only role must "
                "not have and a CREATEROLE master cannot remove; choose another name or fix the role as a superuser"
            )
        if role.held_by_master:
            raise BootstrapError(
                f"role {role.name!r} already exists and the master {master!r} holds its privileges: it is an "
                "administrators' group, not a name for a read-only login; choose another name"
            )
        extra = sorted(set(role.member_of) - {request.group_role, request.username})
        if extra:
            warnings.append(f"role {role.name!r} is also a member of {', '.join(extra)}; the bootstrap leaves "
                            "memberships it did not grant alone: revoke them if they are not meant")

    schemas = []
    for name, exists, grantable, public_usage, public_create in _rows(conn, _SCHEMAS, (list(request.schemas),)):
        if not exists:
            raise BootstrapError(f"schema {name!r} does not exist in {where}")
        if public_create:
            warnings.append(f"PUBLIC may CREATE in schema {name!r} (the default before PostgreSQL 15), so every "
                            f"role can create tables there; run REVOKE CREATE ON SCHEMA {name} FROM PUBLIC")
        if grantable:
            schemas.append(name)
        elif public_usage:
            warnings.append(f"master {master!r} may not grant USAGE on schema {name!r}; PUBLIC holds it already")
        else:
            raise PrivilegeError(f"master user {master!r} may not grant USAGE on schema {name!r} in {where}")

    if request.tables is None:
        found = _rows(conn, _RELATIONS_IN_SCHEMAS, (list(request.schemas),))
    else:
        found = _rows(conn, _LISTED_RELATIONS, ([t.schema for t in request.tables], [t.name for t in request.tables]))
        missing = [f"{schema}.{name}" for schema, name, is_sequence, _, _ in found if is_sequence is None]
        if missing:
            raise BootstrapError(f"table(s) {', '.join(missing)} do not exist in {where}")
    relations = []
    for schema, name, is_sequence, grantable, owner in found:
        if grantable:
            relations.append(Relation(schema, name, is_sequence))
        elif request.tables is not None:
            raise PrivilegeError(f"master user {master!r} may not grant SELECT on {schema}.{name} (owned by "
                                 f"{owner!r}); grant it SELECT WITH GRANT OPTION or leave the table out")
        else:
            warnings.append(f"{schema}.{name} (owned by {owner!r}) stays unreadable: master {master!r} may not "
                            "grant SELECT on it")

    plan = DatabasePlan(
        master=master, dbname=dbname, server_version=version, group_role=request.group_role,
        username=request.username, clone=request.clone if request.clone in roles else None, roles=roles,
        schemas=tuple(schemas), relations=tuple(relations),
        default_privilege_schemas=request.schemas if request.tables is None else (),
        read_only_logins=request.read_only_transactions, warnings=warnings,
    )
    # Raises now, before anything is created, if the read-only promise could not be kept.
    plan.warnings += _privilege_changes(conn, plan).kept
    return plan


@dataclass(frozen=True, slots=True)
class _PrivilegeChanges:
    grants: tuple[tuple[str, str | None, str, str | None, str, str], ...]
    revokes: tuple[AclEntry, ...]
    #: Read privileges someone else granted, which the master cannot take back.
    kept: tuple[str, ...]


def _acl_entries(conn: psycopg.Connection, roles: Iterable[str]) -> list[AclEntry]:
    return [AclEntry(*row) for row in _rows(conn, _ACL_ENTRIES, (list(roles),))]


def _privilege_changes(conn: psycopg.Connection, plan: DatabasePlan) -> _PrivilegeChanges:
    desired = plan.desired()
    entries = _acl_entries(conn, (plan.group_role, *plan.login_roles))
    held = {entry.key for entry in entries}
    revokes, foreign_writes, kept = [], [], []
    for entry in entries:
        if entry.key in desired:
            continue
        if _can_revoke(entry):
            revokes.append(entry)
        elif entry.privilege in _WRITE_FREE_PRIVILEGES:
            kept.append(f"role {entry.grantee!r} keeps {entry.describe()} (granted by {entry.grantor!r}, which "
                        f"master {plan.master!r} cannot revoke)")
        else:
            foreign_writes.append(entry)
    if foreign_writes:
        listed = "; ".join(f"{e.grantee!r} holds {e.describe()} granted by {e.grantor!r}" for e in foreign_writes[:5])
        raise BootstrapError(
            f"cannot make the roles read-only in database {plan.dbname!r}: {listed}. Only the grantor (or a "
            "superuser) can revoke these; revoke them and run the bootstrap again"
        )
    grants = tuple(sorted((key for key in desired if key not in held), key=lambda k: tuple(map(str, k))))
    return _PrivilegeChanges(grants, tuple(revokes), tuple(kept))


def _can_revoke(entry: AclEntry) -> bool:
    known = entry.privilege in _PRIVILEGES and (entry.kind != "default" or entry.detail in _DEFAULT_ACL_OBJECTS)
    return entry.revocable and known


def _execute(conn: psycopg.Connection, statement: sql.Composable, doing: str) -> None:
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PrivilegeError(f"{doing}: {_diagnostic(exc)}") from exc
    except psycopg.Error as exc:
        raise BootstrapError(f"{doing}: {_diagnostic(exc)}") from exc


def _diagnostic(exc: psycopg.Error) -> str:
    parts = [exc.diag.message_primary or type(exc).__name__]
    if exc.diag.message_detail:
        parts.append(exc.diag.message_detail)
    if exc.diag.sqlstate:
        parts.append(f"(SQLSTATE {exc.diag.sqlstate})")
    return " ".join(parts)


def _grant_statement(key: tuple[str, str | None, str, str | None, str, str]) -> sql.Composable:
    kind, schema, name, detail, privilege, grantee = key
    granted, to = sql.SQL(privilege), sql.Identifier(grantee)
    if kind == "database":
        return sql.SQL("GRANT {} ON DATABASE {} TO {}").format(granted, sql.Identifier(name), to)
    if kind == "schema":
        return sql.SQL("GRANT {} ON SCHEMA {} TO {}").format(granted, sql.Identifier(name), to)
    if kind == "default":
        return sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON {} TO {}").format(
            sql.Identifier(name), sql.Identifier(schema), granted, sql.SQL(_DEFAULT_ACL_OBJECTS[detail]), to)
    return sql.SQL("GRANT {} ON {} {} TO {}").format(
        granted, sql.SQL("SEQUENCE" if kind == "sequence" else "TABLE"), sql.Identifier(schema, name), to)


def _grant_statements(keys: Sequence[tuple[str, str | None, str, str | None, str, str]],
                      batch: int = 500) -> list[sql.Composable]:
    """One GRANT per batch of tables (and of sequences): a schema of thousands of tables stays quick."""
    statements = [_grant_statement(key) for key in keys if key[0] not in ("table", "sequence")]
    for kind in ("table", "sequence"):
        same = [key for key in keys if key[0] == kind]
        for start in range(0, len(same), batch):
            chunk = same[start:start + batch]
            statements.append(sql.SQL("GRANT SELECT ON {} {} TO {}").format(
                sql.SQL(kind.upper()), sql.SQL(", ").join(sql.Identifier(k[1], k[2]) for k in chunk),
                sql.Identifier(chunk[0][5])))
    return statements


def _revoke_statement(entry: AclEntry) -> sql.Composable:
    privilege, frm = sql.SQL(entry.privilege), sql.Identifier(entry.grantee)
    if entry.kind == "database":
        return sql.SQL("REVOKE {} ON DATABASE {} FROM {}").format(privilege, sql.Identifier(entry.name), frm)
    if entry.kind == "schema":
        return sql.SQL("REVOKE {} ON SCHEMA {} FROM {}").format(privilege, sql.Identifier(entry.name), frm)
    if entry.kind == "column":
        return sql.SQL("REVOKE {} ({}) ON TABLE {} FROM {}").format(
            privilege, sql.Identifier(entry.detail), sql.Identifier(entry.schema, entry.name), frm)
    if entry.kind == "default":
        scope = sql.SQL(" IN SCHEMA {}").format(sql.Identifier(entry.schema)) if entry.schema else sql.SQL("")
        return sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {}{} REVOKE {} ON {} FROM {}").format(
            sql.Identifier(entry.name), scope, privilege, sql.SQL(_DEFAULT_ACL_OBJECTS[entry.detail]), frm)
    return sql.SQL("REVOKE {} ON {} {} FROM {}").format(
        privilege, sql.SQL("SEQUENCE" if entry.kind == "sequence" else "TABLE"),
        sql.Identifier(entry.schema, entry.name), frm)


def _summary(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _ensure_role(conn: psycopg.Connection, plan: DatabasePlan, name: str, *, login: bool,
                 password: str | None) -> list[str]:
    """Create the role or bring its attributes in line; set ``password`` (as a verifier) when given."""
    role = sql.Identifier(name)
    attributes = [sql.SQL("LOGIN" if login else "NOLOGIN")]
    if password is not None:
        attributes.append(sql.SQL("PASSWORD {}").format(sql.Literal(scram_verifier(conn, name, password))))
    state = plan.roles.get(name)
    if state is None:
        _execute(conn, sql.SQL("CREATE ROLE {} WITH {}").format(role, sql.SQL(" ").join(attributes)),
                 f"creating role {name!r}")
        return [f"created role {name!r} ({'LOGIN' if login else 'NOLOGIN'})"]
    fixes = []
    if state.can_login != login:
        fixes.append("LOGIN" if login else "NOLOGIN")
    if state.create_db:
        fixes.append("NOCREATEDB")
    if state.create_role:
        fixes.append("NOCREATEROLE")
    if login and not state.inherit:
        fixes.append("INHERIT")
    if not fixes and password is None:
        return []
    statement = sql.SQL("ALTER ROLE {} WITH {}").format(
        role, sql.SQL(" ").join([*(sql.SQL(fix) for fix in fixes), *attributes[1:]]))
    _execute(conn, statement, f"altering role {name!r}")
    changes = [f"role {name!r}: {' '.join(fixes)}"] if fixes else []
    if password is not None:
        changes.append(f"role {name!r}: password set from the secret")
    return changes


def _ensure_membership(conn: psycopg.Connection, plan: DatabasePlan) -> list[str]:
    member, group = plan.username, plan.group_role
    is_member, inherits = conn.execute(
        "SELECT pg_has_role(%s, %s, 'MEMBER'), pg_has_role(%s, %s, 'USAGE')", (member, group, member, group)
    ).fetchone()
    if is_member and inherits:
        return []
    option = sql.SQL(" WITH INHERIT TRUE") if plan.server_version >= 160000 else sql.SQL("")
    _execute(conn, sql.SQL("GRANT {} TO {}{}").format(sql.Identifier(group), sql.Identifier(member), option),
             f"making {member!r} a member of {group!r}")
    return [f"role {member!r}: member of {group!r}"]


def _ensure_read_only_setting(conn: psycopg.Connection, plan: DatabasePlan) -> list[str]:
    """``default_transaction_read_only = on`` on the group, and on the login roles with ``ReadOnlyTransactions``.

    Without it, the login roles' own setting is left as it is: an administrator may have set it on purpose
    (an explicit ``ReadOnlyTransactions: false`` does not remove it either; ``ALTER ROLE ... RESET`` does).
    """
    roles = (plan.group_role, *plan.login_roles) if plan.read_only_logins else (plan.group_role,)
    rows = _rows(conn, _ROLE_SETTINGS, ([plan.group_role, *plan.login_roles],))
    changes = []
    if not plan.read_only_logins:
        kept = sorted({rolname for rolname, _, cfg in rows
                       if rolname in plan.login_roles and cfg.partition("=")[0] == READ_ONLY_SETTING})
        if kept:
            logger.info(f"{READ_ONLY_SETTING} is set on {', '.join(map(repr, kept))} (by an administrator or an "
                        "earlier run with ReadOnlyTransactions); left as it is: without ReadOnlyTransactions the "
                        "bootstrap neither sets nor removes it on login roles")
    for name in roles:
        role = sql.Identifier(name)
        settings = [(in_database, cfg.partition("=")) for rolname, in_database, cfg in rows if rolname == name]
        if not any(not in_db and key == READ_ONLY_SETTING and _is_on(value) for in_db, (key, _, value) in settings):
            _execute(conn, sql.SQL("ALTER ROLE {} SET {} = on").format(role, sql.Identifier(READ_ONLY_SETTING)),
                     f"making {name!r} read-only by default")
            changes.append(f"role {name!r}: {READ_ONLY_SETTING} = on")
        if any(in_db and key == READ_ONLY_SETTING and not _is_on(value) for in_db, (key, _, value) in settings):
            # A per-database value would override the role-wide one in exactly this database.
            _execute(conn, sql.SQL("ALTER ROLE {} IN DATABASE {} RESET {}").format(
                role, sql.Identifier(plan.dbname), sql.Identifier(READ_ONLY_SETTING)),
                f"removing {name!r}'s per-database {READ_ONLY_SETTING} override")
            changes.append(f"role {name!r}: per-database {READ_ONLY_SETTING} override removed")
    return changes


def _is_on(value: str) -> bool:
    return value.strip("'\"").lower() in ("on", "true", "yes", "1")


def reconcile_database(conn: psycopg.Connection, plan: DatabasePlan, login_password: str | None) -> list[str]:
    """Bring roles, memberships, settings and privileges in line, in one transaction."""
    changes: list[str] = []
    with conn.transaction():
        changes += _ensure_role(conn, plan, plan.group_role, login=False, password=None)
        changes += _ensure_role(conn, plan, plan.username, login=True, password=login_password)
        if plan.clone:
            changes += _ensure_role(conn, plan, plan.clone, login=True, password=None)
        changes += _ensure_membership(conn, plan)
        changes += _ensure_read_only_setting(conn, plan)
        privileges = _privilege_changes(conn, plan)
        for entry in privileges.revokes:
            _execute(conn, _revoke_statement(entry), f"revoking {entry.describe()} from {entry.grantee!r}")
        for statement in _grant_statements(privileges.grants):
            _execute(conn, statement, f"granting to {plan.group_role!r}")
        if privileges.revokes:
            changes.append("revoked " + _summary([f"{e.describe()} from {e.grantee!r}" for e in privileges.revokes]))
        if privileges.grants:
            granted = [AclEntry(*k[:5], plan.master, k[5], True).describe() for k in privileges.grants]
            changes.append(f"granted {plan.group_role!r} " + _summary(granted))
    return changes


def drop_roles(conn: psycopg.Connection, roles: Sequence[str]) -> list[str]:
    """Revoke what the master granted to ``roles`` in this database and drop them, in one transaction."""
    with conn.transaction():
        existing = [row[0] for row in _rows(conn, "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                                            (list(roles),))]
        if not existing:
            return []
        for entry in _acl_entries(conn, existing):
            if _can_revoke(entry):
                _execute(conn, _revoke_statement(entry), f"revoking {entry.describe()} from {entry.grantee!r}")
        for name in (role for role in roles if role in existing):
            # PostgreSQL names whatever still depends on the role (privileges in other databases, objects).
            _execute(conn, sql.SQL("DROP ROLE {}").format(sql.Identifier(name)), f"dropping role {name!r}")
    return [f"dropped role {name!r}" for name in roles if name in existing]


_SESSION_CHECK = """
SELECT session_user::text, pg_has_role(session_user, %s, 'USAGE'),
       current_setting('default_transaction_read_only')
"""


def check_login(conn: psycopg.Connection, creds: DatabaseCredentials, group_role: str, *,
                read_only: bool = False) -> None:
    """The secret's session is its user, holds the group's privileges and, with ``read_only``, is read-only by
    default (``ReadOnlyTransactions``; without it the setting is not checked: the privileges refuse writes)."""
    session_user, holds_group, read_only_default = conn.execute(_SESSION_CHECK, (group_role,)).fetchone()
    problems = []
    if session_user != creds.username:
        problems.append(f"the session user is {session_user!r}")
    if not holds_group:
        problems.append(f"it does not hold the privileges of {group_role!r}")
    if read_only and read_only_default != "on":
        problems.append(f"{READ_ONLY_SETTING} is {read_only_default!r} (ReadOnlyTransactions is true)")
    if problems:
        raise BootstrapError(f"the secret for {creds.username!r} logs in at {creds.address}, but "
                             + "; ".join(problems))


# ============================================================================================ orchestration


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    secret_arn: str
    secret_name: str
    username: str
    group_role: str
    secret_created: bool
    changes: tuple[str, ...]

    def response(self) -> dict[str, str]:
        return {"SecretArn": self.secret_arn, "Username": self.username, "GroupRole": self.group_role}


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the login lives, from the event over the master secret."""

    admin: DatabaseCredentials
    master_arn: str
    #: The non-credential keys of the user secret: engine, host, port, dbname, cluster id, ssl.
    connection: Mapping[str, Any]
    secret_name: str


_IDENTITY_KEYS = ("dbClusterIdentifier", "dbInstanceIdentifier")


class Bootstrapper:
    def __init__(self, secrets: BootstrapSecrets, database: PostgresDatabase, settings: Settings) -> None:
        self._secrets = secrets
        self._database = database
        self._settings = settings

    # ---- shared

    def _target(self, request: BootstrapRequest) -> _Target:
        source = f"master secret {request.master_secret_id}"
        master_arn, master = self._secrets.read(request.master_secret_id, source)
        connection: dict[str, Any] = {
            "engine": master.get("engine", "postgres"),
            "host": request.host or master.get("host"),
            "port": request.port or master.get("port", DEFAULT_PORT),
            "dbname": request.dbname or master.get("dbname") or DEFAULT_DBNAME,
        }
        if connection["host"] is None:
            raise BootstrapError(
                f"{source} holds no 'host' (an RDS-managed master secret has only username and password); "
                "give the cluster endpoint as Host (and Port if it is not 5432)"
            )
        connection.update({key: master[key] for key in _IDENTITY_KEYS if master.get(key)})
        ssl = request.ssl if request.ssl is not None else master.get("ssl")
        if ssl is not None:
            connection["ssl"] = ssl
        admin = DatabaseCredentials.from_secret({**master, **connection}, source)
        connection["port"] = admin.port  # a number in the user secret, even if the master has a string
        cluster = master.get("dbClusterIdentifier") or master.get("dbInstanceIdentifier") or admin.host
        secret_name = request.secret_name or f"{SECRET_NAME_PREFIX}/{cluster}/{request.username}"
        if not _SECRET_NAME.fullmatch(secret_name):
            raise InvalidEventError(
                f"the default secret name {secret_name!r} has characters Secrets Manager does not allow; give "
                "SecretName"
            )
        annotate(secret_name=secret_name, username=request.username, group_role=request.group_role)
        return _Target(admin, master_arn, connection, secret_name)

    def _login_roles(self, request: BootstrapRequest) -> tuple[str, ...]:
        return (request.clone, request.username) if len(request.clone.encode()) <= MAX_IDENTIFIER_BYTES \
            else (request.username,)

    # ---- create / update

    def apply(self, request: BootstrapRequest) -> BootstrapResult:
        target = self._target(request)
        existing = self._secrets.find(target.secret_name)
        if existing is not None and existing.scheduled_for_deletion:
            raise BootstrapError(
                f"secret {target.secret_name} is scheduled for deletion; restore it (aws secretsmanager "
                f"restore-secret --secret-id {existing.arn}) to keep its password, or choose another SecretName"
            )
        changes: list[str] = []
        with self._database.connect(target.admin) as conn:
            plan = inspect_database(conn, request)
            if existing is None:
                document, arn, login_password = self._create_secret(request, target)
                changes.append(f"created secret {target.secret_name}")
            else:
                document, arn, updated = self._adopt_secret(request, target, existing)
                changes += updated
                login_password = None
                if document["username"] == request.username and request.username not in plan.roles:
                    login_password = document["password"]  # the role is gone: recreate it with the secret's
                elif document["username"] != request.username and plan.clone is None:
                    raise BootstrapError(
                        f"secret {target.secret_name} is for {document['username']!r} (alternating users), which "
                        "does not exist; run a rotation repair or give another SecretName"
                    )
            changes += reconcile_database(conn, plan, login_password)
        if existing is not None and request.tags:
            self._secrets.tag(arn, request.tags)
        creds = DatabaseCredentials.from_secret(document, f"secret {arn}")
        changes += self._prove_login(creds, request, target.admin, arn)
        for warning in plan.warnings:
            logger.warning(warning)
        result = BootstrapResult(arn, target.secret_name, request.username, request.group_role,
                                 existing is None, tuple(changes))
        logger.info("bootstrap complete" if changes else "bootstrap complete; nothing to change",
                    extra={"changes": list(changes), "secret_arn": arn})
        return result

    def _document(self, request: BootstrapRequest, target: _Target, base: Mapping[str, Any]) -> dict[str, Any]:
        document = {**base, **target.connection}
        if base.get("engine") in ("postgres", "aurora-postgresql"):
            document["engine"] = base["engine"]  # either is right; do not churn a working secret
        if request.strategy is StrategyName.ALTERNATING_USERS:
            document["masterarn"] = target.master_arn
        else:
            document.pop("masterarn", None)
        return document

    def _create_secret(self, request: BootstrapRequest, target: _Target) -> tuple[dict[str, Any], str, str]:
        password = self._settings.password_policy.generate()
        connection = dict(target.connection)
        # The order the RDS console writes, so the secret reads the same as one made by hand.
        base = {key: connection.pop(key) for key in ("engine", "host", "port")}
        base.update(username=request.username, password=password, **connection)
        document = self._document(request, target, base)
        description = (f"Read-only login {request.username} for database {target.connection['dbname']} on "
                       f"{target.connection['host']}, created by the bootstrap function")
        arn = self._secrets.create(target.secret_name, document, description, request.kms_key_id, request.tags)
        logger.info(f"created secret {target.secret_name}", extra={"secret_arn": arn})
        return document, arn, password

    def _adopt_secret(self, request: BootstrapRequest, target: _Target,
                      existing: ExistingSecret) -> tuple[dict[str, Any], str, list[str]]:
        source = f"AWSCURRENT of secret {existing.arn}"
        arn, current = self._secrets.read(existing.arn, source)
        if current.get("username") not in self._login_roles(request):
            raise BootstrapError(
                f"secret {existing.name} exists but is for user {current.get('username')!r}, not "
                f"{request.username!r}; give another SecretName"
            )
        if not isinstance(current.get("password"), str) or not current["password"]:
            raise BootstrapError(f"{source} has no password; delete the secret or give another SecretName")
        if request.kms_key_id and existing.kms_key_id and request.kms_key_id != existing.kms_key_id:
            logger.warning(f"secret {existing.name} is encrypted with {existing.kms_key_id}, not "
                           f"{request.kms_key_id}; the bootstrap does not change the key of an existing secret")
        document = self._document(request, target, current)
        if document == current:
            return current, arn, []
        if existing.rotation_in_progress:
            raise BootstrapError(
                f"secret {existing.name} needs its connection keys updated but a rotation is in progress "
                "(AWSPENDING on a version other than AWSCURRENT); run the bootstrap again once it has finished"
            )
        self._secrets.put_current(arn, document)
        changed = sorted(k for k in {*document, *current} if document.get(k) != current.get(k))
        return document, arn, [f"secret {existing.name}: updated {', '.join(changed)}"]

    def _prove_login(self, creds: DatabaseCredentials, request: BootstrapRequest, admin: DatabaseCredentials,
                     arn: str) -> list[str]:
        """Log in with the secret; if the role's password differs, the secret wins."""
        group_role, read_only = request.group_role, request.read_only_transactions
        try:
            with self._database.connect(creds) as conn:
                check_login(conn, creds, group_role, read_only=read_only)
            return []
        except LoginRefused:
            pass
        logger.warning(f"role {creds.username!r} does not accept the password in secret {arn}; resetting the role "
                       "to the secret's password (the secret is the truth)")
        with self._database.connect(admin) as conn:
            _execute(conn, sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                sql.Identifier(creds.username), sql.Literal(scram_verifier(conn, creds.username, creds.password))),
                f"resetting the password of {creds.username!r}")
        with self._database.connect(creds) as conn:
            check_login(conn, creds, group_role, read_only=read_only)
        return [f"role {creds.username!r}: password reset to the secret's"]

    # ---- delete

    def remove(self, request: BootstrapRequest, physical_id: str | None = None) -> list[str]:
        """Drop the roles, then delete the secret (RemoveOnDelete). Whatever is already gone is skipped."""
        target = self._target(request)
        if physical_id is not None and physical_id != target.secret_name:
            # CloudFormation deletes a replaced resource with its old properties, so they name the same secret
            # unless the master secret changed since; removing the wrong login would be worse than none.
            raise BootstrapError(f"resource {physical_id} no longer matches its properties (they now name secret "
                                 f"{target.secret_name}); nothing removed")
        with self._database.connect(target.admin) as conn:
            changes = drop_roles(conn, (*self._login_roles(request), request.group_role))
        existing = self._secrets.find(target.secret_name)
        if existing is not None and not existing.scheduled_for_deletion:
            self._secrets.delete(existing.arn)
            changes.append(f"deleted secret {target.secret_name}")
        logger.info("removed", extra={"changes": changes})
        return changes


# ============================================================================================ entry points


def build_bootstrapper(settings: Settings | None = None) -> Bootstrapper:
    from rotation.handler import build_database  # the rotation function's own adapter settings, not a copy

    settings = settings or Settings.from_env()
    return Bootstrapper(
        BootstrapSecrets(secrets_manager_client(settings.secrets_manager_endpoint)),
        build_database(settings),
        settings,
    )


def _custom_resource(request: cfn.CustomResourceRequest,
                     factory: Callable[[], Bootstrapper] = build_bootstrapper) -> cfn.Outcome:
    annotate(request_type=request.request_type, logical_resource_id=request.logical_resource_id)
    with step_metrics("Bootstrap", request.request_type), logged_failure():
        if request.request_type == cfn.DELETE:
            return _delete(request, factory)
        bootstrap = BootstrapRequest.parse(request.properties, "ResourceProperties")
        result = factory().apply(bootstrap)
        reason = "; ".join(result.changes) or "everything already in place"
        return cfn.Outcome(result.secret_name, reason, result.response())


def _delete(request: cfn.CustomResourceRequest, factory: Callable[[], Bootstrapper]) -> cfn.Outcome:
    physical_id = request.physical_resource_id or ""
    if physical_id.startswith(cfn.NOT_CREATED_PREFIX):
        return cfn.Outcome(physical_id, "the Create had failed: nothing to remove")
    try:
        bootstrap = BootstrapRequest.parse(request.properties, "ResourceProperties")
    except InvalidEventError:
        # Properties that do not parse could never have created anything; failing would block the stack.
        return cfn.Outcome(physical_id, "invalid properties: nothing was created, nothing to remove")
    if not bootstrap.remove_on_delete:
        return cfn.Outcome(physical_id, "kept the roles and the secret (RemoveOnDelete is not true)")
    changes = factory().remove(bootstrap, physical_id)
    return cfn.Outcome(physical_id, "; ".join(changes) or "nothing left to remove")


def handle(event: Any, context: Any) -> dict[str, Any]:
    """Direct invocation (returns SecretArn, Username, GroupRole) or CloudFormation custom resource."""
    if cfn.CustomResourceRequest.matches(event):
        return cfn.serve(event, context, _custom_resource)
    with step_metrics("Bootstrap", "Direct"), logged_failure():
        request = BootstrapRequest.parse(event)
        return build_bootstrapper().apply(request).response()
