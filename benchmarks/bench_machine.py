"""What the figures were measured on: a time without a machine means nothing."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from typing import Any

_PACKAGES = ("psycopg", "psycopg-binary", "boto3", "botocore", "aws-lambda-powertools", "moto")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    """Total and available memory as ``free -h`` prints them, or n/a without procps."""
    try:
        out = subprocess.run(["free", "-h"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "n/a"
    lines = out.splitlines()
    header = lines[0].split() if lines else []
    for line in lines[1:]:
        if line.startswith("Mem:"):
            columns = dict(zip(header, line.split()[1:], strict=False))
            return f"{columns.get('total', '?')} total, {columns.get('available', '?')} available (free -h)"
    return "n/a"


def _versions() -> dict[str, str]:
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def describe_machine(postgres: dict[str, str]) -> dict[str, Any]:
    import psycopg

    libpq = psycopg.pq.version()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory": _memory(),
        "cpu": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "libpq": f"{libpq // 10000}.{libpq % 10000}",
        "packages": _versions(),
    }


def load_average() -> str:
    """1-minute load average: figures taken while other work shares the CPUs are slower and noisier."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"
