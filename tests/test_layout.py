"""The layout's import rules (``app/layout.py``, README: "What is here"), checked against every module.

The rule itself lives in ``app.layout`` so that the process map
(``docs/processes.md``) draws the very rule these tests enforce. Every import
counts, at module level or inside a function.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.layout import OURS, allowed, imported_packages, modules

REPO = Path(__file__).parents[1]


@pytest.mark.parametrize("package", OURS)
def test_each_package_imports_only_what_the_layout_allows(package: str) -> None:
    wrong = []
    for owner, path in modules(REPO):
        if owner != package:
            continue
        relative = str(path.relative_to(REPO))
        wrong += [f"{relative} imports {other}" for other in sorted(imported_packages(path) - allowed(package, relative))]
    assert not wrong, "imports against the layout (README, 'What is here'):\n" + "\n".join(wrong)


def test_nothing_imports_the_outermost_package() -> None:
    importers = [str(path.relative_to(REPO)) for owner, path in modules(REPO) if owner != "app" and "app" in imported_packages(path)]
    assert not importers


def test_the_layout_in_the_readme_names_every_package() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## What is here", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{package}/`" in section for package in OURS), section


def test_the_rules_catch_an_edge_importing_another_edge(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from dicom.server import DicomServer\n    import jobs.app\n")
    assert imported_packages(sample) == {"dicom", "jobs"}


def test_only_the_demo_may_import_the_tools() -> None:
    assert "devtools" in allowed("app", "app/demo.py")
    assert "devtools" not in allowed("app", "app/cli.py")
    assert allowed("api", "api/app.py") == {"api", "imaging_sync", "storage"}
