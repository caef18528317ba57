"""The bootstrap itself: read the master secret, create or adopt the user secret, reconcile the database, prove the
login works (or, on delete, drop the roles and the secret). See the package docstring for the order of work."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rotation.bootstrap.grants import check_login, drop_roles, inspect_database, reconcile_database, reset_password
from rotation.bootstrap.request import _SECRET_NAME, BootstrapRequest
from rotation.bootstrap.secrets import BootstrapSecrets, ExistingSecret
from rotation.config import Settings, StrategyName
from rotation.credentials import DEFAULT_DBNAME, MAX_IDENTIFIER_BYTES, DatabaseCredentials, sslmode_of
from rotation.exceptions import BootstrapError, InvalidEventError, LoginRefused, PendingValueMissing, SecretFormatError
from rotation.observability import annotate, logger
from rotation.policy import (
    CREATED_BY_TAG,
    alternate_role_mark,
    bootstrap_role_mark,
    locate_admin_server,
    pending_mismatch,
    require_same_cluster,
    weaker_tls,
)
from rotation.ports import ClusterDirectory
from rotation.topology import Endpoint

if TYPE_CHECKING:
    from rotation.database import PostgresDatabase

SECRET_NAME_PREFIX = "rds-db-credentials"  # noqa: S105 - a name prefix, not a password


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
    """The order of work (see the package docstring) on its adapters; rotation.wiring.bootstrapper builds one."""

    def __init__(self, secrets: BootstrapSecrets, database: PostgresDatabase, settings: Settings,
                 directory: Callable[[], ClusterDirectory]) -> None:
        self._secrets = secrets
        self._database = database
        self._settings = settings
        self._directory = directory

    # ---- shared

    def _target(self, request: BootstrapRequest) -> _Target:
        """The admin's login on the master's own server (rotation.policy), and the new secret's connection keys.

        The event may name another endpoint of the same cluster for the user secret (a reader, say) and a TLS
        mode at least as strong as the admin's; the admin itself always connects where and how the master side
        says, so an event can neither send the master credentials elsewhere nor lower their TLS.
        """
        source = f"master secret {request.master_secret_id}"
        master_arn, master = self._secrets.read(request.master_secret_id, source)
        server = locate_admin_server(master, source, settings=self._settings,
                                     tags=lambda: self._secrets.describe(master_arn).tags,
                                     directory=self._directory)
        dbname = request.dbname or (master.get("dbname") if isinstance(master.get("dbname"), str) else None) \
            or DEFAULT_DBNAME
        admin = DatabaseCredentials.admin_from_secret(master, source, endpoint=server.endpoint,
                                                      sslmode=server.sslmode, dbname=dbname)
        host = request.host or (master["host"] if isinstance(master.get("host"), str) else server.endpoint.host)
        user_endpoint = Endpoint(host, request.port or server.endpoint.port)
        server = require_same_cluster(user_endpoint, server, self._directory, "the event's Host/Port")
        connection: dict[str, Any] = {
            "engine": master.get("engine", "postgres"),
            "host": host,
            "port": user_endpoint.port,
            "dbname": dbname,
        }
        connection.update({key: master[key] for key in _IDENTITY_KEYS if master.get(key)})
        if server.cluster and "dbInstanceIdentifier" not in connection:
            connection.setdefault("dbClusterIdentifier", server.cluster)
        ssl = request.ssl if request.ssl is not None else master.get("ssl")
        if ssl is not None:
            connection["ssl"] = ssl
        elif server.sslmode != "verify-full":
            connection["ssl"] = server.sslmode
        user_sslmode = sslmode_of(connection, "the new secret")
        if weaker_tls(user_sslmode, server.sslmode):
            raise InvalidEventError(
                f"the event's SSL would make the new secret connect with sslmode={user_sslmode}, weaker than the "
                f"master's own sslmode={server.sslmode}; give an SSL at least as strong, or leave it out"
            )
        cluster = connection.get("dbClusterIdentifier") or connection.get("dbInstanceIdentifier") or host
        secret_name = request.secret_name or f"{SECRET_NAME_PREFIX}/{cluster}/{request.username}"
        if not _SECRET_NAME.fullmatch(secret_name):
            raise InvalidEventError(
                f"the default secret name {secret_name!r} has characters Secrets Manager does not allow; give "
                "SecretName"
            )
        annotate(secret_name=secret_name, username=request.username, group_role=request.group_role)
        return _Target(admin, master_arn, connection, secret_name)

    @staticmethod
    def _login_roles(request: BootstrapRequest, secret_username: str | None) -> tuple[str, ...]:
        """The login roles this bootstrap manages: the user, and its ``_clone`` only with alternating users or
        when the secret names it. Under single-user a role of that name is someone else's: left alone."""
        if request.strategy is StrategyName.ALTERNATING_USERS or secret_username == request.clone:
            return (request.clone, request.username)
        return (request.username,)

    # ---- create / update

    def apply(self, request: BootstrapRequest) -> BootstrapResult:
        target = self._target(request)
        existing = self._secrets.find(target.secret_name)
        if existing is not None and existing.scheduled_for_deletion:
            raise BootstrapError(
                f"secret {target.secret_name} is scheduled for deletion; restore it (aws secretsmanager "
                f"restore-secret --secret-id {existing.arn}) to keep its password, or choose another SecretName"
            )
        # The secret to adopt, its ARN and its AWSCURRENT value.
        adopted = None if existing is None else (existing, *self._read_existing(request, existing))
        secret_username = None if adopted is None else adopted[2]["username"]
        changes: list[str] = []
        with self._database.connect(target.admin, as_admin=True) as conn:
            plan = inspect_database(conn, request,
                                    clone=request.clone in self._login_roles(request, secret_username),
                                    role_mark=bootstrap_role_mark(target.secret_name))
            if adopted is None:
                document, arn, login_password = self._create_secret(request, target)
                changes.append(f"created secret {target.secret_name}")
            else:
                document, arn, updated = self._adopt_secret(request, target, *adopted)
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
        changes += self._prove_login(creds, request, target.admin, arn, existing)
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

    def _read_existing(self, request: BootstrapRequest, existing: ExistingSecret) -> tuple[str, dict[str, Any]]:
        """The ARN and AWSCURRENT value of the secret to adopt, checked to be this login's (read only)."""
        source = f"AWSCURRENT of secret {existing.arn}"
        arn, current = self._secrets.read(existing.arn, source)
        ours = [name for name in (request.username, request.clone) if len(name.encode()) <= MAX_IDENTIFIER_BYTES]
        if current.get("username") not in ours:
            raise BootstrapError(
                f"secret {existing.name} exists but is for user {current.get('username')!r}, not "
                f"{request.username!r}; give another SecretName"
            )
        if not isinstance(current.get("password"), str) or not current["password"]:
            raise BootstrapError(f"{source} has no password; delete the secret or give another SecretName")
        return arn, current

    def _adopt_secret(self, request: BootstrapRequest, target: _Target, existing: ExistingSecret, arn: str,
                      current: dict[str, Any]) -> tuple[dict[str, Any], str, list[str]]:
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
                     arn: str, existing: ExistingSecret | None) -> list[str]:
        """Log in with the secret; if the role's password differs, the secret wins (unless a rotation is under
        way: see _rotation_in_progress)."""
        group_role, read_only = request.group_role, request.read_only_transactions
        try:
            with self._database.connect(creds) as conn:
                check_login(conn, creds, group_role, read_only=read_only)
            return []
        except LoginRefused:
            pass
        if existing is not None and existing.pending_version is not None:
            self._rotation_in_progress(creds, request, existing, existing.pending_version)
            return []
        logger.warning(f"role {creds.username!r} does not accept the password in secret {arn}; resetting the role "
                       "to the secret's password (the secret is the truth)")
        with self._database.connect(admin, as_admin=True) as conn:
            reset_password(conn, creds)
        with self._database.connect(creds) as conn:
            check_login(conn, creds, group_role, read_only=read_only)
        return [f"role {creds.username!r}: password reset to the secret's"]

    def _rotation_in_progress(self, current: DatabaseCredentials, request: BootstrapRequest,
                              existing: ExistingSecret, version: str) -> None:
        """AWSCURRENT is refused while a rotation is under way: keep AWSPENDING's password if it logs in, else refuse.

        After single-user's setSecret the database holds AWSPENDING's password and refuses AWSCURRENT's until
        finishSecret publishes the new one. Resetting the role to AWSCURRENT's then would make finishSecret
        publish a password the database no longer accepts. The bootstrap never changes a password while a
        rotation is under way; rotation repair is the tool for one that is stuck.
        """
        source = f"AWSPENDING version {version} of secret {existing.arn}"
        refused = (f"role {current.username!r} does not accept the password in AWSCURRENT of secret {existing.name} "
                   f"and a rotation is in progress (AWSPENDING on version {version})")
        what_to_do = (f"the bootstrap does not change a password during a rotation: let the rotation finish, or "
                      f"repair it (rotation repair --secret-id {existing.arn}), then run the bootstrap again")
        try:
            pending = DatabaseCredentials.from_secret(self._secrets.read_pending(existing.arn, version, source),
                                                      source)
        except PendingValueMissing as exc:
            raise BootstrapError(f"{refused}; AWSPENDING holds no value yet; {what_to_do}") from exc
        except SecretFormatError as exc:
            raise BootstrapError(f"{refused}; {exc}; {what_to_do}") from exc
        problem = pending_mismatch(current, pending, {request.username, request.clone})
        if problem:
            raise BootstrapError(f"{refused}; AWSPENDING is not this login's ({problem}); {what_to_do}")
        try:
            with self._database.connect(pending) as conn:
                check_login(conn, pending, request.group_role, read_only=request.read_only_transactions)
        except LoginRefused as exc:
            raise BootstrapError(f"{refused}; the database refuses AWSPENDING's password too; {what_to_do}") from exc
        logger.warning(f"{refused}; AWSPENDING's password logs in (the rotation has set it), so the role is left "
                       "as it is rather than reset to AWSCURRENT's: finishing the rotation publishes it")

    # ---- delete

    def remove(self, request: BootstrapRequest, physical_id: str | None = None) -> list[str]:
        """Drop the roles, then delete the secret (RemoveOnDelete). Whatever is already gone is skipped."""
        target = self._target(request)
        if physical_id is not None and physical_id != target.secret_name:
            # CloudFormation deletes a replaced resource with its old properties, so they name the same secret
            # unless the master secret changed since; removing the wrong login would be worse than none.
            raise BootstrapError(f"resource {physical_id} no longer matches its properties (they now name secret "
                                 f"{target.secret_name}); nothing removed")
        existing = self._secrets.find(target.secret_name)
        live = existing is not None and not existing.scheduled_for_deletion
        # Only what Create made: a Delete event is as easy to forge as any other (naming the master secret and an
        # application's role, say), so the tag and the role comments decide, not the properties.
        ours = existing if live and existing is not None and existing.created_by_bootstrap else None
        secret_username = self._secret_username(ours) if ours is not None else None
        login_roles = self._login_roles(request, secret_username)
        marks = {bootstrap_role_mark(target.secret_name), *(alternate_role_mark(role) for role in login_roles)}
        with self._database.connect(target.admin, as_admin=True) as conn:
            changes = drop_roles(conn, (*login_roles, request.group_role), marks)
        if ours is not None:
            self._secrets.delete(ours.arn)
            changes.append(f"deleted secret {target.secret_name}")
        elif live:
            logger.warning(f"secret {target.secret_name} was not created by the bootstrap (no "
                           f"{CREATED_BY_TAG[0]} tag): left in place")
        logger.info("removed", extra={"changes": changes})
        return changes

    def _secret_username(self, existing: ExistingSecret) -> str | None:
        """Whom the secret's AWSCURRENT names; None when it cannot be read as a secret (nothing then is ours)."""
        try:
            return self._secrets.read(existing.arn, f"AWSCURRENT of secret {existing.arn}")[1].get("username")
        except SecretFormatError as exc:
            logger.warning(f"{exc}; only the roles named in the properties are removed")
            return None
