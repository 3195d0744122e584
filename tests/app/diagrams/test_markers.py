"""Generated parts are replaced between their markers and nowhere else; a missing or orphaned marker is named."""

from __future__ import annotations

import pytest

from app.diagrams.markers import block, fill, names
from imaging_sync.errors import ValidationError

DOCUMENT = "\n".join([
    "# Title",
    "",
    "Hand-written before.",
    "",
    block("first", "old first"),
    "",
    "Hand-written between, with <!-- an ordinary comment -->.",
    "",
    block("second", "old second\nover two lines"),
    "",
    "Hand-written after.",
    "",
])


def test_fill_replaces_each_part_and_keeps_every_hand_written_line() -> None:
    filled = fill(DOCUMENT, {"first": "new first", "second": "```mermaid\nflowchart LR\n  a --> b\n```"})

    assert "old first" not in filled and "old second" not in filled
    assert block("first", "new first") in filled
    assert block("second", "```mermaid\nflowchart LR\n  a --> b\n```") in filled
    for line in ("# Title", "Hand-written before.", "Hand-written between, with <!-- an ordinary comment -->.", "Hand-written after."):
        assert line in filled.splitlines()
    assert filled.endswith("Hand-written after.\n")


def test_filling_twice_changes_nothing_the_second_time() -> None:
    parts = {"first": "a\n\nb", "second": "c"}
    once = fill(DOCUMENT, parts)
    assert fill(once, parts) == once


def test_names_lists_the_parts_in_document_order() -> None:
    assert names(DOCUMENT) == ["first", "second"]


def test_a_part_without_its_markers_is_an_error_naming_it() -> None:
    with pytest.raises(ValidationError, match="no markers for generated part.*third"):
        fill(DOCUMENT, {"first": "", "second": "", "third": ""}, document="docs/x.md")


def test_a_marked_part_with_no_generator_is_an_error_naming_it() -> None:
    with pytest.raises(ValidationError, match="second have no generator"):
        fill(DOCUMENT, {"first": ""}, document="docs/x.md")


def test_an_unclosed_part_is_an_error_not_a_silent_skip() -> None:
    broken = DOCUMENT.replace("<!-- end generated: second -->", "")
    with pytest.raises(ValidationError, match="second have no matching"):
        fill(broken, {"first": "", "second": ""}, document="docs/x.md")
