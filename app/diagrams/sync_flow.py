"""How a sync works (``docs/sync.md``): one run as a sequence, and the statuses of a run and of an outbox event.

The sequence is drawn from :data:`RUN`, a declared list of the steps of one
run in the order the code takes them, each naming the function or method that
does it, the object itself, not its name: renaming or removing one breaks
this module on import, so the picture cannot quietly point at code that is
gone. The diagram prints each step's qualified name, and a numbered table
beside it the module, so a reader goes from a message to the code.

The state diagrams are drawn from the core's own enums and transition tables
(:mod:`imaging_sync.statuses`); a status no transition reaches, or a
transition naming a function that no longer exists, is an error here rather
than a picture that lies.
"""

from __future__ import annotations

import enum
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from imaging_sync.alerts import Alerts
from imaging_sync.catalog import facts
from imaging_sync.errors import ValidationError
from imaging_sync.outbox.events import EVENT_MEANINGS, add_study_events
from imaging_sync.partners.reference_v1 import ReferenceV1Source
from imaging_sync.partners.wire import ItemParser
from imaging_sync.statuses import OUTBOX_TRANSITIONS, RUN_TRANSITIONS, OutboxEventStatus, RunStatus, Transition
from imaging_sync.sync.apply import PageWriter
from imaging_sync.sync.lock import partner_lock
from imaging_sync.sync.queue import SyncQueue
from imaging_sync.sync.runner import SyncRunner

# -- one run, as declared steps -------------------------------------------------------------------

# Who takes part, in the order they stand in the diagram: key -> label.
PARTICIPANTS: dict[str, str] = {
    "T": "Trigger: schedule, CLI or API",
    "R": "SyncRunner",
    "L": "Partner lock",
    "S": "reference-v1 adapter",
    "P": "Partner export API",
    "W": "PageWriter",
    "D": "Database",
    "A": "Alerts",
}


@dataclass(frozen=True)
class Step:
    """One message: ``sender`` asks ``receiver`` (or answers it, ``reply``), done by ``code``."""

    sender: str
    receiver: str
    says: str
    code: Callable[..., Any]
    reply: bool = False


@dataclass(frozen=True)
class Note:
    """Something true of the steps around it, over the participants ``over``, done by ``code``."""

    over: tuple[str, ...]
    says: str
    code: Callable[..., Any]


@dataclass(frozen=True)
class Block:
    """A loop, an optional part or alternatives: ``branches`` are (condition, items); only ``alt`` has several."""

    kind: Literal["loop", "opt", "alt"]
    branches: tuple[tuple[str, tuple[Item, ...]], ...]


Item = Step | Note | Block

RUN: tuple[Item, ...] = (
    Block("opt", (("queued for the workers: REST API, sync --async, the sync_all task", (
        Step("T", "R", "record a queued run", SyncRunner.record_queued_run),
        Step("R", "D", "insert sync_run, status queued", SyncRunner._insert_run),
        Step("T", "T", "send the task to the job queue, with the run id", SyncQueue.queue),
    )),)),
    Step("T", "R", "sync one partner (a worker carries its queued run on)", SyncRunner.sync),
    Step("R", "D", "claim the queued run as running, or insert a running run", SyncRunner._start_run),
    Step("R", "L", "take the partner's lock, never waiting", partner_lock),
    Block("alt", (
        ("another process is syncing the partner", (
            Step("L", "R", "SyncLockedError: the run will end skipped", partner_lock, reply=True),
        )),
        ("the lock is ours until the run ends", (
            Step("R", "D", "mark the partner's dead runs (and long-queued ones) abandoned", SyncRunner._abandon_stale_runs),
            Step("R", "D", "read the bookmark (partner_state)", SyncRunner._bookmark),
            Step("R", "D", "record since = bookmark - overlap (none on a first or full run)", SyncRunner._set_run_since),
            Block("loop", (("each page, in (updated_at, id) order", (
                Step("R", "S", "next page of studies changed since", ReferenceV1Source.list_changed),
                Step("S", "P", "GET /v1/studies with updated_since, page_size, page_token", ReferenceV1Source._get),
                Step("P", "S", "study items, each a full snapshot: subject, series, instances", ReferenceV1Source._get, reply=True),
                Note(("S", "P"), "429, 5xx, timeouts: retried with backoff. 401, 403, a malformed page: the run fails", ReferenceV1Source._get),
                Step("S", "R", "items identified and fingerprinted, malformed or duplicated ones rejected", ItemParser.parse_page, reply=True),
                Note(("R", "D"), "one transaction for the page: all of what follows commits, or none of it", SyncRunner._commit_page),
                Step("R", "W", "apply the page", PageWriter.apply),
                Step("W", "D", "read the fingerprints committed for these studies", PageWriter._study_link_hashes),
                Step("W", "W", "validate and map each changed item (an unchanged one is skipped)", ItemParser._resolve),
                Step("W", "D", "record each rejected item with its reason (the rest of the page goes on)", PageWriter._record_rejections),
                Step("W", "D", "upsert Subject, then Study, Series, Instance", PageWriter._upsert_entities),
                Step("W", "D", "write this partner's links, drop those the snapshot no longer lists", PageWriter._write_links),
                Step("W", "D", "write the instance locations (bucket and key)", PageWriter._write_locations),
                Step("W", "D", "soft-delete what no partner links any more", PageWriter._drop_removed),
                Step("W", "D", "recompute the facts kept on each touched study", facts.refresh),
                Step("W", "D", "add one outbox event per changed study", add_study_events),
                Step("W", "R", "the page's counts and rejections", PageWriter.apply, reply=True),
                Step("R", "D", "advance the bookmark to the page's largest updated_at", SyncRunner._advance_bookmark),
                Step("R", "D", "add the page's counts to the run, then commit", SyncRunner._add_counts),
                Note(("R", "D"), "a deadlock or serialization failure retries the page (sync.max_page_attempts)", SyncRunner._commit_page),
            )),)),
            Note(("R", "P"), "a 410 on a page token restarts the listing from what this run committed", SyncRunner._pull),
        )),
    )),
    Note(("R", "D"), "an error anywhere ends the run failed: the pages committed stay, the next run resumes from the bookmark", SyncRunner._run),
    Step("R", "D", "finish the run: status, error, the partner's last run and last success", SyncRunner._finish_run),
    Step("R", "A", "the result, to open or clear incidents (failures, rejected share)", Alerts.on_run),
    Step("R", "T", "RunResult: status, counts, error", SyncRunner.sync, reply=True),
)


def qualified_name(code: Callable[..., Any]) -> str:
    """``package.module.Class.method`` of a step's code: where a reader finds it."""
    return f"{code.__module__}.{code.__qualname__}"


def short_name(code: Callable[..., Any]) -> str:
    """What the diagram prints: ``Class.method``, or ``module.function`` (``facts.refresh`` says more than ``refresh``)."""
    if "." in code.__qualname__:
        return code.__qualname__
    return f"{code.__module__.rsplit('.', 1)[-1]}.{code.__qualname__}"


def walk(items: Sequence[Item]) -> Iterator[Step | Note]:
    """Every step and note, in the order the diagram shows them."""
    for item in items:
        if isinstance(item, Block):
            for _, inner in item.branches:
                yield from walk(inner)
        else:
            yield item


def sequence_diagram(items: Sequence[Item] = RUN, participants: Mapping[str, str] = PARTICIPANTS) -> str:
    """A Mermaid ``sequenceDiagram`` of ``items``, numbered, each message ending in its code's qualified name."""
    used = {key for entry in walk(items) for key in ((entry.sender, entry.receiver) if isinstance(entry, Step) else entry.over)}
    unknown = sorted(used - set(participants))
    if unknown:
        raise ValidationError("sync_flow.RUN", f"steps name participant(s) {', '.join(unknown)} that PARTICIPANTS does not declare")
    lines = ["sequenceDiagram", "    autonumber"]
    lines += [f"    participant {key} as {label}" for key, label in participants.items() if key in used]
    lines += _sequence_lines(items, 1)
    return _fenced("\n".join(lines))


def _sequence_lines(items: Sequence[Item], depth: int) -> list[str]:
    pad = "    " * depth
    lines: list[str] = []
    for item in items:
        if isinstance(item, Block):
            for index, (condition, inner) in enumerate(item.branches):
                lines.append(f"{pad}{item.kind if index == 0 else 'else'} {condition}")
                lines += _sequence_lines(inner, depth + 1)
            lines.append(f"{pad}end")
        elif isinstance(item, Note):
            lines.append(f"{pad}Note over {','.join(item.over)}: {item.says}<br/>{short_name(item.code)}")
        else:
            arrow = "-->>" if item.reply else "->>"
            lines.append(f"{pad}{item.sender}{arrow}{item.receiver}: {item.says}<br/>{short_name(item.code)}")
    return lines


def steps_table(items: Sequence[Item] = RUN) -> str:
    """The numbered messages of the diagram (Mermaid's ``autonumber`` counts messages, not notes) and where each is."""
    rows = ["| # | what happens | code |", "|---|---|---|"]
    steps = [entry for entry in walk(items) if isinstance(entry, Step)]
    rows += [f"| {number} | {step.says} | `{qualified_name(step.code)}` |" for number, step in enumerate(steps, 1)]
    return "\n".join(rows)


# -- statuses ---------------------------------------------------------------------------------------


def resolve(dotted: str) -> Any:
    """The object a dotted name names (``package.module.Class.method``), or an error naming the transition table."""
    try:
        return pkgutil.resolve_name(dotted)
    except (ImportError, AttributeError, ValueError):
        raise ValidationError("imaging_sync.statuses", f"{dotted} names no function: a transition table points at code that is gone") from None


def check_transitions(states: type[enum.StrEnum], transitions: Sequence[Transition[Any]]) -> None:
    """Every status is reached or left by a transition, every transition names statuses and a function that exist."""
    for move in transitions:
        for end in (move.source, move.target):
            if end is not None and not isinstance(end, states):
                raise ValidationError(states.__name__, f"a transition names {end!r}, which is not one of its statuses")
        if not callable(resolve(move.code)):
            raise ValidationError(states.__name__, f"the transition {move.source} -> {move.target} names {move.code}, which is not a function")
    touched = {end for move in transitions for end in (move.source, move.target)}
    orphans = [member.value for member in states if member not in touched]
    if orphans:
        raise ValidationError(states.__name__, f"status(es) {', '.join(orphans)} appear in no transition: add the moves that reach and leave them")


def state_diagram(states: type[enum.StrEnum], transitions: Sequence[Transition[Any]], *, direction: Literal["TB", "LR"] = "TB") -> str:
    """A Mermaid ``stateDiagram-v2``: ``[*]`` where a record is created or deleted, one arrow per transition."""
    check_transitions(states, transitions)
    lines = ["stateDiagram-v2"] + (["    direction LR"] if direction == "LR" else [])
    # A status that is not a plain word gets an id Mermaid accepts, shown under its own name.
    lines += [f"    state \"{member.value}\" as {_state_id(member)}" for member in states if _state_id(member) != member.value]
    for move in transitions:
        source = "[*]" if move.source is None else _state_id(move.source)
        target = "[*]" if move.target is None else _state_id(move.target)
        lines.append(f"    {source} --> {target} : {move.label}")
    return _fenced("\n".join(lines))


def transitions_table(states: type[enum.StrEnum], transitions: Sequence[Transition[Any]]) -> str:
    """The same transitions with what causes each and the function that writes it."""
    check_transitions(states, transitions)
    rows = ["| from | to | what causes it | written by |", "|---|---|---|---|"]
    # Moves from several statuses for the same reason (the prune) share one row.
    sources: dict[tuple[Any, str, str], list[str]] = {}
    for move in transitions:
        sources.setdefault((move.target, move.cause, move.code), []).append("(new record)" if move.source is None else f"`{move.source.value}`")
    for (target, cause, code), froms in sources.items():
        rows.append(f"| {', '.join(froms)} | {'(deleted)' if target is None else f'`{target.value}`'} | {cause} | `{code}` |")
    return "\n".join(rows)


def event_types_table(meanings: Mapping[str, str] = EVENT_MEANINGS) -> str:
    """The outbox event types the page writer emits, and when."""
    rows = ["| type | written when |", "|---|---|"]
    rows += [f"| `{event_type}` | {meaning} |" for event_type, meaning in meanings.items()]
    return "\n".join(rows)


def _state_id(member: enum.StrEnum) -> str:
    """A Mermaid state id: the status itself with anything but letters, digits and ``_`` turned into ``_``."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in member.value)


def _fenced(body: str) -> str:
    return f"```mermaid\n{body}\n```"


def parts() -> dict[str, str]:
    """The generated parts of docs/sync.md."""
    return {
        "run-sequence": sequence_diagram(),
        "run-steps": steps_table(),
        "run-statuses": state_diagram(RunStatus, RUN_TRANSITIONS),
        "run-transitions": transitions_table(RunStatus, RUN_TRANSITIONS),
        # Left to right: top to bottom, the retry loop's labels land on each other.
        "outbox-statuses": state_diagram(OutboxEventStatus, OUTBOX_TRANSITIONS, direction="LR"),
        "outbox-transitions": transitions_table(OutboxEventStatus, OUTBOX_TRANSITIONS),
        "outbox-event-types": event_types_table(),
    }
