"""Every committed document's generated parts equal what the code draws today; the command says how to fix it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_run import run

from app.diagrams.documents import COMMAND, DOCUMENTS, checkout_root, generate
from app.diagrams.markers import fill, names

REPO = Path(__file__).parents[3]


@pytest.mark.parametrize("document", sorted(DOCUMENTS))
def test_the_committed_document_matches_what_the_code_draws(document: str) -> None:
    committed = (REPO / document).read_text(encoding="utf-8")
    drawn = fill(committed, DOCUMENTS[document](), document=document)
    assert drawn == committed, f"{document} is out of date with the code: run `{COMMAND}` and commit the result"


@pytest.mark.parametrize("document", sorted(DOCUMENTS))
def test_a_document_has_hand_written_text_outside_its_generated_parts(document: str) -> None:
    text = (REPO / document).read_text(encoding="utf-8")
    assert names(text), document
    outside = text
    for name in names(text):
        start = outside.index(f"<!-- generated: {name} ")
        end = outside.index(f"<!-- end generated: {name} -->") + len(f"<!-- end generated: {name} -->")
        outside = outside[:start] + outside[end:]
    assert outside.startswith("# ") and len(outside.split()) > 60, f"{document}: say why, around the pictures"


def test_the_checkout_found_is_this_one() -> None:
    assert checkout_root() == REPO


def _copy_of_docs(tmp_path: Path) -> Path:
    """A checkout holding only the documents with generated parts (not docs/mermaid-cli's node_modules)."""
    root = tmp_path / "checkout"
    for document in DOCUMENTS:
        (root / document).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / document, root / document)
    return root


def test_check_fails_naming_the_stale_document_and_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _copy_of_docs(tmp_path)
    stale = root / "docs" / "data-model.md"
    first = names(stale.read_text(encoding="utf-8"))[0]
    text = stale.read_text(encoding="utf-8")
    begin = text.index(f"<!-- generated: {first} ")
    stale.write_text(text[: text.index("\n", begin) + 1] + "a column nobody has any more\n" + text[text.index(f"<!-- end generated: {first} -->"):], encoding="utf-8")
    before = stale.read_text(encoding="utf-8")

    assert run("docs", "generate", "--check", "--root", str(root)) == 1

    err = capsys.readouterr().err
    assert f"docs/data-model.md: out of date; run `{COMMAND}`" in err
    assert stale.read_text(encoding="utf-8") == before, "--check writes nothing"


def test_generate_rewrites_only_the_generated_parts_then_check_passes(tmp_path: Path) -> None:
    root = _copy_of_docs(tmp_path)
    document = root / "docs" / "sync.md"
    committed = document.read_text(encoding="utf-8")
    first = names(committed)[0]
    end_marker = f"<!-- end generated: {first} -->"
    document.write_text(committed.replace(end_marker, "stale line\n" + end_marker), encoding="utf-8")

    assert run("docs", "generate", "--root", str(root)) == 0

    assert document.read_text(encoding="utf-8") == committed
    assert run("docs", "generate", "--check", "--root", str(root)) == 0
    assert [outcome.changed for outcome in generate(root, write=False)] == [False] * len(DOCUMENTS)
