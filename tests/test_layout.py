"""The layout's import rules, read from the code itself (README: "What is here").

Dependencies point inward: the core (``imaging_sync``) imports no other
package of ours; ``storage`` imports the core; the edges (``api``, ``dicom``,
``jobs``) import the core and ``storage``, never each other; ``app``, the
outermost package, may import everything and nothing imports it; ``devtools``
(simulator, data generator, test helpers) is imported by no product module but
the demo, itself a tool. Every import counts, at module level or inside a
function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
OURS = ("imaging_sync", "storage", "api", "dicom", "jobs", "app", "devtools")
# package -> the packages of ours it may import (besides itself)
ALLOWED = {
    "imaging_sync": set(),
    "storage": {"imaging_sync"},
    "api": {"imaging_sync", "storage"},
    "dicom": {"imaging_sync", "storage"},
    "jobs": {"imaging_sync", "storage"},
    "app": {"imaging_sync", "storage", "api", "dicom", "jobs"},
    "devtools": {"imaging_sync", "storage"},
}
# The one product module that may use the tools: the demo is a tool itself.
MAY_IMPORT_DEVTOOLS = {"app/demo.py"}


def _imports(path: Path) -> set[str]:
    """The top-level packages of ours that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names if name.split(".")[0] in OURS}
    return found


def _modules() -> list[tuple[str, Path]]:
    return [(package, path) for package in OURS for path in sorted((REPO / package).rglob("*.py"))]


@pytest.mark.parametrize("package", OURS)
def test_each_package_imports_only_what_the_layout_allows(package: str) -> None:
    wrong = []
    for owner, path in _modules():
        if owner != package:
            continue
        relative = str(path.relative_to(REPO))
        allowed = ALLOWED[package] | {package} | ({"devtools"} if relative in MAY_IMPORT_DEVTOOLS else set())
        wrong += [f"{relative} imports {other}" for other in sorted(_imports(path) - allowed)]
    assert not wrong, "imports against the layout (README, 'What is here'):\n" + "\n".join(wrong)


def test_nothing_imports_the_outermost_package() -> None:
    importers = [str(path.relative_to(REPO)) for owner, path in _modules() if owner != "app" and "app" in _imports(path)]
    assert not importers


def test_the_layout_in_the_readme_names_every_package() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## What is here", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{package}/`" in section for package in OURS), section


def test_the_rules_catch_an_edge_importing_another_edge(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from dicom.server import DicomServer\n    import jobs.app\n")
    assert _imports(sample) == {"dicom", "jobs"}
