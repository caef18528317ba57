"""Typed invocation events, parsed once at the handler's edge.

Secrets Manager sends ``{"Step", "SecretId", "ClientRequestToken"}`` and, since 2024, ``"RotationToken"``.
Anything else (a console test event, a typo) must fail with a message that says which key is wrong rather
than a KeyError deep inside a step.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rotation.exceptions import InvalidEventError


class Step(enum.StrEnum):
    CREATE = "createSecret"
    SET = "setSecret"
    TEST = "testSecret"
    FINISH = "finishSecret"

    @classmethod
    def metric_dimension(cls, event: Any) -> str:
        """The event's step as a metric dimension; anything else is "invalid", keeping cardinality at five."""
        raw = event.get("Step") if isinstance(event, Mapping) else None
        return raw if isinstance(raw, str) and raw in cls._value2member_map_ else "invalid"


def _require_mapping(event: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(event, Mapping):
        raise InvalidEventError(f"{what} event must be a JSON object, got {type(event).__name__}")
    return event


#: Secrets Manager's own limit on a SecretId (an ARN or a name), and generous for tokens: a longer value is not an
#: id, and is not echoed into every log line and error message of the invocation.
MAX_ID_LENGTH = 2048


def _require_text(event: Mapping[str, Any], key: str, what: str) -> str:
    value = event.get(key)
    if value is None:
        raise InvalidEventError(f"{what} event is missing the key {key!r}")
    if not isinstance(value, str) or not value.strip():
        raise InvalidEventError(f"{what} event key {key!r} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidEventError(f"{what} event key {key!r} is {len(value)} characters long; at most "
                                f"{MAX_ID_LENGTH} are accepted")
    return value


def _optional_text(event: Mapping[str, Any], key: str, what: str) -> str | None:
    if event.get(key) is None:
        return None
    return _require_text(event, key, what)


@dataclass(frozen=True, slots=True)
class RotationEvent:
    step: Step
    secret_id: str
    token: str
    rotation_token: str | None = None

    @classmethod
    def parse(cls, event: Any) -> RotationEvent:
        event = _require_mapping(event, "Rotation")
        raw_step = _require_text(event, "Step", "Rotation")
        try:
            step = Step(raw_step)
        except ValueError:
            allowed = ", ".join(s.value for s in Step)
            raise InvalidEventError(
                f"Rotation event has unknown Step {raw_step!r}; expected one of {allowed}"
            ) from None
        return cls(
            step=step,
            secret_id=_require_text(event, "SecretId", "Rotation"),
            token=_require_text(event, "ClientRequestToken", "Rotation"),
            rotation_token=_optional_text(event, "RotationToken", "Rotation"),
        )


@dataclass(frozen=True, slots=True)
class PreflightEvent:
    """``{"Preflight": true, "SecretId": ...}``: diagnose without changing anything."""

    secret_id: str

    @classmethod
    def matches(cls, event: Any) -> bool:
        return isinstance(event, Mapping) and event.get("Preflight") is True

    @classmethod
    def parse(cls, event: Any) -> PreflightEvent:
        event = _require_mapping(event, "Preflight")
        return cls(secret_id=_require_text(event, "SecretId", "Preflight"))
