"""What counts as a change: the mapped content, not the partner's raw JSON (simulator over HTTP, SQLite and PostgreSQL).

Every scenario runs with an outbox sink configured (without one the sync
writes no events at all, and "no event" would prove nothing) and counts the
rows written to the index, its facts and the outbox with triggers
(devtools.row_writes): a row rewritten with the values it had counts too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from devtools.datagen import PARTNER_VOCABULARY, DatasetSpec
from devtools.factories import UNREACHED_WEBHOOK, settings_for, simulator_partner
from devtools.index_state import live_index, stale_facts
from devtools.row_writes import WriteLog, recording_writes
from devtools.simulator import PartnerSimulator, SimulatorConfig
from imaging_sync.config import PartnerConfig
from imaging_sync.db.models import EntityLink, OutboxEvent, Study
from imaging_sync.sync.runner import SyncRunner

WATCHED = ("subject", "subject_name_token", "study", "series", "instance", "instance_location", "entity_link", "outbox_event", "rejected_item")
# The partner's new words for the same DICOM codes ("Computed Tomography" → "Computed Tomography (v2)", "male" → "male (v2)").
RENAMED_VOCABULARY = {field: {f"{term} (v2)": code for term, code in table.items()} for field, table in PARTNER_VOCABULARY.items()}


@pytest.fixture
def sim() -> Iterator[PartnerSimulator]:
    with PartnerSimulator(DatasetSpec(partner="b", studies=30, series_per_study=2, instances_per_series=3), SimulatorConfig(api_key="sim-key")) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def facts_kept(engine: Engine) -> Iterator[None]:
    yield
    assert stale_facts(engine) == []


def runner_for(engine: Engine, partner: PartnerConfig) -> SyncRunner:
    return SyncRunner(engine, settings_for(engine.url.render_as_string(hide_password=False), partner, webhook_url=UNREACHED_WEBHOOK))


def rename_terms(item: dict[str, Any]) -> None:
    """The item as the partner sends it after renaming its vocabulary: same meaning, new words."""

    def renamed(value: str | None) -> str | None:
        return None if value is None else f"{value} (v2)"

    item["subject"]["sex"] = renamed(item["subject"].get("sex"))
    for series in item["series"]:
        series["modality"] = renamed(series["modality"])
        series["body_part_examined"] = renamed(series.get("body_part_examined"))


def events(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [(row.event_type, row.payload["study_instance_uid"]) for row in conn.execute(select(OutboxEvent).order_by(OutboxEvent.created_at, OutboxEvent.id))]


def non_study_links(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {repr(tuple(row)) for row in conn.execute(select(EntityLink.__table__).where(EntityLink.entity_type != "study"))}


@pytest.fixture
def renamed(engine: Engine, sim: PartnerSimulator) -> Iterator[tuple[SyncRunner, WriteLog]]:
    """The partner synced once, then renamed its vocabulary (its configuration's table updated to match) and synced again."""
    assert runner_for(engine, simulator_partner("b", sim.base_url)).sync("b").ok
    for study_id in sim.dataset.live_study_ids():
        sim.dataset.update_study(study_id, rename_terms)
    runner = runner_for(engine, simulator_partner("b", sim.base_url, vocabulary=RENAMED_VOCABULARY))
    with recording_writes(engine, WATCHED) as writes:
        yield runner, writes


def test_a_vocabulary_renamed_with_its_table_writes_nothing_and_sends_no_event(engine: Engine, sim: PartnerSimulator, renamed: tuple[SyncRunner, WriteLog]) -> None:
    runner, writes = renamed
    index_before, links_before, events_before = live_index(engine, "b"), non_study_links(engine), events(engine)
    assert len(events_before) == 30  # the first sync's study.created: the sink is configured

    result = runner.sync("b")
    assert result.ok, result.error
    assert (result.counts["fetched"], result.counts["unchanged"], result.counts["updated"], result.counts["created"]) == (30, 30, 0, 0)
    # Only each study link's stored fingerprint moves; no entity row, fact, token or event.
    assert writes.counts() == Counter({("entity_link", "UPDATE"): 30})
    assert events(engine) == events_before
    assert live_index(engine, "b") == index_before
    assert non_study_links(engine) == links_before

    writes.clear()
    again = runner.sync("b", full=True)
    assert again.ok and again.counts["unchanged"] == 30
    assert writes.counts() == Counter()  # the new raw form is now the fast path: not even re-validated


def test_a_real_change_after_the_rename_writes_its_row_and_one_event(engine: Engine, sim: PartnerSimulator, renamed: tuple[SyncRunner, WriteLog]) -> None:
    runner, writes = renamed
    assert runner.sync("b").ok
    changed = sim.dataset.spec.study_id(7)
    uid = sim.dataset.item(changed)["study_instance_uid"]
    sim.dataset.update_study(changed, lambda item: item.update(description="REVISED READ"))
    before = events(engine)
    writes.clear()

    result = runner.sync("b")
    assert result.ok, result.error
    assert (result.counts["updated"], result.counts["created"]) == (1, 0)  # the rest of the overlap window: unchanged
    assert events(engine) == [*before, ("study.updated", uid)]
    # The study row (its description) and its link; its facts and its series are as they were.
    assert writes.counts() == Counter({("study", "UPDATE"): 1, ("entity_link", "UPDATE"): 1, ("outbox_event", "INSERT"): 1})
    with engine.connect() as conn:
        assert conn.execute(select(Study.description).where(Study.study_instance_uid == uid)).scalar_one() == "REVISED READ"


def test_a_changed_series_rewrites_that_series_and_not_its_study_s_unchanged_facts(engine: Engine, sim: PartnerSimulator) -> None:
    runner = runner_for(engine, simulator_partner("b", sim.base_url))
    assert runner.sync("b").ok
    changed = sim.dataset.spec.study_id(3)
    uid = sim.dataset.item(changed)["study_instance_uid"]

    def retitle(item: dict[str, Any]) -> None:
        item["series"][1]["description"] = "RETITLED SERIES"

    sim.dataset.update_study(changed, retitle)
    with recording_writes(engine, WATCHED) as writes:
        result = runner.sync("b")
        assert result.ok and result.counts["updated"] == 1
        # The series row and its link, the study link's fingerprint, one event: the study row's facts did not change.
        assert writes.counts() == Counter({("series", "UPDATE"): 1, ("entity_link", "UPDATE"): 2, ("outbox_event", "INSERT"): 1})
    assert events(engine)[-1] == ("study.updated", uid)


def test_a_mapped_change_of_a_coded_value_updates_the_study_s_facts_too(engine: Engine, sim: PartnerSimulator) -> None:
    runner = runner_for(engine, simulator_partner("b", sim.base_url))
    assert runner.sync("b").ok
    changed = sim.dataset.spec.study_id(5)
    item = sim.dataset.item(changed)
    other = next(term for term, code in PARTNER_VOCABULARY["modality"].items() if term not in {s["modality"] for s in item["series"]})

    def remodal(study: dict[str, Any]) -> None:
        for series in study["series"]:
            series["modality"] = other

    sim.dataset.update_study(changed, remodal)
    with recording_writes(engine, WATCHED) as writes:
        result = runner.sync("b")
        assert result.ok and result.counts["updated"] == 1
        counts = writes.counts()
    assert counts[("series", "UPDATE")] == 2 and counts[("study", "UPDATE")] == 1 and counts[("outbox_event", "INSERT")] == 1
    with engine.connect() as conn:
        modalities = conn.execute(select(Study.modalities).where(Study.study_instance_uid == item["study_instance_uid"])).scalar_one()
        assert conn.execute(select(func.count()).select_from(OutboxEvent)).scalar_one() == 31
    assert modalities == PARTNER_VOCABULARY["modality"][other]
    assert live_index(engine, "b") == sim.dataset.expected_state()


def test_a_file_the_partner_moved_or_dropped_loses_the_dicomweb_header_read_from_it(engine: Engine, sim: PartnerSimulator) -> None:
    """DICOMweb keeps each file's header (instance_header); the sync drops the ones read from a copy that changed or
    went, in the same transaction as the change, and leaves the others."""
    from imaging_sync.catalog import headers
    from imaging_sync.copies import Location
    from imaging_sync.db.models import Instance, InstanceHeader
    from imaging_sync.dicom_header import Header

    runner = runner_for(engine, simulator_partner("b", sim.base_url))
    assert runner.sync("b").ok
    with engine.begin() as conn:
        by_uid = dict(conn.execute(select(Instance.sop_instance_uid, Instance.id)).all())
        for instance_id in by_uid.values():
            headers.store(conn, instance_id, Location("b", "b-dicom", "k"), "etag", 10, Header("1.2.840.10008.1.2.1", {}, {}, None))
    changed = sim.dataset.spec.study_id(4)
    item = sim.dataset.item(changed)
    moved = item["series"][0]["instances"][0]["sop_instance_uid"]
    dropped = item["series"][1]["instances"][-1]["sop_instance_uid"]

    def move_and_drop(study: dict[str, Any]) -> None:
        first = study["series"][0]["instances"][0]
        first["location"] = first["location"] + ".v2"  # the partner rewrote the file under a new key
        study["series"][1]["instances"].pop()

    sim.dataset.update_study(changed, move_and_drop)
    assert runner.sync("b").ok
    with engine.connect() as conn:
        kept = set(conn.execute(select(InstanceHeader.instance_id)).scalars())
    assert by_uid[moved] not in kept and by_uid[dropped] not in kept
    assert kept == set(by_uid.values()) - {by_uid[moved], by_uid[dropped]}
