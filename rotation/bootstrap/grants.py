"""The database side of the bootstrap: inspect what exists, then bring roles, settings and privileges in line.

Every statement the bootstrap runs in PostgreSQL is here; inspect_database only reads, reconcile_database and
drop_roles each change the database in one transaction.

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
  ``_clone`` if rotation created one (rotation copies the login role's settings to the clone once, when it
  creates it; so the bootstrap sets it on an existing clone itself), and the login check requires it.
  Without it (the default) the bootstrap neither sets it on the login roles nor removes it where an
  administrator did: a setting someone chose on purpose is left as it is, and noted in the log.

The privileges are the barrier: a plain session of the login may SELECT what was granted and anything else is
refused with SQLSTATE 42501 ("permission denied for table films"), which is what the Query Editor shows.
``ReadOnlyTransactions`` adds defence in depth, for a role that might later be granted more by mistake: every
write then fails first with SQLSTATE 25006 ("cannot execute INSERT in a read-only transaction"). It is not a
boundary: any session may ``SET default_transaction_read_only = off``, after which the privileges refuse the
write (42501) as before.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from rotation.credentials import DatabaseCredentials
from rotation.database import _diag, one_row, scram_verifier
from rotation.exceptions import BootstrapError, PrivilegeError
from rotation.observability import logger
from rotation.policy import POWERFUL_ROLES

if TYPE_CHECKING:
    from rotation.bootstrap.request import BootstrapRequest

READ_ONLY_SETTING = "default_transaction_read_only"

#: One privilege, as granted or wanted: (kind, schema, name, detail, privilege, grantee); see AclEntry.
PrivilegeKey = tuple[str, str | None, str, str | None, str, str]

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
# Every role the named roles belong to, directly or through others (the named roles included), with whether it
# is administrative and whether it owns anything in any database (ownership is recorded in pg_shdepend).
_MEMBERSHIP_CLOSURE = """
WITH RECURSIVE closure(start, oid) AS (
    SELECT r.rolname::text, r.oid FROM pg_roles r WHERE r.rolname = ANY(%(names)s)
  UNION
    SELECT c.start, m.roleid FROM pg_auth_members m JOIN closure c ON m.member = c.oid
)
SELECT c.start, r.rolname::text,
       r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls OR r.rolname = ANY(%(powerful)s),
       EXISTS (SELECT 1 FROM pg_shdepend d
                WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid AND d.deptype = 'o')
  FROM closure c JOIN pg_roles r ON r.oid = c.oid
 ORDER BY 1, 2
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
    def key(self) -> PrivilegeKey:
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
    #: The comment that marks roles this bootstrap creates (rotation.policy.bootstrap_role_mark).
    role_mark: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def login_roles(self) -> tuple[str, ...]:
        return (self.username, self.clone) if self.clone else (self.username,)

    def desired(self) -> set[PrivilegeKey]:
        group = self.group_role
        wanted: set[PrivilegeKey] = {("database", None, self.dbname, None, "CONNECT", group)}
        wanted |= {("schema", None, schema, None, "USAGE", group) for schema in self.schemas}
        wanted |= {("sequence" if r.is_sequence else "table", r.schema, r.name, None, "SELECT", group)
                   for r in self.relations}
        wanted |= {("default", schema, self.master, objtype, "SELECT", group)
                   for schema in self.default_privilege_schemas for objtype in ("r", "S")}
        return wanted


def _rows(conn: psycopg.Connection, query: str,
          params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
    return conn.execute(query, params).fetchall()


def inspect_database(conn: psycopg.Connection, request: BootstrapRequest, *, clone: bool,
                     role_mark: str = "") -> DatabasePlan:
    """Check everything that can be checked before creating anything; raise with the exact reason.

    ``clone``: whether ``<Username>_clone`` is one of this login's roles (alternating users, or the secret names
    it). Otherwise a role of that name is someone else's: not inspected, changed or revoked from.
    """
    master, dbname, superuser, createrole, version = one_row(conn.execute(
        "SELECT current_user::text, current_database()::text, rolsuper, rolcreaterole, "
        "current_setting('server_version_num')::int FROM pg_roles WHERE rolname = current_user"
    ), "the master user's attributes and the server version")
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

    names = [request.group_role, request.username, *([request.clone] if clone else [])]
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
    _refuse_write_capable(conn, list(roles), where)

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
        username=request.username, clone=request.clone if clone and request.clone in roles else None, roles=roles,
        schemas=tuple(schemas), relations=tuple(relations),
        default_privilege_schemas=request.schemas if request.tables is None else (),
        read_only_logins=request.read_only_transactions, warnings=warnings, role_mark=role_mark,
    )
    # Raises now, before anything is created, if the read-only promise could not be kept.
    plan.warnings += _privilege_changes(conn, plan).kept
    return plan


def _refuse_write_capable(conn: psycopg.Connection, managed: list[str], where: str) -> None:
    """The read-only promise for roles that exist already: none of them may own objects, and none may belong,
    however indirectly, to a role that is administrative, owns objects or holds a write or DDL privilege.

    The bootstrap reconciles the managed roles' own grants in this database, but it cannot make a table owner
    read-only, nor take back what another role passes on through membership (INSERT, DROP TABLE, SET ROLE to a
    superuser group): such a login would be read-only in name only.
    """
    if not managed:
        return
    problems: list[str] = []
    others: dict[str, list[str]] = {}
    rows = _rows(conn, _MEMBERSHIP_CLOSURE, {"names": managed, "powerful": sorted(POWERFUL_ROLES)})
    for start, role, administrative, owns in rows:
        if owns:
            problems.append(f"{start!r} owns objects" if role == start
                            else f"{start!r} is a member of {role!r}, which owns objects")
        if role in managed:
            continue  # its attributes and its own grants are checked and brought in line elsewhere
        if administrative:
            problems.append(f"{start!r} is a member of {role!r}, which holds administrative power")
        others.setdefault(role, []).append(start)
    for entry in _acl_entries(conn, others):
        if entry.privilege not in _WRITE_FREE_PRIVILEGES:
            members = ", ".join(repr(name) for name in others[entry.grantee])
            problems.append(f"{members} inherit {entry.describe()} from {entry.grantee!r}")
    if problems:
        raise BootstrapError(
            f"the bootstrap cannot keep its read-only promise in {where}: {'; '.join(dict.fromkeys(problems))}. "
            "Choose a Username and GroupRole that are new or read-only, or remove those memberships first"
        )


@dataclass(frozen=True, slots=True)
class _PrivilegeChanges:
    grants: tuple[PrivilegeKey, ...]
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


def _execute(conn: psycopg.Connection, statement: sql.Composed, doing: str) -> None:
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PrivilegeError(f"{doing}: {_diag(exc)}") from exc
    except psycopg.Error as exc:
        raise BootstrapError(f"{doing}: {_diag(exc)}") from exc


def _grant_statement(key: PrivilegeKey) -> sql.Composed:
    kind, schema, name, detail, privilege, grantee = key
    granted, to = sql.SQL(privilege), sql.Identifier(grantee)
    if kind == "database":
        return sql.SQL("GRANT {} ON DATABASE {} TO {}").format(granted, sql.Identifier(name), to)
    if kind == "schema":
        return sql.SQL("GRANT {} ON SCHEMA {} TO {}").format(granted, sql.Identifier(name), to)
    if kind == "default":
        return sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON {} TO {}").format(
            sql.Identifier(name), sql.Identifier(_part(schema, "schema", key)), granted,
            sql.SQL(_DEFAULT_ACL_OBJECTS[_part(detail, "object type", key)]), to)
    return sql.SQL("GRANT {} ON {} {} TO {}").format(
        granted, sql.SQL("SEQUENCE" if kind == "sequence" else "TABLE"),
        sql.Identifier(_part(schema, "schema", key), name), to)


def _grant_statements(keys: Sequence[PrivilegeKey],
                      batch: int = 500) -> list[sql.Composed]:
    """One GRANT per batch of tables (and of sequences): a schema of thousands of tables stays quick."""
    statements = [_grant_statement(key) for key in keys if key[0] not in ("table", "sequence")]
    for kind in ("table", "sequence"):
        same = [key for key in keys if key[0] == kind]
        for start in range(0, len(same), batch):
            chunk = same[start:start + batch]
            statements.append(sql.SQL("GRANT SELECT ON {} {} TO {}").format(
                sql.SQL(kind.upper()), sql.SQL(", ").join(sql.Identifier(_part(k[1], "schema", k), k[2])
                                                          for k in chunk),
                sql.Identifier(chunk[0][5])))
    return statements


def _revoke_statement(entry: AclEntry) -> sql.Composed:
    privilege, frm = sql.SQL(entry.privilege), sql.Identifier(entry.grantee)
    if entry.kind == "database":
        return sql.SQL("REVOKE {} ON DATABASE {} FROM {}").format(privilege, sql.Identifier(entry.name), frm)
    if entry.kind == "schema":
        return sql.SQL("REVOKE {} ON SCHEMA {} FROM {}").format(privilege, sql.Identifier(entry.name), frm)
    key = entry.key
    if entry.kind == "column":
        return sql.SQL("REVOKE {} ({}) ON TABLE {} FROM {}").format(
            privilege, sql.Identifier(_part(entry.detail, "column", key)),
            sql.Identifier(_part(entry.schema, "schema", key), entry.name), frm)
    if entry.kind == "default":
        scope = sql.SQL(" IN SCHEMA {}").format(sql.Identifier(entry.schema)) if entry.schema else sql.SQL("")
        return sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {}{} REVOKE {} ON {} FROM {}").format(
            sql.Identifier(entry.name), scope, privilege,
            sql.SQL(_DEFAULT_ACL_OBJECTS[_part(entry.detail, "object type", key)]), frm)
    return sql.SQL("REVOKE {} ON {} {} FROM {}").format(
        privilege, sql.SQL("SEQUENCE" if entry.kind == "sequence" else "TABLE"),
        sql.Identifier(_part(entry.schema, "schema", key), entry.name), frm)


def _part(value: str | None, what: str, key: PrivilegeKey) -> str:
    """A part of a privilege that its kind always has (a table's schema, a column's name)."""
    if value is None:
        raise BootstrapError(f"the {key[0]} privilege {key[4]} on {key[2]!r} has no {what}")
    return value


def _summary(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _ensure_role(conn: psycopg.Connection, plan: DatabasePlan, name: str, *, login: bool,
                 password: str | None) -> list[str]:
    """Create the role or bring its attributes in line; set ``password`` (as a verifier) when given."""
    role = sql.Identifier(name)
    attributes: list[sql.Composable] = [sql.SQL("LOGIN" if login else "NOLOGIN")]
    if password is not None:
        attributes.append(sql.SQL("PASSWORD {}").format(sql.Literal(scram_verifier(conn, name, password))))
    state = plan.roles.get(name)
    if state is None:
        _execute(conn, sql.SQL("CREATE ROLE {} WITH {}").format(role, sql.SQL(" ").join(attributes)),
                 f"creating role {name!r}")
        # The mark a Delete checks before dropping the role: what this bootstrap did not create, it never drops.
        _execute(conn, sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(plan.role_mark)),
                 f"marking role {name!r}")
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
    is_member, inherits = one_row(conn.execute(
        "SELECT pg_has_role(%s, %s, 'MEMBER'), pg_has_role(%s, %s, 'USAGE')", (member, group, member, group)
    ), f"whether {member!r} is a member of {group!r}")
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


def drop_roles(conn: psycopg.Connection, roles: Sequence[str], marks: Collection[str]) -> list[str]:
    """Revoke what the master granted to ``roles`` in this database and drop them, in one transaction.

    Only roles whose comment is one of ``marks`` (what the bootstrap or the rotation wrote when creating them)
    are touched; any other role of the same name was not made for this resource and is left, with a log line.
    """
    with conn.transaction():
        existing = {row[0]: row[1] for row in _rows(
            conn, "SELECT rolname::text, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = ANY(%s)",
            (list(roles),))}
        ours = [role for role in roles if role in existing and existing[role] in marks]
        for role in sorted(set(existing) - set(ours)):
            logger.warning(f"role {role!r} was not created by this bootstrap (no mark): left in place")
        if not ours:
            return []
        for entry in _acl_entries(conn, ours):
            if _can_revoke(entry):
                _execute(conn, _revoke_statement(entry), f"revoking {entry.describe()} from {entry.grantee!r}")
        for name in ours:
            # PostgreSQL names whatever still depends on the role (privileges in other databases, objects).
            _execute(conn, sql.SQL("DROP ROLE {}").format(sql.Identifier(name)), f"dropping role {name!r}")
    return [f"dropped role {name!r}" for name in ours]


_SESSION_CHECK = """
SELECT session_user::text, pg_has_role(session_user, %s, 'USAGE'),
       current_setting('default_transaction_read_only')
"""


def check_login(conn: psycopg.Connection, creds: DatabaseCredentials, group_role: str, *,
                read_only: bool = False) -> None:
    """The secret's session is its user, holds the group's privileges and, with ``read_only``, is read-only by
    default (``ReadOnlyTransactions``; without it the setting is not checked: the privileges refuse writes)."""
    session_user, holds_group, read_only_default = one_row(conn.execute(_SESSION_CHECK, (group_role,)),
                                                           f"the session of {creds.username!r}")
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


def reset_password(conn: psycopg.Connection, creds: DatabaseCredentials) -> None:
    """Set the role's password to the secret's (as a SCRAM verifier), with LOGIN."""
    _execute(conn, sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
        sql.Identifier(creds.username), sql.Literal(scram_verifier(conn, creds.username, creds.password))),
        f"resetting the password of {creds.username!r}")
