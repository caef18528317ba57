"""Who the admin secret may act for, and where: the one place for the rules the protocol, repair, the bootstrap
and preflight all follow.

The principle: the admin secret only ever acts for a role whose current password the requester has just proven,
on the very server the admin acts on, over the admin's own TLS settings. A user secret may have been written by
someone who can edit nothing else (AmazonRDSDataFullAccess grants exactly that on ``rds-db-credentials/*``), so:

- the admin's server (host, port, TLS mode) comes from the admin side only: the admin secret's own keys, the
  function's ADMIN_ENDPOINT, or the RDS API for the cluster the admin secret names (its ``dbClusterIdentifier``
  or, for an RDS-managed master secret, its ``aws:rds:primaryDB...Arn`` tag) -- :func:`locate_admin_server`;
- the user secret must point at that server, or at another endpoint of the same cluster as RDS lists it
  -- :func:`require_same_cluster`;
- proof of possession happens on the admin's server with the admin's TLS mode -- :meth:`AdminServer.login`;
- the admin never resets or clones an administrative role -- :data:`POWERFUL_ROLES`, enforced in SQL by the
  database adapter over the transitive closure of memberships;
- a pending version must be what createSecret would have written from the current one -- :func:`pending_mismatch`.

Pure: Secrets Manager and the RDS API are reached through callables the caller passes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from rotation.config import Settings
from rotation.credentials import DatabaseCredentials
from rotation.exceptions import AdminEndpointUnknown, ForeignEndpoint, RdsApiError
from rotation.ports import ClusterDirectory
from rotation.topology import AuroraName, ClusterTopology, Endpoint

#: Tags RDS puts on the master secrets it manages (ManageMasterUserPassword).
CLUSTER_TAG = "aws:rds:primaryDBClusterArn"
INSTANCE_TAG = "aws:rds:primaryDBInstanceArn"

#: Role attributes that make a role administrative (pg_roles columns).
ADMINISTRATIVE_ATTRIBUTES = ("rolsuper", "rolcreaterole", "rolreplication", "rolbypassrls")

#: Roles whose members hold server-wide power: RDS's administrators' groups and the predefined roles that
#: write anywhere, run programs or files on the server, or act on other sessions. A role in any of them,
#: directly or through other roles, is administrative. (pg_read_all_data is not here: it is the broad
#: read-only grant a reader may legitimately hold.)
POWERFUL_ROLES = frozenset({
    "rds_superuser", "rds_password", "rds_replication", "rdsadmin",
    "pg_write_all_data", "pg_execute_server_program", "pg_read_server_files", "pg_write_server_files",
    "pg_signal_backend", "pg_checkpoint", "pg_create_subscription", "pg_use_reserved_connections",
    "pg_signal_autovacuum_worker",
})

#: What the bootstrap creates carries a mark, so that a Delete (which anyone able to write an event can forge)
#: removes only that: a tag on secrets, a comment on roles.
CREATED_BY_TAG = ("aurora-postgres-rotation:created-by", "bootstrap")


def bootstrap_role_mark(secret_name: str) -> str:
    return f"aurora-postgres-rotation: created by the bootstrap for secret {secret_name}"


def alternate_role_mark(original: str) -> str:
    return f"aurora-postgres-rotation: created by rotation as the alternate of {original}"


#: sslmode from weakest to strongest.
TLS_STRENGTH = {"disable": 0, "require": 1, "verify-ca": 2, "verify-full": 3}


def weaker_tls(sslmode: str, than: str) -> bool:
    return TLS_STRENGTH[sslmode] < TLS_STRENGTH[than]


@dataclass(frozen=True, slots=True)
class AdminServer:
    """Where and how the admin connects, decided from the admin side only."""

    endpoint: Endpoint
    sslmode: str
    #: Where the endpoint came from, for messages ("the admin secret", "ADMIN_ENDPOINT", "the RDS API ...").
    source: str
    #: The cluster the admin side names, when it names one; None for a standalone server.
    cluster: str | None = None
    #: The RDS API's answer, when it was asked already.
    topology: ClusterTopology | None = None

    def login(self, creds: DatabaseCredentials) -> DatabaseCredentials:
        """``creds`` made against the admin's server, with the admin's TLS mode: a proof of possession there."""
        return creds.at(self.endpoint, self.sslmode)

    def describe(self) -> str:
        return f"{self.endpoint} (from {self.source}, sslmode={self.sslmode})"


def _name(document: Mapping[str, Any], key: str) -> str | None:
    value = document.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def locate_admin_server(document: Mapping[str, Any], source: str, *, settings: Settings,
                        tags: Callable[[], Mapping[str, str]],
                        directory: Callable[[], ClusterDirectory]) -> AdminServer:
    """The admin's server: its secret's own host, else ADMIN_ENDPOINT, else the RDS API for its cluster.

    ``tags`` and ``directory`` are called only when needed (an RDS-managed master secret without a pin).
    """
    endpoint, sslmode = DatabaseCredentials.admin_location(document, source)
    cluster = _name(document, "dbClusterIdentifier")
    if endpoint is not None:
        return AdminServer(endpoint, sslmode, source, cluster=cluster)
    if settings.admin_endpoint is not None:
        return AdminServer(settings.admin_endpoint, settings.admin_sslmode, "ADMIN_ENDPOINT", cluster=cluster)
    instance = _name(document, "dbInstanceIdentifier")
    if cluster is None and instance is None:
        secret_tags = tags()
        cluster = secret_tags.get(CLUSTER_TAG)
        instance = secret_tags.get(INSTANCE_TAG)
    if cluster is not None:
        topology = directory().cluster(cluster)
        return AdminServer(topology.writer, settings.admin_sslmode,
                           f"the RDS API (writer of cluster {topology.identifier})", topology.identifier, topology)
    if instance is not None:
        found = directory().instance(instance)
        return AdminServer(found, settings.admin_sslmode, f"the RDS API (instance {instance})")
    raise AdminEndpointUnknown(
        f"{source} names no server (no 'host'), is not tagged {CLUSTER_TAG} or {INSTANCE_TAG} as an RDS-managed "
        "master secret is, and ADMIN_ENDPOINT is not set: the admin's server is never taken from the user secret. "
        "Add host/port/ssl to the admin secret, or set ADMIN_ENDPOINT (and ADMIN_SSLMODE) on the function"
    )


def require_same_cluster(endpoint: Endpoint, admin: AdminServer, directory: Callable[[], ClusterDirectory],
                         what: str) -> AdminServer:
    """Refuse unless ``endpoint`` is the admin's server or another endpoint of its cluster as RDS lists it.

    Returns ``admin``, with the RDS API's topology attached when it had to be asked. A matching
    ``dbClusterIdentifier`` in the user secret proves nothing: whoever edits the secret writes it.
    """
    if endpoint == admin.endpoint:
        return admin
    admin_name, user_name = AuroraName.parse(admin.endpoint.host), AuroraName.parse(endpoint.host)
    if admin_name and user_name and admin_name.same_cluster(user_name) and endpoint.port == admin.endpoint.port:
        return admin  # the cluster and reader names of one cluster, in a domain only AWS controls
    cluster = admin.cluster
    if cluster is None and admin_name is not None and admin_name.kind != "cluster-custom":
        cluster = admin_name.name
    if cluster is None:
        raise ForeignEndpoint(
            f"{what} points at {endpoint}, but the admin acts on {admin.describe()}, which names no cluster "
            "whose other endpoints the RDS API could list; refusing to act for a secret aimed at another server "
            "(point the secret at the admin's endpoint, or give the admin secret its dbClusterIdentifier)"
        )
    try:
        topology = admin.topology or directory().cluster(cluster)
    except RdsApiError as exc:
        raise ForeignEndpoint(
            f"{what} points at {endpoint}, not at the admin's {admin.describe()}, and the RDS API could not "
            f"list the endpoints of cluster {cluster} to prove it is another of them ({exc}); refusing to act for "
            "a secret aimed at another server"
        ) from exc
    if admin.endpoint not in topology:
        raise ForeignEndpoint(f"the admin's endpoint {admin.endpoint} is not an endpoint of cluster "
                              f"{topology.identifier} as the RDS API lists it; check the admin secret")
    if endpoint not in topology:
        raise ForeignEndpoint(
            f"{what} points at {endpoint}, which is not an endpoint of cluster {topology.identifier} (the "
            f"admin's, {admin.endpoint}) as the RDS API lists it; refusing to act for a secret aimed at another "
            "server"
        )
    return AdminServer(admin.endpoint, admin.sslmode, admin.source, topology.identifier, topology)


def pending_mismatch(current: DatabaseCredentials, pending: DatabaseCredentials,
                     usernames: Collection[str]) -> str | None:
    """Why ``pending`` is not what createSecret writes from ``current`` (None when it is).

    createSecret copies AWSCURRENT and changes only the password (and, for alternating users, the username):
    a pending version aimed elsewhere, or with another TLS mode or admin secret, was not written by a rotation,
    and setting or promoting it could point the application, or the admin, somewhere else.
    """
    problems = []
    if (pending.endpoint, pending.dbname) != (current.endpoint, current.dbname):
        problems.append(f"it points at {pending.endpoint}/{pending.dbname}, AWSCURRENT at "
                        f"{current.endpoint}/{current.dbname}")
    if pending.sslmode != current.sslmode:
        problems.append(f"it connects with sslmode={pending.sslmode}, AWSCURRENT with sslmode={current.sslmode}")
    if pending.masterarn != current.masterarn:
        problems.append("it names another admin secret (masterarn) than AWSCURRENT")
    if pending.username not in usernames:
        expected = " or ".join(repr(name) for name in sorted(usernames))
        problems.append(f"it is for user {pending.username!r}, not {expected}")
    return "; ".join(problems) or None
