"""Secrets Manager behind the :class:`~rotation.ports.SecretStore` interface, on botocore (rotation.aws).

One client per container and endpoint: a Lambda container serves many invocations, and building a client
costs tens of milliseconds. Short connect timeouts and bounded retries turn "no route to Secrets
Manager" (a private subnet without an interface endpoint or NAT) into a clear error in seconds, instead of
a silent hang until the Lambda's own timeout.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from rotation import aws
from rotation.exceptions import PendingValueMissing, SecretsManagerError, SecretsManagerUnreachable
from rotation.ports import AWSCURRENT, SecretMetadata

if TYPE_CHECKING:  # stubs from the dev extra, never in the Lambda artifact
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_secretsmanager.type_defs import GetSecretValueResponseTypeDef

NO_ROUTE_FIX = (
    "a function in a private subnet needs an interface VPC endpoint for secretsmanager with private DNS "
    "enabled, or a NAT gateway, and a security group that allows outbound HTTPS (443)"
)
LOCAL_ENDPOINT_FIX = (
    "the endpoint is on this machine: is the local server running (moto_server, `rotation demo --keep`...), on "
    "that port, and answering?"
)


def is_loopback(endpoint_url: str | None) -> bool:
    """True for an endpoint on this machine (a local server such as moto), which no VPC route concerns."""
    host = urlsplit(endpoint_url or "").hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")


def unreachable_fix(endpoint_url: str | None) -> str:
    """What to do when ``endpoint_url`` does not answer: a loopback endpoint is a local server, not a VPC route."""
    return LOCAL_ENDPOINT_FIX if is_loopback(endpoint_url) else NO_ROUTE_FIX

#: Rotation: three attempts in all, each with at most 3 s to connect and 5 s to answer, so a missing route fails
#: in ~9 s and an endpoint that accepts but never answers in ~15 s, both well inside the function's 30 s timeout,
#: and a transient throttle is retried. ``total_max_attempts``, not ``max_attempts``: botocore counts the latter
#: as retries after the first attempt (4 attempts of 10 s took 40 s, past the Lambda timeout).
ROTATION_CLIENT_CONFIG = Config(
    connect_timeout=3,
    read_timeout=5,
    retries={"total_max_attempts": 3, "mode": "standard"},
    user_agent_extra="aurora-postgres-rotation",
)


def secrets_manager_client(endpoint_url: str | None = None,
                           config: Config = ROTATION_CLIENT_CONFIG) -> SecretsManagerClient:
    """The container's client for ``endpoint_url`` (SECRETS_MANAGER_ENDPOINT), else botocore's own resolution."""
    return aws.client("secretsmanager", endpoint_url=endpoint_url, config=config)


class _VersionsWithValues:
    """(secret ARN, version id) pairs known to hold a value, remembered for the container's life.

    A version's value never changes once stored, so a yes stays true; finishSecret's guard then costs no
    extra call when the same container saw the value earlier in the rotation (the usual case).
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def add(self, secret_id: str, version_id: str | None) -> None:
        if version_id is None:
            return
        with self._lock:
            self._seen[(secret_id, version_id)] = None
            self._seen.move_to_end((secret_id, version_id))
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)

    def __contains__(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return key in self._seen


class SecretsManagerStore:
    """Secrets Manager for the protocol. Build it through rotation.wiring.store, which keeps one per client for
    the container's life: it remembers the versions it has seen with a value."""

    def __init__(self, client: SecretsManagerClient) -> None:
        self._client = client
        self._versions_with_values = _VersionsWithValues()

    @property
    def client(self) -> SecretsManagerClient:
        return self._client

    @property
    def endpoint(self) -> str:
        return self._client.meta.endpoint_url

    def _call(self, operation: str, secret_id: str, *, id_parameter: str = "SecretId", **kwargs: Any) -> Any:
        """One API call, its failures translated; CreateSecret names the secret with ``Name``."""
        try:
            return getattr(self._client, operation)(**{id_parameter: secret_id}, **kwargs)
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            raise SecretsManagerUnreachable(
                f"cannot reach the Secrets Manager endpoint {self.endpoint} ({type(exc).__name__}): "
                f"{unreachable_fix(self.endpoint)}"
            ) from exc
        except NoCredentialsError as exc:
            raise SecretsManagerError(
                "no AWS credentials found for Secrets Manager (execution role, profile or environment)"
            ) from exc
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "Unknown")
            if operation == "get_secret_value" and code == "ResourceNotFoundException" and "VersionId" in kwargs:
                raise PendingValueMissing(
                    f"version {kwargs['VersionId']} of secret {secret_id} has no value for stage "
                    f"{kwargs.get('VersionStage')}"
                ) from exc
            raise SecretsManagerError(
                f"{_pascal(operation)} on secret {secret_id} failed: {code}: {error.get('Message', '')}".rstrip()
            ) from exc
        except BotoCoreError as exc:
            raise SecretsManagerError(f"{_pascal(operation)} on secret {secret_id} failed: {exc}") from exc

    def describe(self, secret_id: str) -> SecretMetadata:
        response = self._call("describe_secret", secret_id)
        return SecretMetadata(
            arn=response["ARN"],
            name=response.get("Name", response["ARN"]),
            rotation_enabled=bool(response.get("RotationEnabled")),
            versions={
                version: frozenset(stages) for version, stages in response.get("VersionIdsToStages", {}).items()
            },
            tags={tag["Key"]: tag.get("Value", "") for tag in response.get("Tags", ()) if "Key" in tag},
        )

    def get_secret_string(self, secret_id: str, stage: str = AWSCURRENT,
                          version_id: str | None = None) -> str | None:
        # Always name the stage: without it a stale version can come back after a stage move.
        kwargs: dict[str, str] = {"VersionStage": stage}
        if version_id is not None:
            kwargs["VersionId"] = version_id
        response: GetSecretValueResponseTypeDef = self._call("get_secret_value", secret_id, **kwargs)
        self._versions_with_values.add(response.get("ARN", secret_id), response.get("VersionId"))
        return response.get("SecretString")

    def has_value(self, secret_id: str, version_id: str, stage: str) -> bool:
        if (secret_id, version_id) in self._versions_with_values:
            return True
        try:
            self.get_secret_string(secret_id, stage, version_id)
        except PendingValueMissing:
            return False
        return True

    def put_pending(self, secret_id: str, token: str, secret_string: str, rotation_token: str | None) -> None:
        kwargs: dict[str, Any] = {"ClientRequestToken": token, "SecretString": secret_string,
                                  "VersionStages": ["AWSPENDING"]}
        if rotation_token:
            kwargs["RotationToken"] = rotation_token
        response = self._call("put_secret_value", secret_id, **kwargs)
        self._versions_with_values.add(response.get("ARN", secret_id), token)

    def move_current(self, secret_id: str, to_version: str, from_version: str | None) -> None:
        kwargs: dict[str, str] = {"VersionStage": AWSCURRENT, "MoveToVersionId": to_version}
        if from_version is not None:
            kwargs["RemoveFromVersionId"] = from_version
        self._call("update_secret_version_stage", secret_id, **kwargs)


def _pascal(operation: str) -> str:
    return "".join(part.title() for part in operation.split("_"))
