"""In-memory stand-ins for the two ports, for pure protocol logic only.

Every behaviour proven here is proven again end to end against PostgreSQL and the moto server.
"""

from __future__ import annotations

import json

from rotation.credentials import DatabaseCredentials
from rotation.exceptions import (
    DatabaseUnreachable,
    LoginRefused,
    PendingValueMissing,
    RdsApiError,
    SecretsManagerError,
    VerificationError,
)
from rotation.ports import AWSCURRENT, AWSPENDING, AWSPREVIOUS, SecretMetadata
from rotation.topology import ClusterTopology, Endpoint


class FakeStore:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, str | None]] = {}  # arn -> version -> SecretString
        self.stages: dict[str, dict[str, set[str]]] = {}  # arn -> version -> labels
        self.rotation_enabled: dict[str, bool] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self.calls: list[str] = []
        self.seen: set[tuple[str, str]] = set()

    def create(self, arn: str, document: dict, version: str = "v0", tags: dict[str, str] | None = None) -> str:
        self.tags[arn] = dict(tags or {})
        self.values[arn] = {version: json.dumps(document)}
        self.stages[arn] = {version: {AWSCURRENT}}
        self.rotation_enabled[arn] = True
        return arn

    def stage_pending(self, arn: str, token: str) -> None:
        for labels in self.stages[arn].values():
            labels.discard(AWSPENDING)
        self.stages[arn][token] = {AWSPENDING}
        self.values[arn][token] = None

    def value(self, arn: str, stage: str) -> dict:
        version = next(v for v, labels in self.stages[arn].items() if stage in labels)
        return json.loads(self.values[arn][version])

    def describe(self, secret_id: str) -> SecretMetadata:
        self.calls.append("describe")
        return SecretMetadata(
            arn=secret_id,
            name=secret_id,
            rotation_enabled=self.rotation_enabled[secret_id],
            versions={v: frozenset(labels) for v, labels in self.stages[secret_id].items() if labels},
            tags=self.tags.get(secret_id, {}),
        )

    def get_secret_string(self, secret_id: str, stage: str, version_id: str | None = None) -> str:
        self.calls.append(f"get:{stage}")
        for version, labels in self.stages[secret_id].items():
            if stage in labels and (version_id is None or version == version_id):
                value = self.values[secret_id][version]
                if value is None:
                    raise PendingValueMissing(f"version {version} has no value")
                self.seen.add((secret_id, version))
                return value
        raise SecretsManagerError(f"no version with stage {stage}")

    def has_value(self, secret_id: str, version_id: str, stage: str) -> bool:
        # Like the real adapter: a version seen with a value costs no call.
        if (secret_id, version_id) in self.seen:
            return True
        self.calls.append(f"get:{stage}")
        return self.values[secret_id].get(version_id) is not None

    def put_pending(self, secret_id: str, token: str, secret_string: str, rotation_token: str | None) -> None:
        self.calls.append("put")
        for labels in self.stages[secret_id].values():
            labels.discard(AWSPENDING)
        self.stages[secret_id].setdefault(token, set()).add(AWSPENDING)
        self.values[secret_id][token] = secret_string
        self.seen.add((secret_id, token))

    def move_current(self, secret_id: str, to_version: str, from_version: str | None) -> None:
        self.calls.append("move")
        for labels in self.stages[secret_id].values():
            labels.discard(AWSPREVIOUS)
        if from_version is not None:
            self.stages[secret_id][from_version].discard(AWSCURRENT)
            self.stages[secret_id][from_version].add(AWSPREVIOUS)
        self.stages[secret_id][to_version].add(AWSCURRENT)


DEFAULT_ENDPOINT = Endpoint("db", 5432)


class FakeDirectory:
    """The RDS API's answers: cluster and instance identifiers (or ARNs) to endpoints."""

    def __init__(self, clusters: dict[str, ClusterTopology] | None = None,
                 instances: dict[str, Endpoint] | None = None) -> None:
        self.clusters = dict(clusters or {})
        self.instances = dict(instances or {})
        self.calls: list[str] = []

    def cluster(self, identifier: str) -> ClusterTopology:
        self.calls.append(f"cluster:{identifier}")
        if identifier not in self.clusters:
            raise RdsApiError(f"the RDS API knows no cluster {identifier}")
        return self.clusters[identifier]

    def instance(self, identifier: str) -> Endpoint:
        self.calls.append(f"instance:{identifier}")
        if identifier not in self.instances:
            raise RdsApiError(f"the RDS API knows no instance {identifier}")
        return self.instances[identifier]


class FakeDatabase:
    """A server's roles with passwords and memberships; logins check the address and the password like libpq and
    the server would. ``decoys``: other servers (address -> role passwords) someone may point a secret at."""

    def __init__(self, roles: dict[str, str], admin: str | None = None, endpoint: Endpoint = DEFAULT_ENDPOINT,
                 decoys: dict[Endpoint, dict[str, str]] | None = None) -> None:
        self.passwords = dict(roles)
        self.members: dict[str, set[str]] = {}
        self.admin = admin
        self.endpoint = endpoint
        self.decoys = dict(decoys or {})
        self.connections = 0
        #: (address, username) of every login attempt, in order.
        self.logins: list[tuple[Endpoint, str]] = []

    def _login(self, creds: DatabaseCredentials) -> None:
        self.connections += 1
        self.logins.append((creds.endpoint, creds.username))
        passwords = self.passwords if creds.endpoint == self.endpoint else self.decoys.get(creds.endpoint)
        if passwords is None:
            raise DatabaseUnreachable(f"cannot reach {creds.address}")
        if passwords.get(creds.username) != creds.password:
            raise LoginRefused(f"login refused for user {creds.username!r}")

    def can_login(self, creds: DatabaseCredentials) -> bool:
        try:
            self._login(creds)
        except LoginRefused:
            return False
        return True

    def change_own_password(self, creds: DatabaseCredentials, new_password: str) -> None:
        self._login(creds)
        self.passwords[creds.username] = new_password

    def set_password(self, admin: DatabaseCredentials, username: str, new_password: str) -> None:
        self._login(admin)
        self.passwords[username] = new_password

    def ensure_login_role(self, admin: DatabaseCredentials, username: str, new_password: str,
                          acts_as: str | None) -> bool:
        self._login(admin)
        created = username not in self.passwords
        self.passwords[username] = new_password
        if acts_as:
            self.members.setdefault(username, set()).add(acts_as)
        return created

    def verify(self, creds: DatabaseCredentials, member_of: str | None) -> None:
        self._login(creds)
        if member_of and member_of != creds.username and member_of not in self.members.get(creds.username, ()):
            raise VerificationError(f"{creds.username} is not a member of {member_of}")
