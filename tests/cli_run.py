"""The command line run in-process, as a test wants it: its exit code (``main`` ends by ``sys.exit``).

Importable from every test folder: the root conftest puts this folder on ``sys.path``.
"""

from __future__ import annotations

from app.cli import main


def run(*args: str) -> int:
    """``imaging-sync ARGS…`` in this process; the exit code it ended with (0 when it returned)."""
    try:
        main(list(args))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0
