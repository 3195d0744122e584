"""The dependency lock: ``uv.lock`` and the hashed requirement files exported from it.

    python -m devtools.lock           # after `uv lock` (or `uv lock --upgrade-package NAME`): rewrite the exports
    python -m devtools.lock --check   # what CI runs: the lock matches pyproject.toml and every export matches the lock

``uv.lock`` pins every package of every set with its hashes, resolved from
PyPI for every platform; the requirement files are the sets pip installs
with ``--require-hashes --no-deps`` (the image, the base-install test):

* ``requirements/production.txt``: what production runs (the base install);
* ``requirements/dev.txt``: production plus the ``demo``, ``render`` and ``dev`` extras (tests, demo);
* ``requirements/sbom-tool.txt``: the SBOM generator the image build runs, alone.

``--check`` fails when ``pyproject.toml`` asks for something the lock does not
give (``uv lock --locked``) or an export differs from what the lock gives now.
Needs ``uv`` (the ``dev`` extra) on PATH or beside this interpreter.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# file -> the `uv export` arguments that write it (every export: hashed, without our own project)
EXPORTS: dict[str, tuple[str, ...]] = {
    "requirements/production.txt": ("--no-dev",),
    "requirements/dev.txt": ("--no-dev", "--extra", "demo", "--extra", "render", "--extra", "dev"),
    "requirements/sbom-tool.txt": ("--only-group", "sbom"),
}


class LockError(Exception):
    """The lock disagrees with pyproject.toml, or an export with the lock."""


def uv_executable() -> str:
    """``uv`` beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.exists() else shutil.which("uv")
    if found is None:
        raise LockError("uv is not installed: pip install -e '.[dev]'")
    return found


def _uv(*args: str, repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([uv_executable(), *args], cwd=repo, capture_output=True, text=True, timeout=300, check=False)


def exported(path: str, repo: Path = REPO) -> str:
    """The text ``path`` must hold: ``uv export`` of the current lock, never re-resolving."""
    done = _uv("export", "--frozen", "--no-emit-project", "--format", "requirements-txt", *EXPORTS[path], "-o", path, "--quiet", repo=repo)
    if done.returncode != 0:
        raise LockError(f"uv export for {path} failed: {done.stderr.strip()}")
    return (repo / path).read_text(encoding="utf-8")


def write(repo: Path = REPO) -> list[str]:
    """Rewrite every export from the lock; the files written."""
    (repo / "requirements").mkdir(exist_ok=True)
    for path in EXPORTS:
        exported(path, repo)
    return list(EXPORTS)


def check(repo: Path = REPO) -> None:
    """Raise LockError unless the lock satisfies pyproject.toml and each export is what the lock gives."""
    locked = _uv("lock", "--locked", repo=repo)
    if locked.returncode != 0:
        raise LockError(f"uv.lock does not match pyproject.toml (run `uv lock`, then `python -m devtools.lock`):\n{locked.stderr.strip()}")
    for path in EXPORTS:
        committed = (repo / path).read_text(encoding="utf-8") if (repo / path).exists() else ""
        if exported(path, repo) != committed:
            (repo / path).write_text(committed, encoding="utf-8")  # leave the checkout as it was
            raise LockError(f"{path} is not what uv.lock gives: run `python -m devtools.lock`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail unless the lock and its exports are current; change nothing")
    args = parser.parse_args()
    try:
        if args.check:
            check()
            print("lock: uv.lock matches pyproject.toml; " + ", ".join(EXPORTS) + " match uv.lock")
        else:
            print("lock: wrote " + ", ".join(write()))
    except LockError as exc:
        print(f"lock: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
