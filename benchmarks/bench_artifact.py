"""Size of the Lambda artifact that ``sam build`` produces (BuildMethod: makefile).

Measured unzipped (what the 20 MB budget and Lambda's 250 MB limit count) and zipped (what is uploaded).
An existing build is used when there is one; otherwise the Makefile target that ``sam build`` runs is run
directly, which downloads wheels, so it may fail offline: then the size is reported as n/a, with the reason.
"""

from __future__ import annotations

import contextlib
import datetime
import filecmp
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SAM_BUILD_DIR = REPO_ROOT / ".aws-sam" / "build" / "RotationFunction"
MAKE_TARGET = "build-RotationFunction"
BUILD_TIMEOUT_S = 300
MIB = 1024 * 1024


def find_or_build(explicit: Path | None, scratch: Path) -> tuple[Path | None, str]:
    """The artifact directory and where it came from, or None and why there is none."""
    if explicit is not None:
        if not explicit.is_dir():
            return None, f"--artifact-dir {explicit} is not a directory"
        return explicit, f"--artifact-dir {explicit}"
    if SAM_BUILD_DIR.is_dir():
        built = datetime.datetime.fromtimestamp(SAM_BUILD_DIR.stat().st_mtime, datetime.UTC)
        return SAM_BUILD_DIR, f"existing sam build output (built {built:%Y-%m-%d %H:%M} UTC)"
    return _build(scratch)


def _build(scratch: Path) -> tuple[Path | None, str]:
    makefile = REPO_ROOT / "Makefile"
    if not makefile.is_file() or f"{MAKE_TARGET}:" not in makefile.read_text():
        return None, f"no .aws-sam build and no `{MAKE_TARGET}` target in the Makefile"
    target = scratch / "RotationFunction"
    command = ["make", "-C", str(REPO_ROOT), MAKE_TARGET, f"ARTIFACTS_DIR={target}", f"PYTHON={sys.executable}"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return None, f"`make {MAKE_TARGET}` did not finish within {BUILD_TIMEOUT_S} s"
    except OSError as exc:
        return None, f"cannot run make: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        return None, f"`make {MAKE_TARGET}` failed (exit {proc.returncode}): {last[0]}"
    return target, f"built now with `make {MAKE_TARGET}`"


def _sizes(root: Path) -> dict[Path, int]:
    """Regular files and their sizes; a file that vanishes meanwhile (a rebuild in progress) is left out."""
    sizes = {}
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                sizes[path] = path.stat().st_size
        except FileNotFoundError:
            continue
    return sizes


def _zipped_bytes(root: Path, files: list[Path], scratch: Path) -> int:
    archive = scratch / "artifact.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as bundle:
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                bundle.write(path, path.relative_to(root))
    size = archive.stat().st_size
    archive.unlink()
    return size


def _stale_sources(root: Path) -> int:
    """How many of the working tree's rotation/*.py files the artifact lacks or holds in another version."""
    sources = [path for path in (REPO_ROOT / "rotation").rglob("*.py") if "__pycache__" not in path.parts]
    return sum(
        1
        for source in sources
        if not (copy := root / source.relative_to(REPO_ROOT)).is_file() or not filecmp.cmp(source, copy, shallow=False)
    )


def measure_artifact(explicit: Path | None, scratch: Path) -> dict[str, Any]:
    root, source = find_or_build(explicit, scratch)
    if root is None:
        return {"available": False, "reason": source}
    sizes = _sizes(root)
    unzipped = sum(sizes.values())
    by_top_level: dict[str, int] = {}
    for path, size in sizes.items():
        top = path.relative_to(root).parts[0]
        by_top_level[top] = by_top_level.get(top, 0) + size
    largest = sorted(by_top_level.items(), key=lambda item: item[1], reverse=True)[:5]
    return {
        "available": True,
        "path": str(root.resolve()),
        "source": source,
        "files": len(sizes),
        "unzipped_bytes": unzipped,
        "unzipped_mib": round(unzipped / MIB, 2),
        "zipped_mib": round(_zipped_bytes(root, list(sizes), scratch) / MIB, 2),
        "largest_mib": {name: round(size / MIB, 2) for name, size in largest},
        "rotation_files_differing_from_working_tree": _stale_sources(root),
    }
