"""Cold start: what a new Lambda container pays before and during its first invocation.

Every sample runs in a fresh interpreter. Import times are measured inside it (``time.perf_counter`` around the
import statements), so interpreter start-up, which the Lambda runtime pays whatever the function, is left out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_lab import SSL_FALSE, BenchmarkError, Lab
from bench_rotations import STEPS
from bench_stats import summarize

CHILD_SCRIPT = Path(__file__).resolve().parent / "bench_first_invocation_child.py"
#: Imported only by some steps or only when enabled; ``import rotation.handler`` must pull in neither.
DEFERRED_MODULES = ("psycopg", "aws_xray_sdk")
_SUBPROCESS_TIMEOUT_S = 120

# Runs in a fresh interpreter. A meta path finder notes who first asks for a deferred module, so a failed
# check names the import chain instead of just saying "psycopg was imported".
_IMPORT_PROBE = """
import json, sys, time, traceback
DEFERRED = {deferred!r}
importers = {{}}
class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name in DEFERRED and name not in importers:
            importers[name] = [f"{{f.filename}}:{{f.lineno}}" for f in traceback.extract_stack()[:-1]
                               if "importlib" not in f.filename and f.filename != "<string>"]
        return None
watch = _Watch()
sys.meta_path.insert(0, watch)
t0 = time.perf_counter()
import rotation.handler
t1 = time.perf_counter()
sys.meta_path.remove(watch)
loaded = {{name: name in sys.modules for name in DEFERRED}}
result = {{"handler_ms": (t1 - t0) * 1000, "loaded": loaded, "importers": importers}}
if {extras!r}:
    import psycopg
    t2 = time.perf_counter()
    from aws_lambda_powertools import Tracer
    Tracer(service="bench", disabled=True)
    t3 = time.perf_counter()
    result.update(psycopg_ms=(t2 - t1) * 1000, tracer_ms=(t3 - t2) * 1000)
print(json.dumps(result))
"""


def _run_probe(extras: bool, *, env: dict[str, str] | None = None) -> dict[str, Any]:
    code = _IMPORT_PROBE.format(deferred=DEFERRED_MODULES, extras=extras)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=_SUBPROCESS_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise BenchmarkError(f"the import probe failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _artifact_copy(artifact_dir: Path, workdir: Path) -> Path | None:
    """The artifact's pure-Python parts without any .pyc: what /var/task holds (read-only, nothing cached)."""
    if not (artifact_dir / "rotation" / "handler.py").is_file():
        return None
    copy = workdir / "task"
    shutil.copytree(artifact_dir, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.so.*"))
    return copy


def measure_imports(samples: int, artifact_dir: Path | None) -> dict[str, Any]:
    """Import times, median over ``samples`` fresh interpreters, and whether deferred modules stay deferred.

    With an artifact, ``rotation`` and Powertools are also imported from a copy of it with no bytecode
    cache and none written (PYTHONDONTWRITEBYTECODE), as a Lambda container imports them: compiled at every
    cold start. boto3 still comes from this environment (the Lambda runtime provides it, compiled).
    """
    handler, with_psycopg, with_tracer, from_artifact = [], [], [], []
    loaded: dict[str, bool] = dict.fromkeys(DEFERRED_MODULES, False)
    importers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="rotation-bench-") as workdir:
        task = _artifact_copy(artifact_dir, Path(workdir)) if artifact_dir else None
        artifact_env = None
        if task is not None:
            artifact_env = {**os.environ, "PYTHONPATH": str(task), "PYTHONDONTWRITEBYTECODE": "1"}
        # Interleaved, so a slow moment of the machine affects every row alike.
        for _ in range(samples):
            probe = _run_probe(extras=True)
            handler.append(probe["handler_ms"])
            with_psycopg.append(probe["handler_ms"] + probe["psycopg_ms"])
            with_tracer.append(probe["handler_ms"] + probe["tracer_ms"])
            for name, was_loaded in probe["loaded"].items():
                loaded[name] = loaded[name] or was_loaded
            importers.update(probe["importers"])
            if artifact_env is not None:
                from_artifact.append(_run_probe(extras=False, env=artifact_env)["handler_ms"])
    return {
        "import_ms": {
            "handler": summarize(handler),
            "handler_plus_psycopg": summarize(with_psycopg),
            "handler_plus_tracer": summarize(with_tracer),
            "handler_from_artifact_no_pyc": summarize(from_artifact) if from_artifact else None,
        },
        "imported_by_handler": loaded,
        # Who asked for a deferred module during `import rotation.handler` (empty when nothing did): the
        # rotation module's line is the one to look at when the check fails.
        "first_importers": {name: importers.get(name, [])[-6:] for name in DEFERRED_MODULES},
    }


def _first_invocation_sample(lab: Lab, strategy: str, rotations: int) -> dict[str, Any]:
    arn = lab.new_user_secret(strategy, SSL_FALSE)
    # stderr to a file, not a pipe: a chatty child must never block on a pipe nobody reads until the end.
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(
            [sys.executable, str(CHILD_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
            text=True, bufsize=1,
        )
        try:
            ready = json.loads(child.stdout.readline() or "{}")
            if "import_ms" not in ready:
                child.wait(timeout=_SUBPROCESS_TIMEOUT_S)
                errors.seek(0)
                raise BenchmarkError(f"the first-invocation child did not start: {errors.read()[-2000:]}")
            runs = []
            for _ in range(rotations):
                # The service's part (staging AWSPENDING) edits moto's model, which lives in this process.
                token = lab.sm.stage_pending(arn)
                child.stdin.write(f"{arn} {token}\n")
                child.stdin.flush()
                reply = json.loads(child.stdout.readline() or '{"error": "the child exited"}')
                if "error" in reply:
                    raise BenchmarkError(f"rotation in the first-invocation child failed: {reply['error']}")
                runs.append(reply)
        finally:
            child.stdin.close()
            try:
                child.wait(timeout=_SUBPROCESS_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return {"import_ms": ready["import_ms"], "runs": runs}


def measure_first_invocation(lab: Lab, strategy: str, *, samples: int, later_rotations: int = 3) -> dict[str, Any]:
    """Each step's first call in a fresh interpreter versus its later calls, median over ``samples`` children."""
    first: dict[str, list[float]] = {step: [] for step in STEPS}
    later: dict[str, list[float]] = {step: [] for step in STEPS}
    imports, first_totals, later_totals = [], [], []
    psycopg_loaded_during: set[str] = set()
    for _ in range(samples):
        sample = _first_invocation_sample(lab, strategy, 1 + later_rotations)
        imports.append(sample["import_ms"])
        head, *rest = sample["runs"]
        for step in STEPS:
            first[step].append(head["steps"][step])
            later[step].extend(run["steps"][step] for run in rest)
        first_totals.append(sum(head["steps"].values()))
        later_totals.extend(sum(run["steps"].values()) for run in rest)
        if head.get("psycopg_first_loaded_by"):
            psycopg_loaded_during.add(head["psycopg_first_loaded_by"])
    return {
        "samples": samples,
        "import_ms": summarize(imports),
        "first_rotation_ms": summarize(first_totals),
        "later_rotation_ms": summarize(later_totals),
        "first_call_ms": {step: summarize(first[step]) for step in STEPS},
        "later_call_ms": {step: summarize(later[step]) for step in STEPS},
        "psycopg_first_loaded_by": sorted(psycopg_loaded_during),
    }
