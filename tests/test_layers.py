"""The architecture, checked: the import-linter layers contract of pyproject.toml holds, no module of the package
imports another of its modules inside a function, and no private name crosses modules."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffusers_memctl"

#: Modules still allowed to import our modules inside a function: none (the set may only stay empty).
PENDING_IN_FUNCTION: set[str] = set()
#: Private helpers shared between the modules of the metrics/ package (neighbors.py, brute_force.py and arrays.py
#: were moved in untouched; issue 22 works on neighbors.py): to be made public there. This set only shrinks.
PENDING_PRIVATE = {
    f"diffusers_memctl/metrics/{module}.py: {name}"
    for module, names in {
        "distribution": ("_as_pair", "_check_int", "_to_numpy64"),
        "feature_space": (
            "_DISTANCE_CHUNK_ELEMENTS",
            "_as_pair",
            "_check_chunk",
            "_check_int",
            "_nearest_neighbors",
            "_squared_norms",
        ),
        "memorization": (
            "_GATHER_BLOCK_ELEMENTS",
            "_as_pair",
            "_check_chunk",
            "_check_int",
            "_nearest_neighbors",
            "_squared_norms",
        ),
        "neighbors": (
            "_as_pair",
            "_as_samples",
            "_candidate_precision",
            "_check_chunk",
            "_check_int",
            "_select_k",
            "_squared_norms",
        ),
    }.items()
    for name in names
}


def _sources() -> list[Path]:
    # evaluate_modules/ are `evaluate` scripts loaded by path, not modules of the package.
    return sorted(p for p in PACKAGE.rglob("*.py") if "evaluate_modules" not in p.parts)


def _own_imports(tree: ast.AST):
    """(node, inside a function) for every import of the package's own modules."""

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and (
                child.level > 0 or (child.module or "").startswith("diffusers_memctl")
            ):
                yield child, in_function
            elif isinstance(child, ast.Import) and any(a.name.startswith("diffusers_memctl") for a in child.names):
                yield child, in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    yield from walk(tree, False)


def test_the_layers_contract_holds():
    pytest.importorskip("importlinter")
    # In a process of its own: import-linter reconfigures logging (it disables the loggers that exist), which would
    # silence our modules' log records for the tests that run after this one.
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    result = subprocess.run(
        [sys.executable, "-c", code, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_module_imports_our_modules_inside_a_function():
    hidden = [
        f"{path.relative_to(ROOT).as_posix()}:{node.lineno}"
        for path in _sources()
        if path.relative_to(ROOT).as_posix() not in PENDING_IN_FUNCTION
        for node, in_function in _own_imports(ast.parse(path.read_text()))
        if in_function
    ]
    assert not hidden, f"imports of our own modules inside functions (move them to module top): {hidden}"


def test_no_private_name_crosses_modules():
    crossing = {
        f"{path.relative_to(ROOT).as_posix()}: {alias.name}"
        for path in _sources()
        for node, _ in _own_imports(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    }
    assert crossing <= PENDING_PRIVATE, f"private names imported from another module (make them public): {crossing}"
