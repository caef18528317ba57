"""Cold start: what a new Lambda container pays before and during its first invocation.

Every sample runs in a fresh interpreter. Import times are measured inside it (``time.perf_counter`` around the
import statements), so interpreter start-up, which the Lambda runtime pays whatever the function, is left out.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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
    The cold paths, ours against the reference, are measured by :func:`measure_cold_paths`.
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
        cold_paths = measure_cold_paths(samples, Path(workdir))
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
        **cold_paths,
    }


# --- cold paths: this project against the reference, as a new Lambda container pays them ---------------------

#: What a new container runs before a step's first request, stage by stage. The reference is what the issue
#: describes of AWS's functions (their code is not in this repository): ``import boto3`` whole, a boto3 client,
#: and the PostgreSQL driver (psycopg stands in for theirs). Stages accumulate: "client" is what
#: createSecret/finishSecret pay, "driver" what setSecret/testSecret pay.
COLD_STAGES = ("import", "client", "driver")
_PROJECT_PATH = (
    "import rotation.handler",
    "import rotation.secrets_store; rotation.secrets_store.secrets_manager_client()",
    "import rotation.database",
)
#: ``project``: rotation/ without .pyc (as the artifact ships it), its dependencies with .pyc (the Makefile
#: compiles them for the runtime's Python); ``project-deps-no-pyc``: the artifact built where no Python of the
#: runtime's version was found, nothing compiled; ``reference``: everything compiled (the runtime's boto3, and
#: the benefit of the doubt for their driver).
COLD_PATHS = {
    "project": _PROJECT_PATH,
    "project-deps-no-pyc": _PROJECT_PATH,
    "reference": (
        "import boto3",
        "boto3.client('secretsmanager')",
        "import psycopg",
    ),
}
COLD_STAGE_LABELS = {
    "import": ("`import rotation.handler`", "`import boto3`"),
    "client": ("... + Secrets Manager client (createSecret, finishSecret)", "... + `boto3.client(...)`"),
    "driver": ("... + psycopg (setSecret, testSecret)", "... + the PostgreSQL driver"),
}
#: The pure-Python packages the artifact ships next to ``rotation`` (LAMBDA_REQUIREMENTS and their dependencies).
#: In /var/task they have no .pyc, so the copy made here has none either; boto3 and botocore come compiled
#: with the Lambda runtime, and here from this environment (compiled by pip).
ARTIFACT_PACKAGES = ("aws_lambda_powertools", "psycopg", "psycopg_binary", "jmespath", "typing_extensions")
#: Where no request is ever sent: building a client needs a region and an endpoint, not a server.
_COLD_ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "cold-start-probe",
    "AWS_SECRET_ACCESS_KEY": "cold-start-probe",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://127.0.0.1:9",
    "PYTHONDONTWRITEBYTECODE": "1",
}

_COLD_PROBE = """
import json, time
marks = []
wall, cpu = time.perf_counter(), time.process_time()
{stages}
print(json.dumps([[(w - wall) * 1000, (c - cpu) * 1000] for w, c in marks]))
"""


def _cold_probe_code(path: str) -> str:
    lines = [f"{statement}\nmarks.append((time.perf_counter(), time.process_time()))"
             for statement in COLD_PATHS[path]]
    return _COLD_PROBE.format(stages="\n".join(lines))


_FIND_PACKAGES = """
import importlib.util, json, sys
found = {}
for name in sys.argv[1:]:
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin is not None:
        found[name] = [spec.origin, bool(spec.submodule_search_locations)]
print(json.dumps(found))
"""


def _installed_packages(python: str) -> dict[str, tuple[Path, bool]]:
    """Where ``python`` finds the artifact's packages: (origin, is a package) by name."""
    proc = subprocess.run([python, "-c", _FIND_PACKAGES, *ARTIFACT_PACKAGES], capture_output=True, text=True,
                          timeout=_SUBPROCESS_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise BenchmarkError(f"{python} cannot locate the artifact's packages: {proc.stderr.strip()[-2000:]}")
    return {name: (Path(origin), is_package) for name, (origin, is_package) in json.loads(proc.stdout).items()}


def _no_pyc_task(workdir: Path, python: str, *, with_dependencies: bool) -> Path:
    """``rotation`` copied without bytecode, and (``with_dependencies``) the artifact's pure-Python packages too."""
    task = workdir / ("task-all-no-pyc" if with_dependencies else "task-rotation-no-pyc")
    if task.exists():
        return task
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(__file__).resolve().parent.parent / "rotation", task / "rotation", ignore=ignore)
    for origin, is_package in (_installed_packages(python).values() if with_dependencies else ()):
        if is_package:
            shutil.copytree(origin.parent, task / origin.parent.name, ignore=ignore)
            libs = origin.parent.with_name(f"{origin.parent.name}.libs")  # libpq and friends, for psycopg_binary
            if libs.is_dir():
                shutil.copytree(libs, task / libs.name)
        else:
            shutil.copy2(origin, task / origin.name)
    return task


def _cold_env(task: Path | None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AWS_", "PYTHON", "SECRETS_MANAGER_ENDPOINT"))}
    return {**env, **_COLD_ENV, **({"PYTHONPATH": str(task)} if task else {})}


def _cold_run(python: str, path: str, env: dict[str, str], *,
              importtime: bool = False) -> tuple[float, list[list[float]], str]:
    """One fresh interpreter: its whole-process wall time, the stage marks and (with -X importtime) stderr."""
    command = [python, *(["-X", "importtime"] if importtime else []), "-c", _cold_probe_code(path)]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=_SUBPROCESS_TIMEOUT_S,
                          check=False)
    whole_ms = (time.perf_counter() - started) * 1000
    if proc.returncode != 0:
        raise BenchmarkError(f"the {path} cold-start probe failed: {proc.stderr.strip()[-2000:]}")
    return whole_ms, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _self_time_by_top_level(importtime_stderr: str) -> dict[str, float]:
    """-X importtime's self times (us), added up by top-level package, in ms."""
    totals: dict[str, float] = {}
    for line in importtime_stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = line.split(":", 1)[1].split("|")
        top = name.strip().split(".")[0]
        totals[top] = totals.get(top, 0.0) + int(self_us) / 1000
    return totals


def measure_cold_paths(samples: int, workdir: Path, python: str = sys.executable) -> dict[str, Any]:
    """The project's cold path against the reference's, in fresh interpreters, interleaved sample by sample.

    Each sample runs both paths (alternating which goes first) for stage times inside the interpreter and the
    whole process's wall time, then both again under ``-X importtime`` for the split by top-level module.
    ``python`` is this interpreter by default; another one (the runtime's version) needs boto3, psycopg[binary]
    and aws-lambda-powertools installed.
    """
    envs = {
        "project": _cold_env(_no_pyc_task(workdir, python, with_dependencies=False)),
        "project-deps-no-pyc": _cold_env(_no_pyc_task(workdir, python, with_dependencies=True)),
        "reference": _cold_env(None),
    }
    wall: dict[str, dict[str, list[float]]] = {path: {stage: [] for stage in COLD_STAGES} for path in COLD_PATHS}
    cpu: dict[str, dict[str, list[float]]] = {path: {stage: [] for stage in COLD_STAGES} for path in COLD_PATHS}
    whole: dict[str, list[float]] = {path: [] for path in COLD_PATHS}
    modules: dict[str, list[dict[str, float]]] = {path: [] for path in COLD_PATHS}
    for sample in range(samples):
        order = list(COLD_PATHS) if sample % 2 == 0 else list(reversed(COLD_PATHS))
        for path in order:
            whole_ms, marks, _ = _cold_run(python, path, envs[path])
            whole[path].append(whole_ms)
            for stage, (wall_ms, cpu_ms) in zip(COLD_STAGES, marks, strict=True):
                wall[path][stage].append(wall_ms)
                cpu[path][stage].append(cpu_ms)
        for path in order:
            modules[path].append(_self_time_by_top_level(_cold_run(python, path, envs[path], importtime=True)[2]))
    by_module = {}
    for path, runs in modules.items():
        names = set().union(*runs)
        by_module[path] = dict(sorted(((name, round(statistics.median(run.get(name, 0.0) for run in runs), 1))
                                       for name in names), key=lambda item: -item[1]))
    result = {
        "python": subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                                 text=True, check=False).stdout.strip(),
        "wall_ms": {path: {stage: summarize(values) for stage, values in stages.items()}
                    for path, stages in wall.items()},
        "cpu_ms": {path: {stage: summarize(values) for stage, values in stages.items()}
                   for path, stages in cpu.items()},
        "whole_process_ms": {path: summarize(values) for path, values in whole.items()},
        "import_self_ms_by_top_level": by_module,
    }
    for suffix, ours in (("", "project"), ("_deps_no_pyc", "project-deps-no-pyc")):
        result[f"ratio{suffix}"] = {
            stage: _ratio(result["wall_ms"][ours][stage], result["wall_ms"]["reference"][stage])
            for stage in COLD_STAGES
        }
        result[f"ratio_cpu{suffix}"] = {
            stage: _ratio(result["cpu_ms"][ours][stage], result["cpu_ms"]["reference"][stage])
            for stage in COLD_STAGES
        }
        result[f"ratio_whole_process{suffix}"] = _ratio(result["whole_process_ms"][ours],
                                                        result["whole_process_ms"]["reference"])
    return {"cold_paths": result}


def _ratio(ours: dict[str, Any], reference: dict[str, Any]) -> float | None:
    if not ours.get("samples") or not reference.get("samples") or not reference["median"]:
        return None
    return round(ours["median"] / reference["median"], 2)


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


def main(argv: list[str] | None = None) -> int:
    """Only the cold paths: ``python benchmarks/bench_coldstart.py [--samples N] [--python PYTHON] [--json-out F]``."""
    import argparse

    from bench_budgets import cold_start_checks
    from bench_report import budget_table, cold_path_tables

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--samples", type=int, default=9)
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter to measure (e.g. the runtime's version, with the dependencies installed)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rotation-bench-") as workdir:
        cold = measure_cold_paths(args.samples, Path(workdir), args.python)
    if args.json_out:
        args.json_out.write_text(json.dumps(cold, indent=2) + "\n")
    print(f"Python {cold['cold_paths']['python']}, {args.samples} samples\n")
    print(cold_path_tables(cold["cold_paths"]))
    checks = list(cold_start_checks(cold))
    print(budget_table(checks))
    return 1 if any(check.ok is False for check in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
