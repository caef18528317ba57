"""The fleet view: every secret this function rotates, in one place, with what needs attention.

For each secret whose rotation function is the given one (ListSecrets, matched on RotationLambdaARN), or every
rotation-enabled secret when no function is given: when it last rotated and is next due, the strategy its
value implies, whether an AWSPENDING version is stuck (and since when: the pending version's CreatedDate from
ListSecretVersionIds), and the last failure the function logged about it (CloudWatch Logs FilterLogEvents on
/aws/lambda/<function>), where the logs are readable.

Only metadata is shown. The AWSCURRENT value is read for one fact, whether it has a ``masterarn`` (alternating
users), and nothing of it is kept.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rotation.ports import AWSCURRENT, AWSPENDING

#: How far back to look for a logged failure, and how many pages of matches to read at most.
LOG_LOOKBACK = dt.timedelta(days=30)
MAX_LOG_PAGES = 20
#: A rotation window without a Duration: AWS closes it after an hour for an hourly schedule, else at day's end.
DEFAULT_WINDOW = dt.timedelta(hours=24)
HOURLY_WINDOW = dt.timedelta(hours=1)


class State:
    HEALTHY = "healthy"
    STUCK = "stuck"
    OVERDUE = "overdue"
    DISABLED = "rotation-disabled"


#: States that make `rotation status` exit non-zero.
NEEDS_ATTENTION = frozenset({State.STUCK, State.OVERDUE})


@dataclass(frozen=True, slots=True)
class LastFailure:
    """What the function last logged as an error about a secret, or why the logs could not tell."""

    readable: bool
    at: dt.datetime | None = None
    message: str | None = None
    #: Why not readable (AccessDenied, unreachable, no log group...).
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"readable": self.readable, "at": _iso(self.at), "message": self.message, "reason": self.reason}

    def describe(self) -> str:
        if not self.readable:
            return f"not readable ({self.reason})"
        if self.at is None:
            return "none logged"
        return f"{_short(self.at)}: {self.message}"


@dataclass(frozen=True, slots=True)
class SecretStatus:
    name: str
    arn: str
    function_arn: str | None
    rotation_enabled: bool
    last_rotated: dt.datetime | None
    next_rotation: dt.datetime | None
    schedule: str | None
    strategy: str
    pending_version: str | None
    pending_since: dt.datetime | None
    overdue_since: dt.datetime | None
    last_failure: LastFailure
    states: tuple[str, ...] = field(default=())

    @property
    def needs_attention(self) -> bool:
        return bool(NEEDS_ATTENTION.intersection(self.states))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "arn": self.arn, "function_arn": self.function_arn,
            "rotation_enabled": self.rotation_enabled, "schedule": self.schedule,
            "last_rotated": _iso(self.last_rotated), "next_rotation": _iso(self.next_rotation),
            "strategy": self.strategy, "states": list(self.states),
            "stuck": State.STUCK in self.states, "pending_version": self.pending_version,
            "pending_since": _iso(self.pending_since),
            "overdue": State.OVERDUE in self.states, "overdue_since": _iso(self.overdue_since),
            "last_failure": self.last_failure.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class FleetStatus:
    function: str | None
    secrets: tuple[SecretStatus, ...]
    checked_at: dt.datetime

    @property
    def ok(self) -> bool:
        return not any(secret.needs_attention for secret in self.secrets)

    def counts(self) -> dict[str, int]:
        counts = {"secrets": len(self.secrets)}
        for state in (State.HEALTHY, State.STUCK, State.OVERDUE, State.DISABLED):
            counts[state] = sum(state in secret.states for secret in self.secrets)
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {"function": self.function, "checked_at": _iso(self.checked_at), "ok": self.ok,
                "counts": self.counts(), "secrets": [secret.to_dict() for secret in self.secrets]}


# ============================================================================================ the pieces


def function_name(function: str) -> str:
    """``my-fn`` from ``my-fn`` or ``arn:aws:lambda:REGION:ACCOUNT:function:my-fn[:alias]``."""
    parts = function.split(":")
    if len(parts) >= 7 and parts[0] == "arn" and parts[5] == "function":
        return parts[6]
    return function


def rotated_by(secret: Mapping[str, Any], function: str | None) -> bool:
    """Whether ``secret`` (a ListSecrets entry) is this function's: by ARN or name; any enabled one without."""
    if function is None:
        return bool(secret.get("RotationEnabled"))
    arn = secret.get("RotationLambdaARN")
    return bool(arn) and (arn == function or function_name(arn) == function_name(function))


def _window(rules: Mapping[str, Any]) -> dt.timedelta:
    duration = re.fullmatch(r"\s*(\d+)\s*h\s*", str(rules.get("Duration") or ""))
    if duration:
        return dt.timedelta(hours=int(duration.group(1)))
    if "hour" in str(rules.get("ScheduleExpression") or ""):
        return HOURLY_WINDOW
    return DEFAULT_WINDOW


def _schedule(rules: Mapping[str, Any]) -> str | None:
    if rules.get("ScheduleExpression"):
        duration = f", window {rules['Duration']}" if rules.get("Duration") else ""
        return f"{rules['ScheduleExpression']}{duration}"
    if rules.get("AutomaticallyAfterDays"):
        return f"every {rules['AutomaticallyAfterDays']} days"
    return None


def next_rotation(secret: Mapping[str, Any]) -> dt.datetime | None:
    """NextRotationDate, else the last rotation (or the creation) plus AutomaticallyAfterDays."""
    if secret.get("NextRotationDate"):
        return _utc(secret["NextRotationDate"])
    days = (secret.get("RotationRules") or {}).get("AutomaticallyAfterDays")
    since = secret.get("LastRotatedDate") or secret.get("CreatedDate")
    if days and since:
        return _utc(since) + dt.timedelta(days=int(days))
    return None


def pending(versions: Iterable[Mapping[str, Any]]) -> tuple[str | None, dt.datetime | None]:
    """The version AWSPENDING sits on when it is not AWSCURRENT's (a rotation in progress or stuck), and its age."""
    for version in versions:
        stages = version.get("VersionStages") or []
        if AWSPENDING in stages and AWSCURRENT not in stages:
            created = version.get("CreatedDate")
            return version["VersionId"], _utc(created) if created else None
    return None, None


def strategy_of(secret_string: str | None) -> str:
    """What ROTATION_STRATEGY=auto does with this value: alternating users when it names a masterarn."""
    if secret_string is None:
        return "unknown"
    try:
        document = json.loads(secret_string)
    except ValueError:
        return "unknown (not JSON)"
    if not isinstance(document, dict):
        return "unknown (not a JSON object)"
    return "alternating-users" if document.get("masterarn") else "single-user"


def last_failure(filter_events: Callable[..., Mapping[str, Any]], function: str | None, secret_arn: str,
                 since: dt.datetime) -> LastFailure:
    """The newest error line the function logged that names ``secret_arn``.

    The server-side filter is the quoted ARN alone (one quoted term is what every implementation, moto's too,
    understands); the error level is judged here: ``"level": "ERROR"`` in our JSON lines, the word "error" in
    anyone else's (AWS's own functions log plain text).
    """
    if not function:
        return LastFailure(readable=False, reason="no rotation function configured")
    from botocore.exceptions import BotoCoreError, ClientError

    group = f"/aws/lambda/{function_name(function)}"
    newest: tuple[int, str] | None = None
    kwargs: dict[str, Any] = {"logGroupName": group, "filterPattern": f'"{secret_arn}"',
                              "startTime": int(since.timestamp() * 1000)}
    try:
        for _ in range(MAX_LOG_PAGES):
            page = filter_events(**kwargs)
            for event in page.get("events", []):
                message = _failure_message(event.get("message", ""))
                if message is not None and (newest is None or event.get("timestamp", 0) >= newest[0]):
                    newest = (event.get("timestamp", 0), message)
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        if code == "ResourceNotFoundException":
            return LastFailure(readable=False, reason=f"no log group {group}")
        return LastFailure(readable=False, reason=f"{code} on {group}")
    except BotoCoreError as exc:
        return LastFailure(readable=False, reason=f"{type(exc).__name__} reading {group}")
    if newest is None:
        return LastFailure(readable=True)
    return LastFailure(readable=True, at=dt.datetime.fromtimestamp(newest[0] / 1000, dt.UTC), message=newest[1])


def _failure_message(line: str) -> str | None:
    try:
        document = json.loads(line)
    except ValueError:
        document = None
    if isinstance(document, dict):
        if str(document.get("level", "")).upper() not in {"ERROR", "CRITICAL"}:
            return None
        code = document.get("error")
        text = str(document.get("message", ""))
        return f"{code}: {text}" if code else text
    return line.strip() if "error" in line.lower() else None


# ============================================================================================ collecting


def collect(sm_client: Any, logs_client: Any | None, function: str | None,
            now: dt.datetime | None = None) -> FleetStatus:
    """The status of every secret ``function`` rotates (every rotation-enabled secret when None)."""
    now = now or dt.datetime.now(dt.UTC)
    listed = [secret for page in sm_client.get_paginator("list_secrets").paginate()
              for secret in page.get("SecretList", []) if rotated_by(secret, function)]
    statuses = [_one(sm_client, logs_client, secret, now) for secret in sorted(listed, key=lambda s: s["Name"])]
    return FleetStatus(function=function, secrets=tuple(statuses), checked_at=now)


def _one(sm_client: Any, logs_client: Any | None, secret: Mapping[str, Any], now: dt.datetime) -> SecretStatus:
    from botocore.exceptions import BotoCoreError, ClientError

    arn, rules = secret["ARN"], secret.get("RotationRules") or {}
    enabled = bool(secret.get("RotationEnabled"))
    versions, kwargs = [], {"SecretId": arn}
    while True:  # botocore has no paginator for this operation
        page = sm_client.list_secret_version_ids(**kwargs)
        versions += page.get("Versions", [])
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    pending_version, pending_since = pending(versions)
    try:
        value = sm_client.get_secret_value(SecretId=arn, VersionStage=AWSCURRENT).get("SecretString")
        strategy = strategy_of(value)
    except ClientError as exc:
        strategy = f"unknown ({exc.response.get('Error', {}).get('Code', 'error')})"
    except BotoCoreError as exc:
        strategy = f"unknown ({type(exc).__name__})"
    due = next_rotation(secret) if enabled else None
    overdue_since = due if due is not None and now > due + _window(rules) else None
    states = []
    if not enabled:
        states.append(State.DISABLED)
    if pending_version is not None:
        states.append(State.STUCK)
    if overdue_since is not None:
        states.append(State.OVERDUE)
    failure = (last_failure(logs_client.filter_log_events, secret.get("RotationLambdaARN"), arn, now - LOG_LOOKBACK)
               if logs_client is not None else LastFailure(readable=False, reason="logs not consulted"))
    return SecretStatus(
        name=secret.get("Name", arn), arn=arn, function_arn=secret.get("RotationLambdaARN"), rotation_enabled=enabled,
        last_rotated=_utc(secret["LastRotatedDate"]) if secret.get("LastRotatedDate") else None,
        next_rotation=due, schedule=_schedule(rules), strategy=strategy, pending_version=pending_version,
        pending_since=pending_since, overdue_since=overdue_since, last_failure=failure,
        states=tuple(states) or (State.HEALTHY,),
    )


# ============================================================================================ rendering


def render_table(status: FleetStatus) -> str:
    """One row per secret for a person; what needs attention is spelled out under the table."""
    scope = f"rotated by {status.function}" if status.function else "with rotation enabled"
    if not status.secrets:
        return f"no secret {scope}"
    header = ("SECRET", "STRATEGY", "LAST ROTATED", "NEXT ROTATION", "STATE", "LAST FAILURE")
    rows = [(s.name, s.strategy, _short(s.last_rotated) or "never", _short(s.next_rotation) or "-",
             ", ".join(s.states), s.last_failure.describe()) for s in status.secrets]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in [header, *rows]]
    notes = []
    for secret in status.secrets:
        if State.STUCK in secret.states:
            since = f" since {_short(secret.pending_since)}" if secret.pending_since else ""
            notes.append(f"{secret.name}: AWSPENDING is stuck on version {secret.pending_version}{since}; "
                         f"`rotation repair --secret-id {secret.arn}` explains and clears it")
        if State.OVERDUE in secret.states:
            notes.append(f"{secret.name}: rotation was due {_short(secret.overdue_since)} and has not happened; "
                         f"`rotation doctor --secret-id {secret.arn}` checks its path")
    counts = status.counts()
    summary = (f"{counts['secrets']} secrets {scope}: {counts[State.HEALTHY]} healthy, {counts[State.STUCK]} stuck, "
               f"{counts[State.OVERDUE]} overdue, {counts[State.DISABLED]} with rotation disabled")
    return "\n".join([*lines, "", *notes, *([""] if notes else []), summary])


def _utc(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(float(value), dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _short(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


__all__ = ["FleetStatus", "LastFailure", "SecretStatus", "State", "collect", "function_name", "render_table"]
