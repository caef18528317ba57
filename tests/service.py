"""The tests' stand-in for the Secrets Manager rotation service: stage, then invoke the four steps.

moto cannot invoke a Lambda here, so the tests do what the service does: stage an empty AWSPENDING version
under a fresh token, then call the handler with createSecret, setSecret, testSecret, finishSecret.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rotation import handler
from rotation.events import Step
from rotation_tools.local.secretsmanager import LocalSecretsManager

ALL_STEPS = tuple(Step)


def invoke(step: Step | str, secret_id: str, token: str) -> dict[str, Any]:
    event = {"Step": str(step), "SecretId": secret_id, "ClientRequestToken": token}
    return handler.rotate(event, None)


def rotate(sm: LocalSecretsManager, secret_id: str, *, token: str | None = None,
           steps: Iterable[Step] = ALL_STEPS) -> str:
    """Run a rotation (or its first ``steps``) the way the service does; returns the token."""
    token = sm.stage_pending(secret_id, token)
    for step in steps:
        invoke(step, secret_id, token)
    return token


def resume(secret_id: str, token: str) -> None:
    """The service's retry: the same token, all four steps from createSecret."""
    for step in ALL_STEPS:
        invoke(step, secret_id, token)
