"""The two interfaces the rotation protocol talks to; adapters implement them with boto3 and psycopg.

Every method is safe to call again after a failure or a crash: the service retries whole rotations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from rotation.credentials import DatabaseCredentials
from rotation.topology import ClusterTopology, Endpoint

AWSCURRENT = "AWSCURRENT"
AWSPENDING = "AWSPENDING"
AWSPREVIOUS = "AWSPREVIOUS"


@dataclass(frozen=True, slots=True)
class SecretMetadata:
    arn: str
    name: str
    rotation_enabled: bool
    #: version id -> staging labels, as DescribeSecret's VersionIdsToStages.
    versions: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: The secret's tags (an RDS-managed master secret names its cluster or instance in one).
    tags: Mapping[str, str] = field(default_factory=dict)

    def version_with(self, stage: str) -> str | None:
        for version_id, stages in self.versions.items():
            if stage in stages:
                return version_id
        return None


class SecretStore(Protocol):
    def describe(self, secret_id: str) -> SecretMetadata: ...

    def get_secret_string(self, secret_id: str, stage: str, version_id: str | None = None) -> str | None:
        """The SecretString of a version (None for a binary secret, which parse_secret_string refuses); raises
        PendingValueMissing when the version holds no value."""
        ...

    def put_pending(self, secret_id: str, token: str, secret_string: str, rotation_token: str | None) -> None:
        """Store ``secret_string`` as version ``token`` labelled AWSPENDING (idempotent for the same value)."""
        ...

    def has_value(self, secret_id: str, version_id: str, stage: str) -> bool:
        """Whether version ``version_id`` (labelled ``stage``) holds a value. Versions are immutable, so an
        adapter may remember a yes for the life of the process."""
        ...

    def move_current(self, secret_id: str, to_version: str, from_version: str | None) -> None: ...


class ClusterDirectory(Protocol):
    """The RDS API's view of clusters and instances: the authority on which endpoints belong together."""

    def cluster(self, identifier: str) -> ClusterTopology:
        """A cluster's endpoints, by identifier or ARN; raises when the API cannot say."""
        ...

    def instance(self, identifier: str) -> Endpoint:
        """An instance's endpoint, by identifier or ARN; raises when the API cannot say."""
        ...


class Database(Protocol):
    def can_login(self, creds: DatabaseCredentials) -> bool:
        """True when the credentials log in, False when the server refuses them; raises when unreachable."""
        ...

    def change_own_password(self, creds: DatabaseCredentials, new_password: str) -> None:
        """Log in with ``creds`` and set that same role's password."""
        ...

    def set_password(self, admin: DatabaseCredentials, username: str, new_password: str) -> None:
        """Log in as ``admin`` and set an existing role's password (never an administrative role's)."""
        ...

    def ensure_login_role(
        self, admin: DatabaseCredentials, username: str, new_password: str, acts_as: str | None
    ) -> bool:
        """Create ``username`` (LOGIN, member of and acting as ``acts_as``) or reset its password.

        Returns True when the role was created.
        """
        ...

    def verify(self, creds: DatabaseCredentials, member_of: str | None, *, replica_wait_s: float = 0.0) -> None:
        """Log in and prove the session is ``creds.username`` (and holds ``member_of``'s privileges).

        ``replica_wait_s`` > 0: ``creds`` point at a reader; a refusal is tried again for that long while the
        change made on the writer replicates."""
        ...
