"""Outbox events are written by the sync in the same transaction as the changes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select, text

from devtools.datagen import DatasetSpec
from devtools.factories import UNREACHED_WEBHOOK, settings_for, simulator_partner
from devtools.simulator import PartnerSimulator, SimulatorConfig
from imaging_sync.db.models import OutboxEvent, Study
from imaging_sync.sync.runner import SyncRunner


@pytest.fixture
def sim() -> Iterator[PartnerSimulator]:
    with PartnerSimulator(DatasetSpec(partner="b", studies=12, series_per_study=1, instances_per_series=2), SimulatorConfig(api_key="sim-key")) as simulator:
        yield simulator


def runner_for(engine: Engine, *partners: object, sink: bool = True) -> SyncRunner:
    url = engine.url.render_as_string(hide_password=False)
    return SyncRunner(engine, settings_for(url, *partners, webhook_url=UNREACHED_WEBHOOK if sink else None))  # type: ignore[arg-type]


def events(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(OutboxEvent.event_type, OutboxEvent.payload).order_by(OutboxEvent.id))
        return [(event_type, payload["study_instance_uid"]) for event_type, payload in rows]


def test_each_change_writes_exactly_one_event_and_no_change_writes_none(engine: Engine, sim: PartnerSimulator) -> None:
    runner = runner_for(engine, simulator_partner("b", sim.base_url))
    assert runner.sync("b").ok
    first = events(engine)
    assert Counter(t for t, _ in first) == {"study.created": 12}
    assert runner.sync("b", full=True).ok
    assert events(engine) == first  # nothing changed, nothing told

    spec = sim.dataset.spec
    changed_uid = sim.dataset.item(spec.study_id(2))["study_instance_uid"]
    deleted_uid = sim.dataset.item(spec.study_id(5))["study_instance_uid"]
    sim.dataset.update_study(spec.study_id(2), lambda item: item.update(description="NEW"))
    sim.dataset.delete_study(spec.study_id(5))
    assert runner.sync("b").ok
    assert Counter(events(engine)[len(first):]) == Counter([("study.updated", changed_uid), ("study.deleted", deleted_uid)])


def test_payload_is_compact_and_carries_no_patient_data(engine: Engine, sim: PartnerSimulator) -> None:
    assert runner_for(engine, simulator_partner("b", sim.base_url)).sync("b").ok
    with engine.connect() as conn:
        event = conn.execute(select(OutboxEvent).limit(1)).one()
        study = conn.execute(select(Study).where(Study.id == event.aggregate_id)).one()
    assert set(event.payload) == {"event_id", "type", "study_id", "study_instance_uid", "partner", "occurred_at"}
    assert event.payload["event_id"] == str(event.id) and event.payload["study_id"] == str(study.id)
    assert (event.status, event.attempts, event.aggregate_type) == ("pending", 0, "study")


def test_a_page_that_fails_leaves_neither_changes_nor_events(engine: Engine, sim: PartnerSimulator) -> None:
    # A real database failure in the middle of a page: a trigger refuses one partner's file locations.
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("CREATE FUNCTION refuse_location() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full (test)'; END $$"))
            conn.execute(text("CREATE TRIGGER refuse_location BEFORE INSERT ON instance_location FOR EACH ROW EXECUTE FUNCTION refuse_location()"))
        else:
            conn.execute(text("CREATE TRIGGER refuse_location BEFORE INSERT ON instance_location BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END"))
    try:
        result = runner_for(engine, simulator_partner("b", sim.base_url)).sync("b")
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_location" + (" ON instance_location" if engine.dialect.name == "postgresql" else "")))
            if engine.dialect.name == "postgresql":
                conn.execute(text("DROP FUNCTION refuse_location()"))
    assert (result.status, result.error_kind) == ("failed", "database")
    assert events(engine) == []
    with engine.connect() as conn:
        assert conn.execute(select(Study.id)).first() is None


def test_with_no_sink_configured_the_sync_writes_no_events(engine: Engine, sim: PartnerSimulator) -> None:
    runner = runner_for(engine, simulator_partner("b", sim.base_url), sink=False)
    assert runner.sync("b").ok
    sim.dataset.update_study(sim.dataset.spec.study_id(2), lambda item: item.update(description="NEW"))
    assert runner.sync("b").ok
    assert events(engine) == []  # nobody to tell: nothing queued that would only grow
    with engine.connect() as conn:
        assert conn.execute(select(Study.description).where(Study.description == "NEW")).all()  # the change itself landed
