"""The world package's modules import one way: no circle, each importable alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

WORLD = Path(__file__).resolve().parents[3] / "datamodules" / "world"
MODULES = sorted(p.stem for p in WORLD.glob("*.py") if p.stem != "__init__")


def _world_imports(module: str) -> set[str]:
    """World modules that `module` imports anywhere in its source (also inside functions)."""
    tree = ast.parse((WORLD / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["datamodules", "world"] and len(parts) > 2 and parts[2] in MODULES:
                found.add(parts[2])
    return found - {module}


def test_world_modules_form_no_import_circle() -> None:
    graph = {m: _world_imports(m) for m in MODULES}
    assert "splits" not in graph["generator"], "generator must not import splits"
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError(f"import circle: {' -> '.join([*path, node])}")
        if node in done:
            return
        for child in sorted(graph[node]):
            visit(child, [*path, node])
        done.add(node)

    for module in MODULES:
        visit(module, [])


@pytest.mark.parametrize("module", ["generator", "splits"])
def test_each_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    root = str(WORLD.parents[1])
    result = subprocess.run(
        [sys.executable, "-c", f"import datamodules.world.{module}"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
