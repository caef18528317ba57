"""The layering of docs/architecture.md, checked on the source: what may import what.

Every import counts, including the ones deferred into functions (they are the cold-start economies, not
exemptions from the layering).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "rotation"
TOOLS = ROOT / "rotation_tools"

#: Modules that decide, and so must not know how Secrets Manager, the RDS API or PostgreSQL are spoken to.
PURE = ("rotation.protocol", "rotation.policy", "rotation.ports", "rotation.topology", "rotation.credentials",
        "rotation.events", "rotation.config", "rotation.passwords", "rotation.transient", "rotation.exceptions")
DRIVERS = ("boto3", "botocore", "psycopg", "psycopg_binary", "rotation_tools")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a relative import, resolved against the module's package
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parents, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def runtime_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in RUNTIME.rglob("*.py")}
    return {name: {imported for imported in imports_of(path) if imported in modules and imported != name}
            for name, path in modules.items()}


def test_the_runtime_never_imports_the_tools() -> None:
    offenders = {module_name(path): sorted(i for i in imports_of(path) if i.split(".")[0] == "rotation_tools")
                 for path in RUNTIME.rglob("*.py")}
    assert {name: found for name, found in offenders.items() if found} == {}


@pytest.mark.parametrize("module", PURE)
def test_the_deciding_modules_know_no_driver(module: str) -> None:
    path = RUNTIME.joinpath(*module.split(".")[1:]).with_suffix(".py")
    drivers = sorted(i for i in imports_of(path) if i.split(".")[0] in DRIVERS)
    assert drivers == [], f"{module} imports {drivers}"


def test_the_runtimes_imports_have_no_cycle() -> None:
    graph = runtime_graph()
    # A package's __init__ importing its own submodules is how it exports them, not a cycle of the design.
    for name in graph:
        graph[name] = {i for i in graph[name] if not (name.startswith(i + ".") and graph.get(i) is not None
                                                      and name in graph[i])}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, f"import cycle: {' -> '.join([*visiting[visiting.index(node):], node])}"
        visiting.append(node)
        for child in sorted(graph[node]):
            visit(child)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


def test_only_the_composition_root_builds_adapters() -> None:
    """Adapters are constructed in rotation.wiring alone (their own modules excepted), so every entry point gets
    the same timeouts, retries and TLS defaults."""
    constructors = ("PostgresDatabase(", "RdsClusterDirectory(", "SecretsManagerStore(", "BootstrapSecrets(",
                    "Bootstrapper(")
    allowed = {"rotation/wiring.py", "rotation/database.py", "rotation/rds_directory.py", "rotation/secrets_store.py"}
    builders = {}
    for path in [*RUNTIME.rglob("*.py"), *TOOLS.rglob("*.py")]:
        relative = str(path.relative_to(ROOT))
        text = path.read_text()
        used = [c for c in constructors if c in text and f"class {c[:-1]}" not in text]
        if used and relative not in allowed:
            builders[relative] = used
    assert builders == {}
