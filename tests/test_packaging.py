"""Declared = imported: every third-party import of the package is a declared dependency (or a guarded extra).

The test reads the source with `ast` (no import needed, so a module that is never imported by the suite is still
checked) and maps each top-level import name to its distribution with `importlib.metadata`. An import that is not a
core dependency must sit in a `try:` whose `except ImportError` raises one line naming the extra that provides it
(``pip install 'diffusers-memctl[features]'``).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
# Core dependencies needed at run time that no module imports by name, with the reason.
RUNTIME_ONLY = {"tensorboard": "accelerate's TensorBoard tracker, the default --logger"}
# Our own modules: the package and the helper modules of tests/ (imported by name from there).
FIRST_PARTY = {"diffusers_memctl", *(p.stem for p in (REPO_ROOT / "tests").glob("*.py"))}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


CORE = {_name(r) for r in PYPROJECT["dependencies"]}
EXTRAS = {extra: {_name(r) for r in reqs} for extra, reqs in PYPROJECT["optional-dependencies"].items()}


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distribution(module: str) -> str:
    dists = _distributions().get(module)
    if not dists:
        raise AssertionError(f"import {module!r} maps to no installed distribution; install and declare it")
    return _name(dists[0])


def _third_party_imports(path: Path):
    """Yield `(top-level module, line, enclosing Try nodes)` for every absolute import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        tries, up = [], parents.get(node)
        while up is not None:
            if isinstance(up, ast.Try):
                tries.append(up)
            up = parents.get(up)
        for name in names:
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in FIRST_PARTY or top == "__future__":
                continue
            yield top, node.lineno, tries


def _guard_extras(tries: list[ast.Try]) -> set[str]:
    """Extras named (``diffusers-memctl[x]``) by a raise in an ``except ImportError`` around the import."""
    named: set[str] = set()
    for node in tries:
        for handler in node.handlers:
            caught = ast.unparse(handler.type) if handler.type else ""
            if "ImportError" not in caught and "ModuleNotFoundError" not in caught:
                continue
            if not any(isinstance(n, ast.Raise) for n in ast.walk(handler)):
                continue
            text = " ".join(
                n.value for n in ast.walk(handler) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            )
            named |= set(re.findall(r"diffusers-memctl\[(\w+)\]", text))
    return named


def _files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO_ROOT / folder).rglob("*.py"))


def test_every_library_import_is_declared_or_guarded():
    problems = []
    for path in _files("diffusers_memctl", "training_scripts", "benchmarks"):
        for module, line, tries in _third_party_imports(path):
            dist = _distribution(module)
            if dist in CORE:
                continue
            extras = {extra for extra in _guard_extras(tries) if dist in EXTRAS.get(extra, set())}
            if not extras:
                problems.append(
                    f"{path.relative_to(REPO_ROOT)}:{line}: import {module} ({dist}) is no core dependency and no "
                    "ImportError guard names an extra that provides it"
                )
    assert problems == [], "\n".join(problems)


def test_every_test_import_is_declared_in_core_or_test_extra():
    allowed = CORE | EXTRAS["test"]
    problems = [
        f"{path.relative_to(REPO_ROOT)}:{line}: import {module} ({_distribution(module)}) is not in core or [test]"
        for path in _files("tests")
        for module, line, _ in _third_party_imports(path)
        if _distribution(module) not in allowed
    ]
    assert problems == [], "\n".join(problems)


def test_every_core_dependency_is_imported_or_needed_at_run_time():
    imported = {
        _distribution(m) for p in _files("diffusers_memctl", "training_scripts") for m, _, _ in _third_party_imports(p)
    }
    unused = CORE - imported - set(RUNTIME_ONLY)
    assert unused == set(), f"core dependencies nothing imports (drop them or say why in RUNTIME_ONLY): {unused}"


def test_the_default_paths_need_no_extra():
    # README command 1 (the sweep's study analysis: statsmodels, pandas) and memctl-train's default path (plots).
    assert {"matplotlib", "statsmodels", "pandas"} <= CORE


def test_license_is_an_spdx_expression_and_build_backend_supports_it():
    assert PYPROJECT["license"] == "Apache-2.0"
    build = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in build), build


def test_every_folder_with_python_code_is_a_listed_package():
    # setuptools warns "Package would be ignored" for a folder of .py files shipped as data; list them all.
    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    with_code = {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in _files("diffusers_memctl")}
    assert with_code - listed == set(), "add these folders to [tool.setuptools] packages in pyproject.toml"


def test_the_guard_detector_sees_an_unguarded_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f():\n    import yaml\n"
        "def g():\n    try:\n        import yaml\n    except ImportError as err:\n"
        "        raise ImportError(\"pip install 'diffusers-memctl[yaml]'\") from err\n"
    )
    found = list(_third_party_imports(bad))
    assert [(m, line) for m, line, _ in found] == [("yaml", 2), ("yaml", 5)]
    assert _guard_extras(found[0][2]) == set()
    assert _guard_extras(found[1][2]) == {"yaml"}


def test_tests_that_need_shared_data_skip_with_one_line_when_it_is_absent(tmp_path):
    from shared_data import shared_data_or_skip

    assert shared_data_or_skip(tmp_path) == tmp_path
    with pytest.raises(pytest.skip.Exception) as skipped:
        shared_data_or_skip(tmp_path / "absent")
    reason = str(skipped.value)
    assert "../shared/data" in reason and str(tmp_path / "absent") in reason and "\n" not in reason
