"""The lock agrees with pyproject.toml, and every hashed export with the lock; a planted disagreement fails."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from devtools import lock

REPO = Path(__file__).resolve().parents[2]


def test_the_lock_matches_pyproject_and_every_export_matches_the_lock() -> None:
    before = {path: (REPO / path).read_bytes() for path in lock.EXPORTS}
    lock.check()
    assert {path: (REPO / path).read_bytes() for path in lock.EXPORTS} == before, "the check changes nothing"


def test_every_pin_of_every_export_carries_a_hash() -> None:
    for path in lock.EXPORTS:
        text = (REPO / path).read_text(encoding="utf-8")
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        assert entries, path
        for entry in entries:
            assert re.match(r"^[A-Za-z0-9_.\-]+==\S+", entry), f"{path}: an unpinned requirement: {entry[:80]}"
            assert "--hash=sha256:" in entry, f"{path}: no hash for {entry.split()[0]}"


def _copy(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "requirements", tmp_path / "requirements")
    return tmp_path


def test_a_dependency_added_to_pyproject_but_not_locked_fails_the_check(tmp_path: Path) -> None:
    repo = _copy(tmp_path)
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text(encoding="utf-8").replace('    "click>=8.1",\n', '    "click>=8.1",\n    "attrs>=20",\n', 1), encoding="utf-8")
    with pytest.raises(lock.LockError, match="uv.lock does not match pyproject.toml"):
        lock.check(repo)


def test_an_export_edited_by_hand_fails_the_check_and_is_left_as_it_was(tmp_path: Path) -> None:
    repo = _copy(tmp_path)
    production = repo / "requirements" / "production.txt"
    edited = re.sub(r"^(alembic)==\S+", r"\1==1.0.0", production.read_text(encoding="utf-8"), count=1, flags=re.M)
    production.write_text(edited, encoding="utf-8")
    with pytest.raises(lock.LockError, match="requirements/production.txt is not what uv.lock gives"):
        lock.check(repo)
    assert production.read_text(encoding="utf-8") == edited
