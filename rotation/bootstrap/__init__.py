"""The bootstrap function: a least-privilege read-only role, its login user and its secret, in one idempotent call.

No person ever sees the password: it is generated here, stored in Secrets Manager, and reaches PostgreSQL only
as a SCRAM verifier.

Order of work, chosen so that a crash at any line leaves nothing a re-run cannot finish:

1. Read the master secret and inspect the database (read only): a missing table, a master without CREATEROLE
   or an unreachable host fails here, before anything is created.
2. Create the secret, if it does not exist, *before* the role gets its password: a role whose password
   nobody knows can never be left behind. An existing secret is the truth: it is kept, and the role is
   reset to its password if that no longer logs in, except during a rotation (AWSPENDING on another
   version): then AWSPENDING's password is kept if it logs in, and otherwise the bootstrap refuses.
3. Reconcile the roles and privileges in one transaction: either all of it or none of it is committed.
4. Log in with the secret and check who the session is, that it holds the group's privileges and (with
   ``ReadOnlyTransactions``) that it is read-only by default.

The package, one module per concern:

- ``request``: the event (or ResourceProperties) parsed and checked: BootstrapRequest, TableName.
- ``secrets``: the Secrets Manager calls beyond rotation's: BootstrapSecrets, ExistingSecret.
- ``grants``: everything done in PostgreSQL: inspect_database, DatabasePlan, reconcile_database, drop_roles,
  check_login, and what "brought in line" means for roles that already exist.
- ``service``: the order of work above: Bootstrapper, BootstrapResult (rotation.wiring builds one).
- ``entry``: handle, the Lambda entry point (direct invocation or CloudFormation custom resource).

``rotation.handler.bootstrap`` imports this package only when the bootstrap function is invoked, so the rotation
function's cold start never loads it (nor psycopg through it).
"""

from __future__ import annotations

from rotation.bootstrap.entry import handle
from rotation.bootstrap.grants import (
    READ_ONLY_SETTING,
    AclEntry,
    DatabasePlan,
    Relation,
    RoleState,
    check_login,
    drop_roles,
    inspect_database,
    reconcile_database,
)
from rotation.bootstrap.request import DEFAULT_SCHEMAS, GROUP_ROLE_SUFFIX, BootstrapRequest, TableName
from rotation.bootstrap.secrets import BootstrapSecrets, ExistingSecret
from rotation.bootstrap.service import SECRET_NAME_PREFIX, Bootstrapper, BootstrapResult

__all__ = [
    "DEFAULT_SCHEMAS",
    "GROUP_ROLE_SUFFIX",
    "READ_ONLY_SETTING",
    "SECRET_NAME_PREFIX",
    "AclEntry",
    "BootstrapRequest",
    "BootstrapResult",
    "BootstrapSecrets",
    "Bootstrapper",
    "DatabasePlan",
    "ExistingSecret",
    "Relation",
    "RoleState",
    "TableName",
    "check_login",
    "drop_roles",
    "handle",
    "inspect_database",
    "reconcile_database",
]
