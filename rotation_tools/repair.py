"""Repair "A previous rotation isn't complete": explain what a failed rotation left, and clean it up safely.

Secrets Manager refuses to start a rotation while AWSPENDING sits on a version other than AWSCURRENT. A
rotation that failed for good (its retries spent) leaves exactly that, so every later rotation fails until
someone intervenes. :func:`analyze` reads the version stages and tries the AWSCURRENT and AWSPENDING
credentials against the database; :meth:`Repair.apply` then does one of two things:

* finish the rotation (move AWSCURRENT to the pending version, as finishSecret would) when the pending
  credentials log in and the current ones do not: the password was changed but never published, so this is
  the only move that restores service;
* otherwise remove the stale AWSPENDING label, so the next rotation can start from the working AWSCURRENT.

It acts only on what it proved. When neither set of credentials logs in, or the database cannot be reached
to tell, it changes nothing and says what a human has to do: it never removes the only working credentials.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rotation import wiring
from rotation.config import Settings
from rotation.credentials import DatabaseCredentials, parse_secret_string
from rotation.exceptions import (
    DatabaseError,
    LoginRefused,
    PendingValueMissing,
    RotationStateError,
    SecretFormatError,
    VerificationError,
)
from rotation.policy import pending_mismatch
from rotation.ports import AWSCURRENT, AWSPENDING, Database, SecretMetadata
from rotation.protocol import CLONE_SUFFIX, choose_strategy, original_role
from rotation.secrets_store import SecretsManagerStore


class RepairStore(SecretsManagerStore):
    """The rotation's store plus the one call repair needs that rotation never makes."""

    def remove_pending(self, secret_id: str, version_id: str) -> None:
        self._call("update_secret_version_stage", secret_id, VersionStage=AWSPENDING, RemoveFromVersionId=version_id)


class Login(enum.StrEnum):
    """What a version's credentials do against the database."""

    WORKS = "works"
    REFUSED = "refused"
    NO_VALUE = "no-value"
    MALFORMED = "malformed"
    ELSEWHERE = "points-elsewhere"
    LACKS_PRIVILEGES = "lacks-privileges"
    #: The database could not be asked (unreachable, TLS failure): nothing may be concluded.
    UNVERIFIED = "unverified"
    NOT_CHECKED = "not-checked"


#: States in which a version's credentials are certainly unusable, so dropping its label loses nothing.
_UNUSABLE = frozenset({Login.REFUSED, Login.NO_VALUE, Login.MALFORMED, Login.ELSEWHERE, Login.LACKS_PRIVILEGES})


class Action(enum.StrEnum):
    NOTHING = "nothing"
    FINISH_ROTATION = "finish-rotation"
    REMOVE_PENDING = "remove-pending-label"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class VersionState:
    version_id: str
    stages: tuple[str, ...]
    login: Login = Login.NOT_CHECKED
    username: str | None = None
    #: Why, in words: the server's refusal, the format problem, the unreachable host. Never a password.
    detail: str = ""

    @property
    def has_value(self) -> bool | None:
        if self.login is Login.NOT_CHECKED:
            return None
        return self.login is not Login.NO_VALUE

    def to_dict(self) -> dict[str, Any]:
        return {"version_id": self.version_id, "stages": list(self.stages), "has_value": self.has_value,
                "username": self.username, "login": self.login.value, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class RepairPlan:
    secret_arn: str
    secret_name: str
    rotation_enabled: bool
    versions: tuple[VersionState, ...]
    current_version: str | None
    pending_version: str | None
    action: Action
    #: Why this action, in an operator's words.
    reason: str

    def version(self, version_id: str | None) -> VersionState | None:
        return next((state for state in self.versions if state.version_id == version_id), None)

    @property
    def current(self) -> VersionState | None:
        return self.version(self.current_version)

    @property
    def pending(self) -> VersionState | None:
        return self.version(self.pending_version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "secret_arn": self.secret_arn,
            "secret_name": self.secret_name,
            "rotation_enabled": self.rotation_enabled,
            "current_version": self.current_version,
            "pending_version": self.pending_version,
            "versions": [state.to_dict() for state in self.versions],
            "action": self.action.value,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class RepairResult:
    plan: RepairPlan
    applied: bool
    message: str
    #: version id -> labels after the repair, as DescribeSecret reports them.
    stages_after: Mapping[str, tuple[str, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "message": self.message,
                "stages_after": {version: list(stages) for version, stages in self.stages_after.items()}}


class Repair:
    def __init__(self, store: RepairStore, database: Database, settings: Settings | None = None) -> None:
        self._store = store
        self._database = database
        self._settings = settings or Settings()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Repair:
        """Adapters configured as the rotation function's are, from ``env`` (default: the process's)."""
        settings = Settings.from_env(os.environ if env is None else env)
        # One attempt per login: repair must report what the database says now, not ride out a failover.
        return cls(wiring.store(settings, kind=RepairStore), wiring.database(settings, retries=False), settings)

    # ------------------------------------------------------------------------------------------ analysis

    def analyze(self, secret_id: str) -> RepairPlan:
        metadata = self._store.describe(secret_id)
        current_version = metadata.version_with(AWSCURRENT)
        pending_version = metadata.version_with(AWSPENDING)
        states = {version: VersionState(version, tuple(sorted(stages)))
                  for version, stages in metadata.versions.items()}
        current_creds = None
        if current_version is not None:
            states[current_version], current_creds = self._examine_current(metadata, states[current_version])
        stuck = pending_version is not None and pending_version != current_version
        if stuck:
            states[pending_version] = self._examine_pending(metadata, states[pending_version], current_creds)
        plan = RepairPlan(
            secret_arn=metadata.arn,
            secret_name=metadata.name,
            rotation_enabled=metadata.rotation_enabled,
            versions=tuple(sorted(states.values(), key=_stage_order)),
            current_version=current_version,
            pending_version=pending_version,
            action=Action.NOTHING,
            reason="",
        )
        if current_version is None:
            return _with(plan, Action.REFUSE, "no version is labelled AWSCURRENT; label the version the "
                         "database accepts with update-secret-version-stage by hand")
        if not stuck:
            where = "on the AWSCURRENT version" if pending_version else "absent"
            return _with(plan, Action.NOTHING, f"AWSPENDING is {where}: no rotation is stuck, the next one can "
                         f"start (AWSCURRENT: {_describe(plan.current)})")
        return _decide(plan, states[current_version], states[pending_version])

    def _examine_current(self, metadata: SecretMetadata,
                         state: VersionState) -> tuple[VersionState, DatabaseCredentials | None]:
        source = f"AWSCURRENT of secret {metadata.arn}"
        try:
            creds = DatabaseCredentials.from_secret(
                parse_secret_string(self._store.get_secret_string(metadata.arn, AWSCURRENT), source), source)
        except SecretFormatError as exc:
            return _state(state, Login.MALFORMED, str(exc)), None
        try:
            works = self._database.can_login(creds)
        except DatabaseError as exc:
            return _state(state, Login.UNVERIFIED, str(exc), creds.username), creds
        if works:
            return _state(state, Login.WORKS, "", creds.username), creds
        return _state(state, Login.REFUSED, f"the database at {creds.address} refuses these credentials",
                      creds.username), creds

    def _examine_pending(self, metadata: SecretMetadata, state: VersionState,
                         current: DatabaseCredentials | None) -> VersionState:
        source = f"AWSPENDING version {state.version_id} of secret {metadata.arn}"
        try:
            raw = self._store.get_secret_string(metadata.arn, AWSPENDING, state.version_id)
        except PendingValueMissing:
            return _state(state, Login.NO_VALUE, "the service staged it, but createSecret never stored a value")
        try:
            pending = DatabaseCredentials.from_secret(parse_secret_string(raw, source), source)
            strategy = choose_strategy(self._settings.strategy, pending, metadata.arn)
        except SecretFormatError as exc:
            return _state(state, Login.MALFORMED, str(exc))
        if current is None:
            return _state(state, Login.NOT_CHECKED, "AWSCURRENT is unreadable, so nothing proves AWSPENDING is for "
                          "the same database; not tried", pending.username)
        # The user and its alternate, built without toggle_clone's length check: a single-user name of 58 to 63
        # bytes has no valid alternate, and must not abort the analysis.
        original = original_role(current.username)
        problem = pending_mismatch(current, pending, {original, original + CLONE_SUFFIX})
        if problem:
            return _state(state, Login.ELSEWHERE, f"a rotation of AWSCURRENT would not write it ({problem}); not "
                          "tried", pending.username)
        try:
            # testSecret's own check: logs in, is who it says, holds the original role's privileges.
            self._database.verify(pending, strategy.member_of(pending))
        except LoginRefused:
            return _state(state, Login.REFUSED, f"the database at {pending.address} refuses these credentials: "
                          "setSecret never applied it", pending.username)
        except VerificationError as exc:
            return _state(state, Login.LACKS_PRIVILEGES, str(exc), pending.username)
        except DatabaseError as exc:
            return _state(state, Login.UNVERIFIED, str(exc), pending.username)
        return _state(state, Login.WORKS, "", pending.username)

    # ------------------------------------------------------------------------------------------ repair

    def apply(self, plan: RepairPlan) -> RepairResult:
        """Carry out ``plan``, after checking the secret's stages are still the ones it was made from."""
        if plan.action in {Action.NOTHING, Action.REFUSE}:
            return self._result(plan, applied=False, message=plan.reason)
        metadata = self._store.describe(plan.secret_arn)
        now = (metadata.version_with(AWSCURRENT), metadata.version_with(AWSPENDING))
        if now != (plan.current_version, plan.pending_version):
            raise RotationStateError(
                f"secret {plan.secret_arn} changed since it was analysed (AWSCURRENT on {now[0]}, AWSPENDING on "
                f"{now[1]}; a rotation may be running): analyse it again"
            )
        if plan.action is Action.FINISH_ROTATION:
            # What finishSecret does; the service then labels the old version AWSPREVIOUS.
            self._store.move_current(plan.secret_arn, plan.pending_version, plan.current_version)
            # The service drops AWSPENDING after a rotation; nobody else will here.
            self._store.remove_pending(plan.secret_arn, plan.pending_version)
            message = (f"finished the rotation: AWSCURRENT moved to version {plan.pending_version} (from "
                       f"{plan.current_version}, now AWSPREVIOUS) and AWSPENDING removed")
        else:
            self._store.remove_pending(plan.secret_arn, plan.pending_version)
            message = (f"removed AWSPENDING from version {plan.pending_version}; AWSCURRENT stays on "
                       f"{plan.current_version} and the next rotation can start")
        return self._result(plan, applied=True, message=message)

    def _result(self, plan: RepairPlan, *, applied: bool, message: str) -> RepairResult:
        after = self._store.describe(plan.secret_arn).versions
        return RepairResult(plan, applied, message,
                            {version: tuple(sorted(stages)) for version, stages in after.items()})


def _state(state: VersionState, login: Login, detail: str, username: str | None = None) -> VersionState:
    return VersionState(state.version_id, state.stages, login, username, detail)


def _with(plan: RepairPlan, action: Action, reason: str) -> RepairPlan:
    return RepairPlan(plan.secret_arn, plan.secret_name, plan.rotation_enabled, plan.versions,
                      plan.current_version, plan.pending_version, action, reason)


def _stage_order(state: VersionState) -> tuple[int, str]:
    for rank, stage in enumerate((AWSCURRENT, AWSPENDING)):
        if stage in state.stages:
            return rank, state.version_id
    return 2, state.version_id


def _describe(state: VersionState | None) -> str:
    if state is None:
        return "missing"
    return f"{state.login.value} ({state.detail})" if state.detail else state.login.value


def _decide(plan: RepairPlan, current: VersionState, pending: VersionState) -> RepairPlan:
    """The decision table. Only proven facts lead to an action; anything uncertain leads to no change."""
    if pending.login is Login.WORKS and current.login is Login.WORKS:
        return _with(plan, Action.REMOVE_PENDING, (
            "both AWSCURRENT and AWSPENDING log in (the rotation set the new password but never finished): keep "
            "AWSCURRENT, which the applications use, and drop AWSPENDING; the next rotation sets a new password"))
    if pending.login is Login.WORKS and current.login in _UNUSABLE:
        return _with(plan, Action.FINISH_ROTATION, (
            "AWSPENDING logs in and AWSCURRENT does not: the rotation changed the password in the database but "
            "never moved AWSCURRENT, so applications reading the secret are locked out; finishing the rotation "
            "restores them"))
    if current.login is Login.WORKS and pending.login in _UNUSABLE:
        return _with(plan, Action.REMOVE_PENDING, (
            f"AWSCURRENT logs in; AWSPENDING is stale, {_describe(pending)}: removing its label loses nothing "
            "and lets the next rotation start"))
    if Login.UNVERIFIED in {current.login, pending.login}:
        unverified = current if current.login is Login.UNVERIFIED else pending
        return _with(plan, Action.REFUSE, (
            f"cannot tell which credentials work, so nothing is changed: {unverified.detail}. Run this where the "
            "database is reachable (rotation doctor shows the network path)"))
    return _with(plan, Action.REFUSE, (
        f"neither AWSCURRENT, {_describe(current)}, nor AWSPENDING, {_describe(pending)}, logs in: there is no "
        "working credential set to keep or to finish with, so nothing is changed. As an admin, set the password "
        f"of {current.username or 'the user'!r} to the one in AWSCURRENT (or store the database's password in "
        "the secret), then run repair again"))


def analyze(secret_id: str, env: Mapping[str, str] | None = None) -> RepairPlan:
    return Repair.from_env(env).analyze(secret_id)


def apply(plan: RepairPlan, env: Mapping[str, str] | None = None) -> RepairResult:
    return Repair.from_env(env).apply(plan)
