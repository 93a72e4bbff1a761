"""Every third-party import of the package is declared in pyproject.toml, or guarded by a one-line install hint.

A fresh environment built from `pip install .` has exactly the declared core dependencies; an import that is not
among them must sit in a ``try`` that catches ImportError and names the extra that provides it.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffusers_memctl"
# Import name -> distribution name, where they differ.
DISTRIBUTION_OF = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "huggingface_hub": "huggingface-hub",
    "faiss": "faiss-cpu",
}


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _core() -> set[str]:
    return {_requirement_name(r) for r in _project()["dependencies"]}


def _extras() -> dict[str, set[str]]:
    return {
        extra: {_requirement_name(r) for r in reqs if not r.startswith("diffusers-memctl")}
        for extra, reqs in _project()["optional-dependencies"].items()
    }


def _guard_messages(tree: ast.AST) -> dict[int, str]:
    """Map the id of every import node inside an ImportError-catching ``try`` to the text of its handlers."""
    guarded = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        handlers = [
            h
            for h in node.handlers
            if h.type is not None
            and any(
                isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in ast.walk(h.type)
            )
        ]
        if not handlers:
            continue
        text = " ".join(ast.unparse(h) for h in handlers)
        for stmt in node.body:
            for inner in ast.walk(stmt):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    guarded[id(inner)] = text
    return guarded


def _third_party_imports():
    stdlib = set(sys.stdlib_module_names)
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        guarded = _guard_messages(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top in ("diffusers_memctl", "__future__"):
                    continue
                dist = DISTRIBUTION_OF.get(top, top).lower().replace("_", "-")
                yield path.relative_to(ROOT), node.lineno, dist, guarded.get(id(node))


def test_every_import_is_declared_or_guarded_with_the_extra_named():
    core, extras = _core(), _extras()
    problems = []
    for path, line, dist, guard in _third_party_imports():
        if dist in core:
            continue
        providing = sorted(extra for extra, dists in extras.items() if dist in dists)
        if not providing:
            problems.append(f"{path}:{line}: {dist} is declared nowhere in pyproject.toml")
        elif guard is None:
            problems.append(f"{path}:{line}: {dist} (extra {providing}) is imported without an ImportError guard")
        elif not any(f"diffusers-memctl[{extra}]" in guard for extra in providing):
            problems.append(
                f"{path}:{line}: the guard of {dist} does not name pip install 'diffusers-memctl[{providing[0]}]'"
            )
    assert not problems, "\n".join(problems)


def test_the_walk_sees_the_package_imports():
    # Guards the test above against walking nothing: the core imports must be found.
    found = {dist for _, _, dist, _ in _third_party_imports()}
    assert {"torch", "diffusers", "accelerate", "numpy", "statsmodels", "matplotlib"} <= found


def test_no_declared_dependency_goes_unused():
    # Direct dependencies nothing imports are dropped; tensorboard stays (accelerate's default tracker needs it).
    imported = {dist for _, _, dist, _ in _third_party_imports()}
    runtime_only = {"tensorboard"}
    unused = sorted(_core() - imported - runtime_only)
    assert not unused, f"declared but never imported: {unused}"


def test_license_is_an_spdx_expression():
    assert _project()["license"] == "Apache-2.0"


@pytest.mark.slow
def test_wheel_builds_without_setuptools_warnings(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "Package would be ignored" not in output
    assert "SetuptoolsDeprecationWarning" not in output
    assert list(tmp_path.glob("diffusers_memctl-*.whl"))


def test_tests_without_shared_data_skip_with_one_line_reason(tmp_path):
    # A clone without ../shared beside it: every test that needs the real files skips and says why, in one line.
    from conftest import shared_data_dir

    with pytest.raises(pytest.skip.Exception) as skipped:
        shared_data_dir(tmp_path / "absent")
    reason = str(skipped.value)
    assert "../shared/data" in reason and str(tmp_path / "absent") in reason and "\n" not in reason
    assert shared_data_dir(tmp_path) == tmp_path
