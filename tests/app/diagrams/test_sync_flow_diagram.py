"""docs/sync.md's pictures: the run's sequence names real code, the state diagrams are the enums and their transitions."""

from __future__ import annotations

import enum
import re
from typing import Any

import pytest

from app.diagrams import sync_flow
from app.diagrams.sync_flow import RUN, Block, Note, Step, qualified_name, resolve, sequence_diagram, short_name, state_diagram, steps_table, transitions_table, walk
from imaging_sync.errors import ValidationError
from imaging_sync.outbox.events import EVENT_TYPES
from imaging_sync.statuses import OUTBOX_TRANSITIONS, RUN_TRANSITIONS, OutboxEventStatus, RunStatus, Transition
from imaging_sync.sync.runner import SyncRunner

TABLES: list[tuple[type[enum.StrEnum], tuple[Transition[Any], ...]]] = [(RunStatus, RUN_TRANSITIONS), (OutboxEventStatus, OUTBOX_TRANSITIONS)]
BY_NAME = pytest.mark.parametrize(("states", "transitions"), TABLES, ids=lambda value: getattr(value, "__name__", ""))
CODE = "imaging_sync.sync.runner.SyncRunner._finish_run"  # any function that exists, for the samples


class Light(enum.StrEnum):
    RED = "red"
    GREEN = "green"


def light_moves(states: type[enum.StrEnum]) -> list[Transition[Any]]:
    red, green = states("red"), list(states)[1]
    return [Transition(None, red, "installed", "It is installed.", CODE), Transition(red, green, "go", "Time passes.", CODE), Transition(green, red, "stop", "Time passes.", CODE)]


@BY_NAME
def test_the_state_diagram_draws_every_status_and_every_transition(states: type[enum.StrEnum], transitions: tuple[Transition[Any], ...]) -> None:
    drawn = state_diagram(states, transitions)
    arrows = re.findall(r"^    (\S+) --> (\S+) : (.+)$", drawn, re.MULTILINE)
    assert drawn.startswith("```mermaid\nstateDiagram-v2\n") and drawn.endswith("\n```")
    assert arrows == [("[*]" if m.source is None else m.source.value, "[*]" if m.target is None else m.target.value, m.label) for m in transitions]
    assert {word for source, target, _ in arrows for word in (source, target)} == {"[*]", *(member.value for member in states)}


@BY_NAME
def test_the_transitions_table_says_for_each_move_why_and_which_function(states: type[enum.StrEnum], transitions: tuple[Transition[Any], ...]) -> None:
    table = transitions_table(states, transitions)
    for move in transitions:
        row = next(line for line in table.splitlines() if move.cause in line)
        assert f"`{move.code}`" in row
        assert ("(deleted)" if move.target is None else f"`{move.target.value}`") in row
        assert ("(new record)" if move.source is None else f"`{move.source.value}`") in row


def test_a_renamed_status_changes_the_state_diagram() -> None:
    renamed = enum.StrEnum("Light", {"RED": "red", "GREEN": "go-ahead"})  # type: ignore[misc]
    before, after = state_diagram(Light, light_moves(Light)), state_diagram(renamed, light_moves(renamed))
    assert "red --> green : go" in before and "green" not in after
    assert 'state "go-ahead" as go_ahead' in after and "red --> go_ahead : go" in after  # a word Mermaid cannot take as an id gets one


def test_a_status_in_no_transition_is_refused_with_its_name() -> None:
    added = enum.StrEnum("Light", {"RED": "red", "GREEN": "green", "AMBER": "amber"})  # type: ignore[misc]
    with pytest.raises(ValidationError, match="amber appear"):
        state_diagram(added, light_moves(added))


def test_a_transition_naming_code_that_is_gone_is_refused() -> None:
    moves = [*light_moves(Light)[:-1], Transition(Light.GREEN, Light.RED, "stop", "Time passes.", "imaging_sync.sync.runner.SyncRunner.renamed_away")]
    with pytest.raises(ValidationError, match="renamed_away names no function"):
        state_diagram(Light, moves)


def test_a_transition_naming_another_enums_status_is_refused() -> None:
    with pytest.raises(ValidationError, match="not one of its statuses"):
        state_diagram(Light, [*light_moves(Light), Transition(Light.RED, RunStatus.FAILED, "x", "X.", CODE)])


def test_every_step_of_the_run_is_real_code_named_in_the_diagram() -> None:
    diagram, table = sequence_diagram(), steps_table()
    for entry in walk(RUN):
        assert callable(entry.code)
        assert resolve(qualified_name(entry.code)) is entry.code, f"{qualified_name(entry.code)} does not lead a reader to the step's code"
        assert f"<br/>{short_name(entry.code)}\n" in diagram + "\n"
        assert entry.code.__qualname__ in short_name(entry.code)
        if isinstance(entry, Step):
            assert f"`{qualified_name(entry.code)}`" in table


def test_the_steps_table_numbers_the_messages_as_the_diagram_does() -> None:
    """Mermaid's autonumber counts messages (not notes): row n of the table is the n-th arrow."""
    messages = re.findall(r"^\s+\w+-?->>\w+: (.*)<br/>", sequence_diagram(), re.MULTILINE)
    rows = re.findall(r"^\| (\d+) \| (.*?) \| `", steps_table(), re.MULTILINE)
    assert [int(number) for number, _ in rows] == list(range(1, len(messages) + 1))
    assert [says for _, says in rows] == messages


def test_the_run_follows_the_code_order_of_one_page() -> None:
    """Bookmark read before the listing; the page's rows, rejections and events before the bookmark moves; the run finished last."""
    order = [qualified_name(entry.code).rsplit(".", 1)[-1] for entry in walk(RUN) if isinstance(entry, Step)]
    for earlier, later in [("_start_run", "partner_lock"), ("_bookmark", "list_changed"), ("_record_rejections", "_upsert_entities"),
                           ("_upsert_entities", "add_study_events"), ("add_study_events", "_advance_bookmark"), ("_advance_bookmark", "_add_counts"),
                           ("_add_counts", "_finish_run"), ("_finish_run", "on_run")]:
        assert order.index(earlier) < order.index(later), (earlier, later)


def test_a_sequence_draws_its_blocks_and_replies() -> None:
    sample = (
        Step("A", "B", "ask", SyncRunner.sync),
        Block("alt", (("one way", (Step("B", "A", "answer", SyncRunner.sync, reply=True),)), ("the other", (Note(("A", "B"), "noted", SyncRunner._run),)))),
    )
    drawn = sequence_diagram(sample, {"A": "Asker", "B": "Bee", "C": "unused"})
    assert drawn.splitlines()[1:-1] == [
        "sequenceDiagram",
        "    autonumber",
        "    participant A as Asker",
        "    participant B as Bee",
        "    A->>B: ask<br/>SyncRunner.sync",
        "    alt one way",
        "        B-->>A: answer<br/>SyncRunner.sync",
        "    else the other",
        "        Note over A,B: noted<br/>SyncRunner._run",
        "    end",
    ]


def test_a_step_with_an_undeclared_participant_is_refused() -> None:
    with pytest.raises(ValidationError, match="participant"):
        sequence_diagram((Step("A", "Z", "ask", SyncRunner.sync),), {"A": "Asker"})


def test_the_event_types_table_lists_every_type_the_outbox_accepts() -> None:
    table = sync_flow.event_types_table()
    assert re.findall(r"^\| `([a-z.]+)` \|", table, re.MULTILINE) == list(EVENT_TYPES)


def test_the_parts_are_the_documents_and_are_deterministic() -> None:
    parts = sync_flow.parts()
    assert sorted(parts) == ["outbox-event-types", "outbox-statuses", "outbox-transitions", "run-sequence", "run-statuses", "run-steps", "run-transitions"]
    assert parts == sync_flow.parts()
    assert not any(re.search(r"/(work|home|tmp|usr)/|0x[0-9a-f]{6,}", text) for text in parts.values())
    assert all(";" not in text and "#" not in text.replace("| # |", "") for name, text in parts.items() if name.endswith(("sequence", "statuses")))
