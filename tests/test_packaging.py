"""Packaging checks: template.yaml lints clean and agrees with the Makefile and the code; the Lambda artifact
built by the Makefile has the right layout and the right binaries.

The artifact tests (marker ``build``) run ``make build-RotationFunction ARTIFACTS_DIR=<tmp>``, which is exactly
what ``sam build`` runs (BuildMethod: makefile) minus the SAM CLI. They download wheels from PyPI; deselect them
with ``-m "not build"`` when offline. ``ROTATION_ARTIFACT_DIR=<dir>`` checks an existing artifact instead
(e.g. ``.aws-sam/build/RotationFunction`` after ``sam build``).
"""

from __future__ import annotations

import ast
import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
MAKEFILE = ROOT / "Makefile"

#: The artifact budget ("built artifact at most 20 MB"), unzipped, in bytes.
ARTIFACT_BUDGET_BYTES = 20 * 1024 * 1024

#: cfn-lint findings we accept, by rule id, each with the reason. Empty today: the template lints clean,
#: including informational rules. Add an entry only with an explanation.
ALLOWED_CFN_LINT_FINDINGS: dict[str, str] = {}

#: Environment variables the template sets that no module of ``rotation/`` reads by name, with the reason.
ENV_NOT_READ_BY_OUR_CODE = {
    "POWERTOOLS_LOG_LEVEL": "read by aws-lambda-powertools' Logger itself",
    "ROTATION_VPC_ENDPOINT_ID": "informational; makes the function depend on the endpoint it needs",
    "ROTATION_RDS_VPC_ENDPOINT_ID": "informational; makes the function depend on the endpoint it needs",
}

#: ELF e_machine value of aarch64 (arm64).
EM_AARCH64 = 183


def load_template() -> dict:
    from cfnlint.decode import decode_str

    template, matches = decode_str(TEMPLATE.read_text())
    assert not matches, f"template.yaml does not parse: {matches}"
    return template


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*:?=\s*(.+)$", MAKEFILE.read_text(), re.MULTILINE)
    assert match, f"{name} not found in the Makefile"
    return match.group(1).strip()


# --------------------------------------------------------------------------------------------- template


def test_cfn_lint_reports_nothing() -> None:
    """cfn-lint (errors, warnings and informational rules) has nothing to say about template.yaml."""
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    if not cfn_lint.exists():
        cfn_lint = shutil.which("cfn-lint")
    assert cfn_lint, "cfn-lint is not installed: pip install -e '.[dev]'"
    result = subprocess.run(
        [str(cfn_lint), "--format", "parseable", "--include-checks", "I", "--", str(TEMPLATE)],
        capture_output=True,
        text=True,
        check=False,
    )
    print(result.stdout, result.stderr)
    findings = [line for line in result.stdout.splitlines() if line.strip()]
    # parseable format: file:line:col:endline:endcol:RULE:message
    unexplained = [line for line in findings if line.split(":")[5] not in ALLOWED_CFN_LINT_FINDINGS]
    assert not unexplained, "cfn-lint findings:\n" + "\n".join(unexplained)
    # Exit code is a bitmask: 2 errors, 4 warnings, 8 informational. Only explained findings may remain.
    assert result.returncode == 0 or findings, f"cfn-lint failed without findings: {result.stderr}"


def test_runtime_and_architecture_agree_with_the_makefile() -> None:
    template = load_template()
    function_globals = template["Globals"]["Function"]
    python_version = makefile_variable("LAMBDA_PYTHON_VERSION")
    platforms = makefile_variable("LAMBDA_PLATFORMS").split()

    assert function_globals["Runtime"] == f"python{python_version}"
    assert list(function_globals["Architectures"]) == ["arm64"]
    assert platforms and all(p.endswith("_aarch64") for p in platforms), platforms


def test_every_function_is_built_by_a_makefile_target() -> None:
    template = load_template()
    makefile = MAKEFILE.read_text()
    functions = {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }
    assert set(functions) == {"RotationFunction", "BootstrapFunction"}
    for name, resource in functions.items():
        assert resource["Metadata"]["BuildMethod"] == "makefile", name
        assert resource["Properties"]["CodeUri"] == ".", name
        assert re.search(rf"^build-{name}:", makefile, re.MULTILINE), f"Makefile has no build-{name} target"


def test_handlers_exist_in_the_code() -> None:
    template = load_template()
    handler_file = ROOT / "rotation" / "handler.py"
    if not handler_file.exists():
        pytest.skip("rotation/handler.py is not written yet")
    defined = {node.name for node in ast.parse(handler_file.read_text()).body if isinstance(node, ast.FunctionDef)}
    for name in ("RotationFunction", "BootstrapFunction"):
        handler = template["Resources"][name]["Properties"]["Handler"]
        module, _, function = handler.rpartition(".")
        assert module == "rotation.handler", handler
        assert function in defined, f"{handler} is not defined in rotation/handler.py"


def test_template_sets_only_environment_variables_that_something_reads() -> None:
    """A typo in a variable name would otherwise be silently ignored by the function."""
    template = load_template()
    names = set(template["Globals"]["Function"]["Environment"]["Variables"])
    for name in ("RotationFunction", "BootstrapFunction"):
        names |= set(template["Resources"][name]["Properties"]["Environment"]["Variables"])
    source = "\n".join(path.read_text() for path in (ROOT / "rotation").rglob("*.py"))
    unread = sorted(n for n in names - set(ENV_NOT_READ_BY_OUR_CODE) if f'"{n}"' not in source)
    if unread and not (ROOT / "rotation" / "config.py").exists():
        pytest.skip("rotation/config.py is not written yet")
    assert not unread, f"template.yaml sets variables that rotation/ never reads: {unread}"


def test_rotation_permissions_are_scoped() -> None:
    """The four rotation actions only on secrets that name this function; the admin secret read-only."""
    template = load_template()
    statements = template["Resources"]["RotationFunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"][
        "Statement"
    ]
    by_sid = {}
    for statement in statements:
        if "Fn::If" in statement:
            statement = statement["Fn::If"][1]
        by_sid[statement["Sid"]] = statement
    rotate = by_sid["RotateSecretsThatUseThisFunction"]
    assert sorted(rotate["Action"]) == sorted(
        [
            "secretsmanager:DescribeSecret",
            "secretsmanager:GetSecretValue",
            "secretsmanager:PutSecretValue",
            "secretsmanager:UpdateSecretVersionStage",
        ]
    )
    assert "secretsmanager:resource/AllowRotationLambdaArn" in rotate["Condition"]["StringEquals"]
    # DescribeSecret: an RDS-managed admin secret's tags name its cluster (docs/security.md).
    assert sorted(by_sid["ReadAdminSecret"]["Action"]) == ["secretsmanager:DescribeSecret",
                                                           "secretsmanager:GetSecretValue"]
    assert "kms:ViaService" in by_sid["UseSecretsKeyThroughSecretsManager"]["Condition"]["StringEquals"]
    permission = template["Resources"]["RotationFunctionInvokePermission"]["Properties"]
    assert permission["Principal"] == "secretsmanager.amazonaws.com"
    assert permission["SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_sample_events_are_valid_json() -> None:
    """Shape only; checking them against the handler's event model is tests/ of the handler's owner."""
    events = ROOT / "events"
    expected = {
        "createSecret.json",
        "setSecret.json",
        "testSecret.json",
        "finishSecret.json",
        "bootstrap.json",
        "bootstrap-cfn-create.json",
        "preflight.json",
    }
    assert expected <= {p.name for p in events.glob("*.json")}
    steps = [
        json.loads((events / f"{s}.json").read_text())
        for s in ("createSecret", "setSecret", "testSecret", "finishSecret")
    ]
    assert len({(e["SecretId"], e["ClientRequestToken"]) for e in steps}) == 1, "one rotation, one token"
    assert [e["Step"] for e in steps] == ["createSecret", "setSecret", "testSecret", "finishSecret"]


# --------------------------------------------------------------------------------------------- artifact


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("ROTATION_ARTIFACT_DIR")
    if given:
        return Path(given).resolve()
    if shutil.which("make") is None:
        pytest.fail("`make` is not installed; it builds the Lambda artifact (apt-get install make)")
    out = tmp_path_factory.mktemp("artifact") / "RotationFunction"
    result = subprocess.run(
        ["make", "-C", str(ROOT), "build-RotationFunction", f"ARTIFACTS_DIR={out}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        check=False,
    )
    print(result.stdout[-4000:], result.stderr[-4000:])
    assert result.returncode == 0, f"make build-RotationFunction failed:\n{result.stderr[-4000:]}"
    return out


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    byteorder = "little" if header[5] == 1 else "big"
    return int.from_bytes(header[18:20], byteorder)


@pytest.mark.build
def test_artifact_layout(artifact: Path) -> None:
    assert (artifact / "rotation" / "__init__.py").is_file()
    if (ROOT / "rotation" / "handler.py").exists():
        assert (artifact / "rotation" / "handler.py").is_file(), "the handler module must sit at the root"
    assert not list(artifact.rglob("rotation/**/__pycache__")), "caches must not be shipped"
    assert not (artifact / "tests").exists()
    assert not (artifact / "rotation_tools").exists(), "the CLI, demo and local tooling never ship to Lambda"
    shipped = {path.relative_to(artifact).as_posix() for path in (artifact / "rotation").rglob("*.py")}
    assert shipped == {path.relative_to(ROOT).as_posix() for path in (ROOT / "rotation").rglob("*.py")}
    for package in ("psycopg", "psycopg_binary", "aws_lambda_powertools"):
        assert (artifact / package / "__init__.py").is_file(), f"{package} missing from the artifact"
    # boto3 comes with the Lambda runtime; see the Makefile for why it is not bundled.
    for package in ("boto3", "botocore"):
        assert not (artifact / package).exists(), f"{package} must not be bundled"


@pytest.mark.build
def test_artifact_psycopg_binary_is_for_lambda(artifact: Path) -> None:
    python_version = makefile_variable("LAMBDA_PYTHON_VERSION")
    tag = "cp" + python_version.replace(".", "")

    wheel_files = list(artifact.glob("psycopg_binary-*.dist-info/WHEEL"))
    assert len(wheel_files) == 1, wheel_files
    tags = [
        line.split(":", 1)[1].strip() for line in wheel_files[0].read_text().splitlines() if line.startswith("Tag:")
    ]
    print("psycopg-binary wheel tags:", tags)
    assert tags and all(t.startswith(f"{tag}-{tag}-manylinux") and t.endswith("_aarch64") for t in tags), tags

    extensions = list((artifact / "psycopg_binary").glob("*.so"))
    assert extensions, "psycopg_binary has no compiled extension"
    for ext in extensions:
        assert ext.name.endswith(f".cpython-{python_version.replace('.', '')}-aarch64-linux-gnu.so"), ext.name
    for library in [*extensions, *(artifact / "psycopg_binary.libs").glob("*.so*")]:
        assert elf_machine(library) == EM_AARCH64, f"{library.name} is not an aarch64 binary"

    # psycopg refuses a psycopg-binary of another version: both must come from the same release.
    versions = {
        p.name.split("-")[1]
        for p in artifact.glob("psycopg*-*.dist-info")
        if p.name.split("-")[0] in ("psycopg", "psycopg_binary")
    }
    assert len(versions) == 1, f"psycopg and psycopg-binary versions differ: {versions}"


@pytest.mark.build
def test_artifact_size_within_budget(artifact: Path, tmp_path: Path) -> None:
    files = [p for p in artifact.rglob("*") if p.is_file() and not p.is_symlink()]
    unzipped = sum(p.stat().st_size for p in files)
    archive = tmp_path / "artifact.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            zf.write(p, p.relative_to(artifact))
    zipped = archive.stat().st_size
    mib = 1024 * 1024
    print(
        f"artifact: {len(files)} files, {unzipped / mib:.1f} MiB unzipped, {zipped / mib:.1f} MiB zipped "
        f"(budget {ARTIFACT_BUDGET_BYTES / mib:.0f} MiB unzipped)"
    )
    assert unzipped <= ARTIFACT_BUDGET_BYTES


def runtime_provided_libraries(into: Path) -> Path:
    """What the Lambda Python runtime puts on sys.path besides /var/task: boto3 and its dependencies."""
    into.mkdir()
    for name in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (into / source.name).symlink_to(source)
    return into


def lambda_like_python() -> str:
    """A python of the runtime's version when this machine has one, else this one (pure-Python check)."""
    version = makefile_variable("LAMBDA_PYTHON_VERSION")
    candidates = [
        shutil.which(f"python{version}"),
        *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}"))),
    ]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    return sys.executable


@pytest.mark.build
def test_handlers_import_from_the_artifact_alone(artifact: Path, tmp_path: Path) -> None:
    """Import the handlers the way Lambda does: the artifact, the runtime's boto3, the standard library,
    and nothing from this machine's site-packages."""
    if not (ROOT / "rotation" / "handler.py").exists():
        pytest.skip("rotation/handler.py is not written yet")
    runtime_libs = runtime_provided_libraries(tmp_path / "runtime")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join([str(artifact), str(runtime_libs)]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_METRICS_NAMESPACE": "SecretsRotation",
    }
    if platform.machine() not in ("aarch64", "arm64"):
        # The aarch64 libpq cannot load here. The handler should not import psycopg at all; if
        # something does, fall back to psycopg's pure-Python layer over this machine's libpq, if any.
        env["PSYCOPG_IMPL"] = "python"
    python = lambda_like_python()
    code = (
        "import sys, rotation.handler as h\n"
        "assert callable(h.rotate) and callable(h.bootstrap)\n"
        "outside = sorted({m.__name__.split('.')[0] for m in list(sys.modules.values())\n"
        "    if getattr(m, '__file__', None) and not m.__file__.startswith(tuple(sys.path[1:3]))\n"
        "    and 'site-packages' in m.__file__})\n"
        "print('python', sys.version.split()[0], 'psycopg imported:', 'psycopg' in sys.modules)\n"
        "assert not outside, outside\n"
    )
    result = subprocess.run(
        [python, "-S", "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    print(result.stdout, result.stderr[-4000:])
    assert result.returncode == 0, f"importing rotation.handler from the artifact failed:\n{result.stderr[-4000:]}"
