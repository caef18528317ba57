"""The Secrets Manager calls the bootstrap makes beyond rotation's: find, read, create, tag and delete a secret."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from rotation.credentials import parse_secret_string
from rotation.exceptions import BootstrapError, SecretsManagerError
from rotation.policy import CREATED_BY_TAG
from rotation.ports import AWSCURRENT, AWSPENDING
from rotation.secrets_store import SecretsManagerStore

if TYPE_CHECKING:  # stubs from the dev extra, never in the Lambda artifact
    from mypy_boto3_secretsmanager.type_defs import (
        CreateSecretResponseTypeDef,
        DescribeSecretResponseTypeDef,
        GetSecretValueResponseTypeDef,
    )


@dataclass(frozen=True, slots=True)
class ExistingSecret:
    arn: str
    name: str
    scheduled_for_deletion: bool
    kms_key_id: str | None
    #: The version labelled AWSPENDING when it is not AWSCURRENT's: a rotation is under way (or stuck).
    pending_version: str | None
    #: Whether the secret carries the bootstrap's tag (rotation.policy.CREATED_BY_TAG).
    created_by_bootstrap: bool = False

    @property
    def rotation_in_progress(self) -> bool:
        return self.pending_version is not None


class BootstrapSecrets(SecretsManagerStore):
    """The Secrets Manager calls the bootstrap needs beyond rotation's, with the same error translation."""

    def find(self, name: str) -> ExistingSecret | None:
        try:
            response: DescribeSecretResponseTypeDef = self._call("describe_secret", name)
        except SecretsManagerError as exc:
            if _aws_error_code(exc) == "ResourceNotFoundException":
                return None
            raise
        stages = response.get("VersionIdsToStages", {})
        current = {v for v, labels in stages.items() if AWSCURRENT in labels}
        pending = sorted({v for v, labels in stages.items() if AWSPENDING in labels} - current)
        return ExistingSecret(
            arn=response["ARN"],
            name=response.get("Name", name),
            scheduled_for_deletion=response.get("DeletedDate") is not None,
            kms_key_id=response.get("KmsKeyId"),
            pending_version=pending[0] if pending else None,
            created_by_bootstrap=any((tag.get("Key"), tag.get("Value")) == CREATED_BY_TAG
                                     for tag in response.get("Tags", ())),
        )

    def read(self, secret_id: str, source: str) -> tuple[str, dict[str, Any]]:
        """The ARN and the parsed AWSCURRENT value of a secret."""
        response: GetSecretValueResponseTypeDef = self._call("get_secret_value", secret_id, VersionStage=AWSCURRENT)
        return response["ARN"], parse_secret_string(response.get("SecretString"), source)

    def read_pending(self, secret_id: str, version_id: str, source: str) -> dict[str, Any]:
        """The parsed AWSPENDING value of ``version_id``; PendingValueMissing until createSecret stored one."""
        raw = self.get_secret_string(secret_id, AWSPENDING, version_id)
        return parse_secret_string(raw, source)

    def create(self, name: str, document: Mapping[str, Any], description: str, kms_key_id: str | None,
               tags: Sequence[tuple[str, str]]) -> str:
        kwargs: dict[str, Any] = {"SecretString": json.dumps(dict(document)), "Description": description}
        if kms_key_id:
            kwargs["KmsKeyId"] = kms_key_id
        kwargs["Tags"] = [{"Key": k, "Value": v} for k, v in (*tags, CREATED_BY_TAG)]  # request Tags never hold it
        try:
            # Through _call, for the same translation as every other call (an unreachable endpoint, a timeout,
            # missing credentials).
            response: CreateSecretResponseTypeDef = self._call("create_secret", name, id_parameter="Name", **kwargs)
        except SecretsManagerError as exc:
            if _aws_error_code(exc) == "ResourceExistsException":
                raise BootstrapError(
                    f"secret {name} was created by someone else while this bootstrap ran; run it again to adopt it"
                ) from exc
            raise
        return response["ARN"]

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
