"""What an install of imaging-sync puts on disk: size and package count of fresh virtual environments.

    .venv/bin/python bench/install_size.py [--before REV]

Builds, each in a fresh venv under a temporary directory:

* ``production``: as ``infra/Dockerfile`` builds ``/opt/venv`` (no pip inside,
  ``requirements/production.txt`` with ``--require-hashes --no-deps``, then our wheel);
* ``pip install .``: the base install as a newcomer makes it (unpinned, with pip in the venv);
* ``pip install '.[demo]'``: the quick start's first command;
* with ``--before REV``: ``pip install .`` of that commit (``git archive``), for the comparison.

Prints MB on disk (``du``, bytecode included, as installed) and distributions
(``importlib.metadata``, pip and setuptools included where present). Timings
are not the point: pip's cache makes them meaningless.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet", "--disable-pip-version-check", *args],
                   check=True, timeout=1800, stderr=subprocess.DEVNULL)


def _measure(venv: Path) -> tuple[float, int, list[str]]:
    size = int(subprocess.run(["du", "-sk", str(venv)], capture_output=True, text=True, check=True).stdout.split()[0]) / 1024
    listed = subprocess.run([str(venv / "bin" / "python"), "-I", "-c",
                             "import importlib.metadata as m, json; print(json.dumps(sorted(d.metadata['Name'] for d in m.distributions())))"],
                            capture_output=True, text=True, check=True)
    names = json.loads(listed.stdout)
    return size, len(names), names


def _source(rev: str | None, scratch: Path) -> Path:
    """A copy of the tree at ``rev``; this checkout when None."""
    if rev is None:
        return REPO
    target = scratch / f"src-{rev}"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="also measure `pip install .` of this commit")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        # Built from a copy, so the checkout gets no build/ or *.egg-info.
        here = scratch / "src-here"
        subprocess.run(["cp", "-r", str(REPO), str(here)], check=True)
        subprocess.run(["rm", "-rf", str(here / ".venv"), str(here / "var"), str(here / "bench" / ".s3rver")], check=True)

        venv = scratch / "production"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        _pip(venv, "--no-deps", "--require-hashes", "-r", str(here / "requirements" / "production.txt"))
        _pip(venv, "--no-deps", str(here))
        rows.append(("production (lock, as the image)", *_measure(venv)))

        for label, target in (("pip install .", str(here)), ("pip install '.[demo]'", f"{here}[demo]")):
            venv = scratch / label.replace(" ", "_").replace("'", "")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            _pip(venv, target)
            rows.append((label, *_measure(venv)))

        if args.before:
            venv = scratch / "before"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            _pip(venv, str(_source(args.before, scratch)))
            rows.append((f"pip install . at {args.before}", *_measure(venv)))

    print(f"{'install':<36} {'MB':>7} {'packages':>9}")
    for label, size, count, _ in rows:
        print(f"{label:<36} {size:7.0f} {count:9d}")
    if args.before:
        before = rows[-1]
        print(f"\nproduction ÷ before: {rows[0][1] / before[1]:.2f} of the size, {rows[0][2]} of {before[2]} packages")
        print("left out of production: " + ", ".join(sorted(set(before[3]) - set(rows[0][3]), key=str.lower)))


if __name__ == "__main__":
    main()
