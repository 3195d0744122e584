"""The run and outbox statuses: one enum each, every member reachable, and the words every edge shows unchanged."""

from __future__ import annotations

import datetime as dt
import enum
import json
import pkgutil
import re
import typing
from typing import Any

import msgspec
import pytest
from sqlalchemy import Engine, select

from devtools.factories import simulator_partner
from imaging_sync.catalog.operations import RUN_STATUSES
from imaging_sync.config import DatabaseConfig, Settings
from imaging_sync.db.models import OutboxEvent, SyncRun, table_of
from imaging_sync.ids import new_id
from imaging_sync.outbox import relay
from imaging_sync.outbox.events import add_study_events
from imaging_sync.statuses import OPEN_EVENT_STATUSES, OUTBOX_TRANSITIONS, RUN_TRANSITIONS, OutboxEventStatus, RunStatus, Transition
from imaging_sync.sync.runner import SyncRunner

TABLES: list[tuple[type[enum.StrEnum], tuple[Transition[Any], ...]]] = [(RunStatus, RUN_TRANSITIONS), (OutboxEventStatus, OUTBOX_TRANSITIONS)]
BY_NAME = pytest.mark.parametrize(("states", "transitions"), TABLES, ids=lambda value: getattr(value, "__name__", ""))


@BY_NAME
def test_every_status_is_reached_by_a_transition_and_left_by_one(states: type[enum.StrEnum], transitions: tuple[Transition[Any], ...]) -> None:
    """No orphan: a status nothing writes, or one a record never leaves (even the prune), is a table that lies."""
    reached = {move.target for move in transitions}
    left = {move.source for move in transitions}
    assert [member.value for member in states if member not in reached] == []
    assert [member.value for member in states if member not in left] == []


@BY_NAME
def test_every_transition_names_its_statuses_and_a_function_that_exists(states: type[enum.StrEnum], transitions: tuple[Transition[Any], ...]) -> None:
    for move in transitions:
        assert move.source is None or isinstance(move.source, states), move
        assert move.target is None or isinstance(move.target, states), move
        assert callable(pkgutil.resolve_name(move.code)), move.code
        assert move.label and move.cause.endswith("."), move


@BY_NAME
def test_no_transition_is_declared_twice(states: type[enum.StrEnum], transitions: tuple[Transition[Any], ...]) -> None:
    pairs = [(move.source, move.target) for move in transitions]
    assert len(pairs) == len(set(pairs))


def test_a_status_is_its_word_wherever_it_is_written() -> None:
    """JSON (API, task results), msgspec (API bodies), f-strings and logs (CLI, summaries) all see the plain word."""
    assert json.dumps({"status": RunStatus.SUCCEEDED}) == '{"status": "succeeded"}'
    assert msgspec.json.encode(OutboxEventStatus.PENDING) == b'"pending"'
    assert f"{RunStatus.SKIPPED} / {OutboxEventStatus.DONE}" == "skipped / done"
    assert "%s" % RunStatus.ABANDONED == "abandoned"  # noqa: UP031  (what logging does)


def test_the_run_statuses_keep_their_words_and_order() -> None:
    """The CLI's choices and the API's enum list them in this order; the database holds these words."""
    assert [status.value for status in RunStatus] == ["queued", "running", "succeeded", "failed", "skipped", "abandoned"]
    assert [status.value for status in OutboxEventStatus] == ["pending", "processing", "done", "failed"]


def test_the_catalog_run_statuses_are_the_enum_values_as_plain_strings() -> None:
    """Plain ``str``: click.Choice would offer an enum member's *name* (QUEUED)."""
    assert RUN_STATUSES == tuple(status.value for status in RunStatus)
    assert {type(status) for status in RUN_STATUSES} == {str}


def test_the_cli_status_filter_offers_the_run_statuses() -> None:
    from app.cli import runs_list

    (option,) = [param for param in runs_list.params if param.name == "status"]
    assert tuple(option.type.choices) == RUN_STATUSES  # type: ignore[attr-defined]


def test_the_api_status_filter_and_schema_name_every_run_status() -> None:
    """The API spells the statuses out (an enum would change its OpenAPI document): they must stay the enum's."""
    from api.operations import controllers, schemas

    assert typing.get_args(controllers.RunStatus) == RUN_STATUSES
    description = typing.get_type_hints(schemas.SyncRun, include_extras=True)["status"].__metadata__[0].description
    assert [choice.split()[0] for choice in description.split("|")] == list(RUN_STATUSES)


def test_the_index_of_open_events_covers_exactly_the_open_statuses() -> None:
    """The relay claims from ``ix_outbox_event_open``; its WHERE clause must say what OPEN_EVENT_STATUSES says."""
    (index,) = [index for index in OutboxEvent.__table__.indexes if index.name == "ix_outbox_event_open"]  # type: ignore[attr-defined]
    expected = "status IN (" + ", ".join(f"'{status}'" for status in OPEN_EVENT_STATUSES) + ")"
    assert str(index.dialect_options["postgresql"]["where"]) == expected
    assert str(index.dialect_options["sqlite"]["where"]) == expected


def test_the_relays_claim_on_postgresql_names_the_open_statuses_as_literals() -> None:
    quoted = set(re.findall(r"'([a-z]+)'", relay._CLAIM_PG.text))
    assert quoted == {OutboxEventStatus.PENDING.value, OutboxEventStatus.PROCESSING.value}
    assert "IN ('pending', 'processing')" in relay._CLAIM_PG.text  # as the partial index's predicate, so the planner uses it


def test_runs_and_events_are_stored_as_their_words(engine: Engine) -> None:
    """SQLite and PostgreSQL (including the COPY that writes outbox rows) store the value, not the member's name."""
    settings = Settings(database=DatabaseConfig(url=engine.url.render_as_string(hide_password=False)), partners={"b": simulator_partner("b", "http://127.0.0.1:9")})
    runner = SyncRunner(engine, settings)
    run_id = runner.record_queued_run("b", trigger="test", full=False)
    runs, events = table_of(SyncRun), table_of(OutboxEvent)
    with engine.connect() as conn:
        assert conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar_one() == "queued"
    runner.fail_queued_run(run_id, "the broker said no")
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        add_study_events(conn, "b", {new_id(): "study.created"}, now)
    with engine.connect() as conn:
        stored = [conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar_one(), conn.execute(select(events.c.status)).scalar_one()]
    assert stored == ["failed", "pending"] and {type(word) for word in stored} == {str}  # read back as the words, never "FAILED"
    assert relay.status(engine, recent=0).counts == {"pending": 1, "processing": 0, "done": 0, "failed": 0}


def test_a_sync_tasks_result_carries_the_word_not_the_member() -> None:
    """Celery logs a task's return value by its repr: ``'succeeded'``, as before the enum, not ``<RunStatus.SUCCEEDED: …>``."""
    from imaging_sync.sync.runner import RunResult
    from jobs.work import run_summary

    summary = run_summary(RunResult(run_id=new_id(), partner="b", status=RunStatus.SUCCEEDED))
    assert repr(summary["status"]) == "'succeeded'"
