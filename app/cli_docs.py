"""``imaging-sync docs …``: the generated parts of ``docs/`` (the pictures drawn from the code).

Run ``imaging-sync docs generate`` after changing a table, a status, a
process or the layout; ``--check`` is what the tests and a pre-commit hook
run: it writes nothing and exits 1 naming each document that is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_STALE = 1


@click.group("docs")
def docs() -> None:
    """Documentation generated from the code (data model, sync flow, process map)."""


@docs.command("generate")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a document's generated parts differ from the code's.")
@click.option("--root", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="The checkout whose docs/ to write (default: the one this package runs from, else the working directory).")
def docs_generate(check: bool, root: Path | None) -> None:
    """Redraw the generated parts of docs/ (between their markers) from the code."""
    from app.diagrams import documents  # here, not at the top: the process map reads this command line itself

    root = root or documents.checkout_root()
    outcomes = documents.generate(root, write=not check)
    for outcome in outcomes:
        if not outcome.changed:
            click.echo(f"{outcome.path}: up to date")
        elif check:
            click.echo(f"{outcome.path}: out of date; run `{documents.COMMAND}`", err=True)
        else:
            click.echo(f"{outcome.path}: written")
    if check and any(outcome.changed for outcome in outcomes):
        sys.exit(EXIT_STALE)
