"""What a preflight reports: one finding per check, and the report that gathers them (no secrets, ever)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Finding:
    """What one check found. ``learned`` feeds later checks; it is applied only when the check finished in time.

    ``learned`` is out of the repr: it holds the raw AWSCURRENT value, password and all.
    """

    status: Status
    detail: str
    fix: str | None = None
    learned: Mapping[str, Any] = field(default_factory=dict, repr=False)


def ok(detail: str, **learned: Any) -> Finding:
    return Finding(Status.OK, detail, learned=learned)


def warn(detail: str, fix: str, **learned: Any) -> Finding:
    return Finding(Status.WARN, detail, fix, learned=learned)


def fail(detail: str, fix: str | None = None, **learned: Any) -> Finding:
    return Finding(Status.FAIL, detail, fix, learned=learned)


def skip(reason: str) -> Finding:
    return Finding(Status.SKIP, f"skipped: {reason}")


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    status: Status
    duration_ms: float
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "duration_ms": self.duration_ms,
                "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True, slots=True)
class PreflightReport:
    secret_id: str
    checks: tuple[CheckResult, ...]
    duration_ms: float
    secret_arn: str | None = None

    @property
    def status(self) -> Status:
        statuses = {check.status for check in self.checks}
        for worst in (Status.FAIL, Status.WARN):
            if worst in statuses:
                return worst
        return Status.OK

    def count(self, status: Status) -> int:
        return sum(check.status is status for check in self.checks)

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(status)} {status.value}" for status in Status if self.count(status))
        return f"preflight {self.status.value}: {counts} in {self.duration_ms / 1000:.1f} s"

    def to_dict(self) -> dict[str, Any]:
        return {
            "preflight": True,
            "secret_id": self.secret_id,
            "secret_arn": self.secret_arn,
            "status": self.status.value,
            "summary": self.summary(),
            "duration_ms": self.duration_ms,
            "changed": False,
            "checks": [check.to_dict() for check in self.checks],
        }
