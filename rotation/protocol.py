"""The rotation protocol: createSecret, setSecret, testSecret, finishSecret.

Knows nothing of boto3 or psycopg: it drives a :class:`~rotation.ports.SecretStore` and a
:class:`~rotation.ports.Database`. Each step re-reads the state it needs and converges, because Secrets
Manager retries whole rotations with the same token after any failure, and a Lambda can die at any line.

Secrets Manager calls per full rotation (the budget is in benchmarks/): createSecret 4 (describe, current,
pending probe, put), setSecret 3 (+1 admin secret for alternating users), testSecret 2, finishSecret 2.
Database connections: setSecret 1 (alternating: 2, the confused-deputy check and the admin), testSecret 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from rotation.config import Settings, StrategyName
from rotation.credentials import DatabaseCredentials, check_identifier, parse_secret_string
from rotation.events import RotationEvent, Step
from rotation.exceptions import (
    ConfigurationError,
    LoginRefused,
    PendingValueMissing,
    RdsApiError,
    RotationStateError,
    SecretFormatError,
    WriterUnknown,
)
from rotation.policy import AdminServer, locate_admin_server, pending_mismatch, require_same_cluster
from rotation.ports import AWSCURRENT, AWSPENDING, AWSPREVIOUS, ClusterDirectory, Database, SecretMetadata, SecretStore
from rotation.topology import AuroraName, Endpoint, is_rds_host

CLONE_SUFFIX = "_clone"
#: testSecret on a reader: how long the change made on the writer may take to replicate there (Aurora's replica
#: lag is typically well under a second); well inside the function timeout.
REPLICA_WAIT_S = 5.0
ALREADY_SET = "AWSPENDING already logs in (an earlier attempt set it); nothing to change"


@dataclass(frozen=True, slots=True)
class StepOutcome:
    step: Step
    #: What happened, in words fit for a log line or a CLI report.
    action: str
    changed: bool
    strategy: str | None = None
    username: str | None = None


def toggle_clone(username: str) -> str:
    """The alternate user of ``username``: AWS's ``_clone`` convention, so secrets migrate as they are."""
    if username.endswith(CLONE_SUFFIX):
        return username[: -len(CLONE_SUFFIX)]
    return check_identifier(username + CLONE_SUFFIX, "alternate username")


def original_role(username: str) -> str:
    return username.removesuffix(CLONE_SUFFIX)


@dataclass(frozen=True, slots=True)
class AdminAccess:
    """The admin's login, on the admin's server (see rotation.policy)."""

    creds: DatabaseCredentials
    server: AdminServer


class SecretReads:
    """Secret reads for one step, parsed and named for error messages."""

    def __init__(self, store: SecretStore, metadata: SecretMetadata, settings: Settings | None = None,
                 directory: Callable[[], ClusterDirectory] | None = None) -> None:
        self._store = store
        self.metadata = metadata
        self._settings = settings or Settings()
        self._directory = directory or _no_directory

    def directory(self) -> ClusterDirectory:
        return self._directory()

    def user(self, stage: str, version_id: str | None = None) -> DatabaseCredentials:
        source = f"{stage} version of secret {self.metadata.arn}"
        raw = self._store.get_secret_string(self.metadata.arn, stage, version_id)
        return DatabaseCredentials.from_secret(parse_secret_string(raw, source), source)

    def admin(self, user: DatabaseCredentials) -> AdminAccess:
        """The admin secret's login on the admin's own server, after checking ``user`` points at that server.

        Nothing in the user secret decides where or how the admin connects: host, port and TLS mode come from
        the admin side (rotation.policy.locate_admin_server).
        """
        masterarn = user.masterarn
        if not masterarn:
            raise SecretFormatError(
                f"secret {self.metadata.arn} has no 'masterarn' key: this strategy needs the ARN of the admin "
                "secret that may change this user's password"
            )
        source = f"admin secret {masterarn} (masterarn of {self.metadata.arn})"
        document = parse_secret_string(self._store.get_secret_string(masterarn, AWSCURRENT), source)
        server = locate_admin_server(document, source, settings=self._settings,
                                     tags=lambda: self._store.describe(masterarn).tags, directory=self._directory)
        server = require_same_cluster(user.endpoint, server, self._directory, f"secret {self.metadata.arn}")
        creds = DatabaseCredentials.admin_from_secret(document, source, endpoint=server.endpoint,
                                                      sslmode=server.sslmode, dbname=user.dbname)
        return AdminAccess(creds, server)


def writer_endpoint(creds: DatabaseCredentials, directory: Callable[[], ClusterDirectory], what: str) -> Endpoint:
    """Where a password change for a secret on ``creds.endpoint`` must go: its cluster's writer.

    A reader (Aurora's ``cluster-ro-`` name, a reader instance) refuses writes (SQLSTATE 25006); the secret's
    own host is kept for logins and never rewritten. The cluster endpoint and any server that is not an RDS
    name are their own writer; a reader endpoint's writer is the same name with ``cluster-ro-`` -> ``cluster-``;
    a custom or Aurora instance endpoint needs the RDS API, asked about the secret's ``dbClusterIdentifier``
    and believed only when it lists the secret's own endpoint (the identifier is whatever the secret says).
    """
    name = AuroraName.parse(creds.host)
    if name is not None and name.kind in ("cluster", "cluster-ro"):
        writer = name.writer_host()
        assert writer is not None
        return Endpoint(writer, creds.port)
    if name is None and not is_rds_host(creds.host):
        return creds.endpoint  # a self-managed server, an IP address, a CNAME: the host is the server
    cluster = creds.document.get("dbClusterIdentifier")
    if not isinstance(cluster, str) or not cluster.strip():
        if name is None:
            return creds.endpoint  # an RDS instance endpoint outside a cluster: a standalone instance is its writer
        raise WriterUnknown(
            f"{what} points at the custom endpoint {creds.endpoint}, which may lead to a reader; a password change "
            "must go to the cluster's writer, and the secret has no dbClusterIdentifier to look it up with the RDS "
            "API. Add dbClusterIdentifier to the secret, or point it at the cluster endpoint; nothing was changed"
        )
    try:
        topology = directory().cluster(cluster.strip())
    except RdsApiError as exc:
        raise WriterUnknown(f"{what} points at {creds.endpoint}, which may be a reader, and the RDS API could not "
                            f"name the writer of cluster {cluster.strip()!r}: {exc}; nothing was changed") from exc
    if creds.endpoint not in topology:
        raise WriterUnknown(f"{what} points at {creds.endpoint}, which is not an endpoint of cluster "
                            f"{topology.identifier} (its dbClusterIdentifier) as the RDS API lists it; cannot tell "
                            "which server is its writer; nothing was changed")
    return topology.writer


def _may_be_reader(creds: DatabaseCredentials) -> bool:
    """Whether logins at ``creds`` may trail the writer: any Aurora name but the cluster endpoint, and any RDS
    instance endpoint (testSecret only waits, it changes nothing, so no RDS API call is worth making here)."""
    name = AuroraName.parse(creds.host)
    if name is not None:
        return name.kind != "cluster"
    return is_rds_host(creds.host)


def _no_directory() -> ClusterDirectory:
    raise ConfigurationError("no RDS API client was configured for this rotation")


def _refuse_redirected_pending(current: DatabaseCredentials, pending: DatabaseCredentials, expected_username: str,
                               arn: str) -> None:
    """createSecret copies AWSCURRENT; a pending version aimed elsewhere was not written by us."""
    problem = pending_mismatch(current, pending, {expected_username})
    if problem:
        raise RotationStateError(f"AWSPENDING of secret {arn} is not what createSecret writes from AWSCURRENT: "
                                 f"{problem}; refusing to set its password")


def _prove_current(reads: SecretReads, db: Database, admin: AdminAccess, current: DatabaseCredentials,
                   pending: DatabaseCredentials) -> bool:
    """Confused-deputy guard: the requester proves AWSCURRENT's password on the admin's own server.

    Returns False when AWSCURRENT is refused but AWSPENDING already logs in there (an earlier attempt set it,
    single-user through the admin); raises when neither does.
    """
    if db.can_login(admin.server.login(current)):
        return True
    if pending.username == current.username and db.can_login(admin.server.login(pending)):
        return False
    raise LoginRefused(
        f"AWSCURRENT of secret {reads.metadata.arn} (user {current.username!r}) does not log in at the admin's "
        f"server {admin.server.describe()}; refusing to use the admin secret for it"
    )


class SingleUser:
    name = StrategyName.SINGLE_USER

    def pending_username(self, current: DatabaseCredentials) -> str:
        return current.username

    def member_of(self, pending: DatabaseCredentials) -> str | None:
        return None

    def set_password(self, reads: SecretReads, db: Database, current: DatabaseCredentials,
                     pending: DatabaseCredentials) -> tuple[str, bool]:
        if current.masterarn:
            return self._set_with_admin(reads, db, current, pending)
        # On a reader the change goes to the writer, with the same credentials (logins replicate both ways).
        writer = writer_endpoint(current, reads.directory, f"secret {reads.metadata.arn}")
        on_writer = current.at(writer, current.sslmode)
        try:
            db.change_own_password(on_writer, pending.password)
            return f"password of {pending.username!r} changed with the AWSCURRENT credentials", True
        except LoginRefused as refused:
            if db.can_login(pending.at(writer, pending.sslmode)):
                return ALREADY_SET, False
            previous = self._previous(reads)
            # An older version aimed at another server or user is no key to this one.
            if previous is not None and pending_mismatch(current, previous, {current.username}) is None:
                try:
                    db.change_own_password(previous.at(writer, previous.sslmode), pending.password)
                    return f"password of {pending.username!r} changed with the AWSPREVIOUS credentials", True
                except LoginRefused:
                    pass
            raise LoginRefused(
                f"user {pending.username!r} at {on_writer.address} accepts none of the AWSCURRENT, AWSPENDING or "
                f"AWSPREVIOUS passwords of secret {reads.metadata.arn}; reset it (rotation repair explains how)"
            ) from refused

    @staticmethod
    def _set_with_admin(reads: SecretReads, db: Database, current: DatabaseCredentials,
                        pending: DatabaseCredentials) -> tuple[str, bool]:
        """rds.restrict_password_commands: only rds_password members may change passwords, so the user
        cannot change its own; the admin secret does it, under the same guard as alternating users."""
        admin = reads.admin(current)
        if not _prove_current(reads, db, admin, current, pending):
            return ALREADY_SET, False
        db.set_password(admin.creds, pending.username, pending.password)
        return f"password of {pending.username!r} changed by the admin secret", True

    @staticmethod
    def _previous(reads: SecretReads) -> DatabaseCredentials | None:
        if reads.metadata.version_with(AWSPREVIOUS) is None:
            return None
        return reads.user(AWSPREVIOUS)


class AlternatingUsers:
    name = StrategyName.ALTERNATING_USERS

    def pending_username(self, current: DatabaseCredentials) -> str:
        return toggle_clone(current.username)

    def member_of(self, pending: DatabaseCredentials) -> str | None:
        return original_role(pending.username)

    def set_password(self, reads: SecretReads, db: Database, current: DatabaseCredentials,
                     pending: DatabaseCredentials) -> tuple[str, bool]:
        admin = reads.admin(current)
        _prove_current(reads, db, admin, current, pending)
        original = original_role(pending.username)
        acts_as = original if pending.username != original else None
        created = db.ensure_login_role(admin.creds, pending.username, pending.password, acts_as)
        if created:
            return f"created {pending.username!r} as a login member of {original!r}", True
        return f"password of {pending.username!r} changed by the admin secret", True


Strategy = SingleUser | AlternatingUsers


def choose_strategy(setting: StrategyName, secret: DatabaseCredentials, arn: str) -> Strategy:
    if setting is StrategyName.ALTERNATING_USERS:
        if not secret.masterarn:
            raise SecretFormatError(
                f"secret {arn} has no 'masterarn' key, which ROTATION_STRATEGY=alternating-users requires"
            )
        return AlternatingUsers()
    if setting is StrategyName.SINGLE_USER:
        return SingleUser()
    return AlternatingUsers() if secret.masterarn else SingleUser()


class Rotation:
    """One invocation's worth of protocol. The database is built lazily: two of the four steps never need it."""

    def __init__(self, store: SecretStore, database: Callable[[], Database], settings: Settings,
                 annotate: Callable[..., None] = lambda **_: None,
                 directory: Callable[[], ClusterDirectory] | None = None) -> None:
        self._store = store
        self._database_factory = database
        self._settings = settings
        self._annotate = annotate
        self._directory = directory

    def run(self, event: RotationEvent) -> StepOutcome:
        metadata = self._store.describe(event.secret_id)
        self._annotate(secret_arn=metadata.arn)
        skip = self._check_token(metadata, event)
        if skip is not None:
            return skip
        steps = {
            Step.CREATE: self._create_secret,
            Step.SET: self._set_secret,
            Step.TEST: self._test_secret,
            Step.FINISH: self._finish_secret,
        }
        return steps[event.step](event, SecretReads(self._store, metadata, self._settings, self._directory))

    @staticmethod
    def _check_token(metadata: SecretMetadata, event: RotationEvent) -> StepOutcome | None:
        if not metadata.rotation_enabled:
            raise RotationStateError(f"rotation is not enabled for secret {metadata.arn}")
        stages = metadata.versions.get(event.token)
        if stages is None:
            raise RotationStateError(f"token {event.token} is not a version of secret {metadata.arn}")
        if AWSCURRENT in stages:
            return StepOutcome(event.step, f"version {event.token} is already AWSCURRENT; nothing to do", False)
        if AWSPENDING not in stages:
            raise RotationStateError(
                f"version {event.token} of secret {metadata.arn} is not staged AWSPENDING "
                f"(its labels: {', '.join(sorted(stages)) or 'none'})"
            )
        return None

    def _strategy(self, secret: DatabaseCredentials, arn: str) -> Strategy:
        strategy = choose_strategy(self._settings.strategy, secret, arn)
        self._annotate(strategy=str(strategy.name), username=secret.username)
        return strategy

    def _create_secret(self, event: RotationEvent, reads: SecretReads) -> StepOutcome:
        arn = reads.metadata.arn
        current = reads.user(AWSCURRENT)
        strategy = self._strategy(current, arn)
        try:
            self._store.get_secret_string(arn, AWSPENDING, event.token)
        except PendingValueMissing:
            pass
        else:
            return StepOutcome(event.step, "AWSPENDING already holds a value (a retry); kept as is", False,
                               strategy.name, current.username)
        username = strategy.pending_username(current)
        document = current.replaced(username=username, password=self._settings.password_policy.generate())
        self._store.put_pending(arn, event.token, json.dumps(document), event.rotation_token)
        return StepOutcome(event.step, f"stored new credentials for {username!r} as AWSPENDING", True,
                           strategy.name, username)

    def _set_secret(self, event: RotationEvent, reads: SecretReads) -> StepOutcome:
        arn = reads.metadata.arn
        current = reads.user(AWSCURRENT)
        pending = reads.user(AWSPENDING, event.token)
        strategy = self._strategy(current, arn)
        _refuse_redirected_pending(current, pending, strategy.pending_username(current), arn)
        action, changed = strategy.set_password(reads, self._database_factory(), current, pending)
        return StepOutcome(event.step, action, changed, strategy.name, pending.username)

    def _test_secret(self, event: RotationEvent, reads: SecretReads) -> StepOutcome:
        # AWSPENDING was copied from AWSCURRENT, masterarn included, so it alone tells the strategy.
        pending = reads.user(AWSPENDING, event.token)
        strategy = self._strategy(pending, reads.metadata.arn)
        db = self._database_factory()
        member_of = strategy.member_of(pending)
        # On a reader, the change made on the writer arrives by replication: wait for it, bounded.
        if _may_be_reader(pending):
            db.verify(pending, member_of, replica_wait_s=REPLICA_WAIT_S)
        else:
            db.verify(pending, member_of)
        return StepOutcome(event.step, f"AWSPENDING logs in as {pending.username!r} with the expected privileges",
                           False, strategy.name, pending.username)

    def _finish_secret(self, event: RotationEvent, reads: SecretReads) -> StepOutcome:
        # The service only finishes after createSecret stored a value, but a person can invoke finishSecret
        # alone (console Test button, `rotation invoke`): never make an empty version AWSCURRENT.
        if not self._store.has_value(reads.metadata.arn, event.token, AWSPENDING):
            raise RotationStateError(
                f"version {event.token} of secret {reads.metadata.arn} holds no value yet (createSecret has not "
                "run for it); refusing to make it AWSCURRENT"
            )
        current_version = reads.metadata.version_with(AWSCURRENT)
        self._store.move_current(reads.metadata.arn, event.token, current_version)
        return StepOutcome(event.step, f"AWSCURRENT moved to version {event.token} from {current_version}", True)
