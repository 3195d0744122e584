"""Which documents have generated parts, who draws them, and redrawing them all (``imaging-sync docs generate``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from app.diagrams.data_model import parts as data_model_parts
from app.diagrams.markers import COMMAND, fill
from app.diagrams.processes import parts as processes_parts
from app.diagrams.sync_flow import parts as sync_flow_parts

# document (relative to the checkout) -> the function that draws its generated parts
DOCUMENTS: dict[str, Callable[[], Mapping[str, str]]] = {
    "docs/data-model.md": data_model_parts,
    "docs/sync.md": sync_flow_parts,
    "docs/processes.md": processes_parts,
}

__all__ = ["COMMAND", "DOCUMENTS", "Outcome", "checkout_root", "generate"]


@dataclass(frozen=True)
class Outcome:
    """One document: its path and whether its generated parts differed from the code's."""

    path: str
    changed: bool


def checkout_root() -> Path:
    """The checkout this package was installed from (editable installs, the tests), or the working directory."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "docs").is_dir() and (here / "app").is_dir() else Path.cwd()


def generate(root: Path, *, write: bool = True) -> list[Outcome]:
    """Redraw every document's generated parts under ``root``; ``write=False`` only compares."""
    outcomes = []
    for relative, draw in DOCUMENTS.items():
        path = root / relative
        current = path.read_text(encoding="utf-8")
        wanted = fill(current, draw(), document=relative)
        changed = wanted != current
        if changed and write:
            path.write_text(wanted, encoding="utf-8")
        outcomes.append(Outcome(relative, changed))
    return outcomes
