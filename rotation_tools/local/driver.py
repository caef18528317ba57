""""Rotate immediately", played locally: what Secrets Manager's RotateSecret does, without a Lambda function.

The service first stages an empty version (id = the token) labelled AWSPENDING and turns rotation on, then
invokes the function four times. The Secrets Manager API offers no call that creates a version without a
value, so the staging is emulated: :class:`StagedPendingStore` wraps the real store and reports the token as
an AWSPENDING version (and rotation as enabled) until createSecret stores the real version through the real
API. Every other call goes to the real API unchanged, so the secret ends up exactly as a real rotation would
leave it.

A failed step is not undone, as with the service: AWSCURRENT is only moved by finishSecret, and a rotation
is resumed by running it again with the same token, each step converging from wherever the last run stopped.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rotation import wiring
from rotation.config import Settings, StrategyName
from rotation.events import RotationEvent, Step
from rotation.exceptions import PendingValueMissing, RotationError, RotationStateError
from rotation.ports import AWSCURRENT, AWSPENDING, Database, SecretMetadata, SecretStore
from rotation.protocol import Rotation

STEPS = (Step.CREATE, Step.SET, Step.TEST, Step.FINISH)
#: RotateSecret's limits on ClientRequestToken.
MIN_TOKEN_LENGTH, MAX_TOKEN_LENGTH = 32, 64


def new_token() -> str:
    return str(uuid.uuid4())


def check_token(token: str) -> str:
    if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH:
        raise ValueError(f"a token is {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} characters long, as RotateSecret's "
                         f"ClientRequestToken (got {len(token)})")
    return token


class StagedPendingStore:
    """The real store, plus the empty AWSPENDING version RotateSecret would have staged for ``token``.

    Only describe() differs, and only for this secret: rotation is reported enabled, and the token labelled
    AWSPENDING until createSecret makes it a real version. Reading the staged version's value goes to the real
    API, which answers "no such version" exactly as the service does for the empty version before createSecret.
    """

    def __init__(self, inner: SecretStore, secret_arn: str, token: str) -> None:
        self._inner = inner
        self._arn = secret_arn
        self._token = token

    def describe(self, secret_id: str) -> SecretMetadata:
        metadata = self._inner.describe(secret_id)
        if metadata.arn != self._arn:
            return metadata
        # RotateSecret turns rotation on for good; the API offers no way to do that without a Lambda ARN.
        metadata = dataclasses.replace(metadata, rotation_enabled=True)
        if self._token in metadata.versions:
            return metadata
        versions = {version: stages - {AWSPENDING} for version, stages in metadata.versions.items()}
        versions[self._token] = frozenset({AWSPENDING})
        return dataclasses.replace(metadata, versions=versions)

    def get_secret_string(self, secret_id: str, stage: str, version_id: str | None = None) -> str:
        return self._inner.get_secret_string(secret_id, stage, version_id)

    def has_value(self, secret_id: str, version_id: str, stage: str) -> bool:
        return self._inner.has_value(secret_id, version_id, stage)

    def put_pending(self, secret_id: str, token: str, secret_string: str, rotation_token: str | None) -> None:
        self._inner.put_pending(secret_id, token, secret_string, rotation_token)

    def move_current(self, secret_id: str, to_version: str, from_version: str | None) -> None:
        self._inner.move_current(secret_id, to_version, from_version)


@dataclass(frozen=True, slots=True)
class StepResult:
    step: Step
    seconds: float
    #: The step's own account of what it did, or the error's message when it failed.
    action: str
    changed: bool = False
    strategy: str | None = None
    username: str | None = None
    #: The error's code (``DatabaseUnreachable``...) when the step failed.
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step.value,
            "seconds": round(self.seconds, 4),
            "ok": self.ok,
            "action": self.action,
            "changed": self.changed,
            "strategy": self.strategy,
            "username": self.username,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class PendingState:
    """Where a failed rotation left the secret, read back from the API after the failure."""

    #: The version holding AWSCURRENT (unchanged unless finishSecret ran).
    current_version: str | None
    #: True when the token's AWSPENDING version holds the new credentials; None when it could not be read.
    pending_has_value: bool | None


@dataclass(frozen=True, slots=True)
class RotationReport:
    secret_id: str
    secret_arn: str
    token: str
    #: True when the token was given: a rotation resumed rather than started.
    resumed: bool
    steps: tuple[StepResult, ...]
    seconds: float
    #: Only for a failed rotation.
    pending: PendingState | None = None

    @property
    def ok(self) -> bool:
        return len(self.steps) == len(STEPS) and all(result.ok for result in self.steps)

    @property
    def failed(self) -> StepResult | None:
        return next((result for result in self.steps if not result.ok), None)

    @property
    def resume_command(self) -> str:
        return f"rotation rotate --secret-id {self.secret_id} --token {self.token}"

    @property
    def strategy(self) -> str | None:
        return next((result.strategy for result in self.steps if result.strategy), None)

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "ok": self.ok,
            "secret_arn": self.secret_arn,
            "token": self.token,
            "resumed": self.resumed,
            "strategy": self.strategy,
            "seconds": round(self.seconds, 4),
            "steps": [result.to_dict() for result in self.steps],
        }
        failed = self.failed
        if failed is not None:
            document["failed_step"] = failed.step.value
            document["error"] = {"code": failed.error, "message": failed.action}
            document["resume_command"] = self.resume_command
        if self.pending is not None:
            document["pending"] = dataclasses.asdict(self.pending)
        return document


def _check_can_start(metadata: SecretMetadata, token: str | None) -> None:
    """Refuse as RotateSecret does when another rotation is unfinished; a given token must be startable."""
    unfinished = [version for version, stages in metadata.versions.items()
                  if AWSPENDING in stages and AWSCURRENT not in stages]
    others = [version for version in unfinished if version != token]
    if others:
        raise RotationStateError(
            f"A previous rotation isn't complete: AWSPENDING of secret {metadata.arn} is on version {others[0]}, "
            f"which is not AWSCURRENT. Resume it with `rotation rotate --secret-id {metadata.name} --token "
            f"{others[0]}`, or see how to clear it with `rotation repair --secret-id {metadata.name}`"
        )
    if token is not None and token in metadata.versions and token not in unfinished:
        stages = metadata.versions[token]
        if AWSCURRENT not in stages:
            raise RotationStateError(
                f"token {token} is an existing version of secret {metadata.arn} (labels: "
                f"{', '.join(sorted(stages)) or 'none'}) that is neither pending nor current: a token names one "
                "rotation; omit --token to start a new one"
            )


def _read_pending_state(store: SecretStore, secret_id: str, token: str) -> PendingState | None:
    try:
        metadata = store.describe(secret_id)
    except RotationError:
        return None
    if token not in metadata.versions:
        return PendingState(metadata.version_with(AWSCURRENT), pending_has_value=False)
    try:
        store.get_secret_string(secret_id, AWSPENDING, token)
    except PendingValueMissing:
        has_value: bool | None = False
    except RotationError:
        has_value = None
    else:
        has_value = True
    return PendingState(metadata.version_with(AWSCURRENT), pending_has_value=has_value)


def rotate_now(
    store: SecretStore,
    database_factory: Callable[[], Database],
    settings: Settings,
    secret_id: str,
    token: str | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> RotationReport:
    """Run the four steps for ``secret_id`` as "rotate immediately" would, and report each one.

    ``token`` resumes the rotation that used it (its AWSPENDING version is reused), or starts one with that
    version id. Raises :class:`RotationStateError` when another rotation is unfinished; a failing step does
    not raise, it ends the report (``report.ok`` is False, ``report.failed`` says which and why).
    """
    metadata = store.describe(secret_id)
    _check_can_start(metadata, token)
    resumed = token is not None
    token = token or new_token()
    rotation = Rotation(StagedPendingStore(store, metadata.arn, token), database_factory, settings,
                        directory=wiring.directory)

    results: list[StepResult] = []
    started = clock()
    for step in STEPS:
        step_started = clock()
        event = RotationEvent(step=step, secret_id=metadata.arn, token=token)
        try:
            outcome = rotation.run(event)
        except RotationError as exc:
            result = StepResult(step, clock() - step_started, str(exc), error=exc.code,
                                strategy=_strategy_so_far(results, settings))
        else:
            result = StepResult(step, clock() - step_started, outcome.action, outcome.changed,
                                outcome.strategy and str(outcome.strategy), outcome.username)
        results.append(result)
        if on_step is not None:
            on_step(result)
        if not result.ok:
            break
    elapsed = clock() - started
    failed = not results[-1].ok
    return RotationReport(
        secret_id=secret_id,
        secret_arn=metadata.arn,
        token=token,
        resumed=resumed,
        steps=tuple(results),
        seconds=elapsed,
        pending=_read_pending_state(store, metadata.arn, token) if failed else None,
    )


def _strategy_so_far(results: list[StepResult], settings: Settings) -> str | None:
    known = next((result.strategy for result in results if result.strategy), None)
    if known is None and settings.strategy is not StrategyName.AUTO:
        return str(settings.strategy)
    return known
