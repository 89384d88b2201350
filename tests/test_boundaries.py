"""What imports what (DESIGN.md, "Boundaries"): checked on the real packages.

- the command-line tools load the pure core and their HTTP client, no actor framework, TFTP
  server or SSH library, and nothing of the daemon;
- the pure core imports nothing of the daemon;
- the daemon's modules form no import circle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_LOADED = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(module.name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(package: str) -> set[str]:
    """Every module loaded by importing each module of ``package``, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _LOADED, package],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(json.loads(done.stdout))


def test_the_cli_loads_no_actor_tftp_or_ssh_library_and_nothing_of_the_daemon() -> None:
    loaded = loaded_by("kadeploy_cli")
    assert "kadeploy_cli.kadeploy" in loaded  # the walk did import the tools
    assert not {"pykka", "tftpy", "paramiko"} & loaded
    assert not [m for m in loaded if m == "kadeployd" or m.startswith("kadeployd.")]


def test_the_core_imports_nothing_of_the_daemon() -> None:
    loaded = loaded_by("kadeploy_core")
    assert "kadeploy_core.machine" in loaded
    assert not [m for m in loaded if m == "kadeployd" or m.startswith("kadeployd.")]
    assert not {"pykka", "tftpy", "paramiko", "fastapi", "uvicorn"} & loaded


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The daemon modules ``path`` imports at run time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in known}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph``, as the list of modules around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", ["kadeployd", "kadeploy_core", "kadeploy_cli"])
def test_no_import_circle(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    modules = {_module_name(path): path for path in files}
    # A package's __init__ importing its own modules is how it shows its face, not a circle.
    graph = {
        name: {
            target
            for target in _imports(path, set(modules))
            if not (path.name == "__init__.py" and target.startswith(name + "."))
        }
        for name, path in modules.items()
    }
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
