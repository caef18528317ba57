"""Stage a rotation the way RotateSecret does, and write the four step events that then run against it.

Before it invokes createSecret, Secrets Manager adds a version whose id is the ClientRequestToken, labelled
AWSPENDING and holding no value. A step event whose token is not such a version fails ("token ... is not a
version of secret"), which is why a sample event cannot run as shipped.

The public API has no call that adds a version without a value; RotateSecret itself is the only way, and
against AWS it invokes the deployed function, which then runs the rotation on its own. So:

* against a local endpoint (moto, on loopback), RotateSecret is called with the secret's rotation function,
  which moto does not host: moto stages the empty AWSPENDING version, then fails to find the function and
  stops there (had it found one, it would invoke it and, with no Docker, could not). The result is read back
  and checked: the token is AWSPENDING and has no value, AWSCURRENT has not moved.
* against AWS, nothing is staged: ``--token`` names a version already staged (a stuck rotation's, which the
  service would retry with that token), and the events replay it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rotation.events import Step
from rotation.exceptions import LocalToolError
from rotation.ports import AWSCURRENT, AWSPENDING

STEPS = (Step.CREATE, Step.SET, Step.TEST, Step.FINISH)


@dataclass(frozen=True, slots=True)
class StagedRotation:
    secret_arn: str
    token: str
    #: False when the token was already the AWSPENDING version (nothing was changed).
    staged_now: bool
    files: tuple[Path, ...] = field(default=())

    def events(self) -> dict[str, dict[str, str]]:
        return {step.value: {"Step": step.value, "SecretId": self.secret_arn, "ClientRequestToken": self.token}
                for step in STEPS}

    def to_dict(self) -> dict[str, Any]:
        return {"secret_arn": self.secret_arn, "token": self.token, "staged_now": self.staged_now,
                "files": [str(path) for path in self.files]}


def _stages(described: dict[str, Any]) -> dict[str, list[str]]:
    return {version: list(stages) for version, stages in described.get("VersionIdsToStages", {}).items()}


def _labelled(stages: dict[str, list[str]], label: str) -> str | None:
    return next((version for version, labels in stages.items() if label in labels), None)


def _has_value(client: Any, arn: str, token: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.get_secret_value(SecretId=arn, VersionId=token, VersionStage=AWSPENDING)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return False
        raise
    return True


def stage_rotation(client: Any, secret_id: str, token: str | None = None) -> StagedRotation:
    """Make ``token`` (a new UUID by default) the secret's empty AWSPENDING version, as RotateSecret does.

    An AWSPENDING version already carrying ``token`` is used as it is (the service's retry). Refuses, changing
    nothing, when rotation is off, when another rotation is pending, and against a non-local endpoint.
    """
    from botocore.exceptions import ClientError

    from rotation.secrets_store import is_loopback

    endpoint = client.meta.endpoint_url
    if token is None and not is_loopback(endpoint):
        raise LocalToolError(
            f"{endpoint} is not a local endpoint: there, RotateSecret invokes the deployed function, which runs "
            f"the whole rotation itself (`aws secretsmanager rotate-secret --secret-id {secret_id}`), and the API "
            "has no other way to stage a version; `rotation rotate` runs the four steps on this machine instead, "
            "and --token replays a rotation that is already pending")
    described = client.describe_secret(SecretId=secret_id)
    arn, stages = described["ARN"], _stages(described)
    current, pending = _labelled(stages, AWSCURRENT), _labelled(stages, AWSPENDING)
    if token is not None and pending == token:
        return StagedRotation(arn, token, staged_now=False)
    if pending is not None and pending != current:
        raise LocalToolError(
            f"a rotation of {arn} is pending already (token {pending}): write its events with --token {pending}, "
            f"or clear it first (`rotation repair --secret-id {arn}`); RotateSecret refuses too (\"A previous "
            "rotation isn't complete\")")
    if not described.get("RotationEnabled") or not described.get("RotationLambdaARN"):
        raise LocalToolError(
            f"rotation is not enabled for {arn}, and the function refuses every step of such a secret: turn it on "
            "(RotateSecret with RotationLambdaARN and RotationRules, or the console's rotation configuration)")
    if not is_loopback(endpoint):
        raise LocalToolError(f"version {token} is not the AWSPENDING version of {arn}, and {endpoint} is not a "
                             "local endpoint, where a new one could be staged")
    token = token or str(uuid.uuid4())
    if pending is not None:
        # AWSPENDING left on the current version by a finished rotation: the service moves it to the new
        # version; moto instead refuses ("Previous rotation request is still in progress").
        client.update_secret_version_stage(SecretId=arn, VersionStage=AWSPENDING, RemoveFromVersionId=pending)
    try:
        client.rotate_secret(SecretId=arn, ClientRequestToken=token,
                             RotationLambdaARN=described["RotationLambdaARN"], RotateImmediately=True)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise LocalToolError(f"RotateSecret on {arn} failed: {exc}") from exc
    after = _stages(client.describe_secret(SecretId=arn))
    if AWSPENDING not in after.get(token, []) or _labelled(after, AWSCURRENT) != current or \
            _has_value(client, arn, token):
        raise LocalToolError(
            f"staging did not leave version {token} of {arn} empty and labelled AWSPENDING with AWSCURRENT "
            f"unmoved (the endpoint {endpoint} did not act as moto does); versions now: {after}")
    return StagedRotation(arn, token, staged_now=True)


def write_events(staged: StagedRotation, out: Path) -> StagedRotation:
    """Write createSecret.json ... finishSecret.json into ``out`` (created if needed); returns them."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, event in staged.events().items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(event, indent=2) + "\n", encoding="utf-8")
        files.append(path)
    return StagedRotation(staged.secret_arn, staged.token, staged.staged_now, tuple(files))


__all__ = ["STEPS", "StagedRotation", "stage_rotation", "write_events"]
