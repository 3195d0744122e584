"""The layout's import rule: which package of ours may import which (README: "What is here").

Dependencies point inward: the core (``imaging_sync``) imports no other
package of ours; ``storage`` imports the core; the edges (``api``, ``dicom``,
``jobs``) import the core and ``storage``, never each other; ``app``, the
outermost package, may import everything and nothing imports it; ``devtools``
(simulator, data generator, test helpers) is imported by no product module but
the demo, itself a tool. Every import counts, at module level or inside a
function.

The rule lives here, in the outermost package, because two readers need it:
``tests/test_layout.py`` enforces it over every module, and the process map
(``app.diagrams.processes``, ``docs/processes.md``) draws it. One rule, so the
picture cannot show a layout the test does not enforce.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

# The directory holding our packages: the checkout, or site-packages for an installed copy.
ROOT = Path(__file__).resolve().parents[1]

OURS = ("imaging_sync", "storage", "api", "dicom", "jobs", "app", "devtools")

# package -> the packages of ours it may import (besides itself)
ALLOWED: dict[str, frozenset[str]] = {
    "imaging_sync": frozenset(),
    "storage": frozenset({"imaging_sync"}),
    "api": frozenset({"imaging_sync", "storage"}),
    "dicom": frozenset({"imaging_sync", "storage"}),
    "jobs": frozenset({"imaging_sync", "storage"}),
    "app": frozenset({"imaging_sync", "storage", "api", "dicom", "jobs"}),
    "devtools": frozenset({"imaging_sync", "storage"}),
}

# The one product module that may use the tools: the demo is a tool itself.
MAY_IMPORT_DEVTOOLS = frozenset({"app/demo.py"})

# What each package is in the layout, in the README's words (the picture groups them so).
ROLES = {
    "imaging_sync": "core",
    "storage": "storage",
    "api": "edge",
    "dicom": "edge",
    "jobs": "edge",
    "app": "outermost",
    "devtools": "tools",
}


def allowed(package: str, relative: str) -> frozenset[str]:
    """The packages of ours the module at ``relative`` (``"app/demo.py"``), in ``package``, may import: its own included."""
    extra = {"devtools"} if relative in MAY_IMPORT_DEVTOOLS else set()
    return ALLOWED[package] | {package} | extra


def imported_packages_in(tree: ast.AST) -> set[str]:
    """The top-level packages of ours imported anywhere under ``tree`` (a module, or one function of it)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names if name.split(".")[0] in OURS}
    return found


def imported_packages(path: Path) -> set[str]:
    """The top-level packages of ours that the file at ``path`` imports, anywhere in the file."""
    return imported_packages_in(ast.parse(path.read_text(encoding="utf-8")))


def modules(root: Path = ROOT) -> Iterator[tuple[str, Path]]:
    """``(package, path)`` of every module of ours under ``root``, package by package, paths sorted."""
    for package in OURS:
        yield from ((package, path) for path in sorted((root / package).rglob("*.py")))

