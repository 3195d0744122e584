"""The pull sync against the partner simulator over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text, update

from devtools.datagen import DatasetSpec
from devtools.factories import settings_for, simulator_partner
from devtools.index_state import live_index, stale_facts
from devtools.simulator import PartnerSimulator, SimulatorConfig
from imaging_sync.catalog.studies import StudyQuery, search_studies
from imaging_sync.config import PartnerConfig, RetryPolicy
from imaging_sync.db.models import Base, EntityLink, Instance, InstanceLocation, PartnerState, RejectedItem, Series, Study, Subject, SubjectNameToken, SyncRun
from imaging_sync.sync.runner import SyncRunner

StartSimulator = Callable[..., PartnerSimulator]


@pytest.fixture
def start_simulator() -> Iterator[StartSimulator]:
    started: list[PartnerSimulator] = []

    def start(partner: str = "b", studies: int = 40, series: int = 2, instances: int = 3, **spec: Any) -> PartnerSimulator:
        config = spec.pop("config", SimulatorConfig(api_key="sim-key"))
        sim = PartnerSimulator(DatasetSpec(partner=partner, studies=studies, series_per_study=series, instances_per_series=instances, **spec), config)
        sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture(autouse=True)
def facts_kept(engine: Engine) -> Iterator[None]:
    """After every scenario here, each study's and series' stored facts match their rows (catalog.facts)."""
    yield
    assert stale_facts(engine) == []


def runner_for(engine: Engine, *partners: PartnerConfig) -> SyncRunner:
    return SyncRunner(engine, settings_for(str(engine.url.render_as_string(hide_password=False)), *partners))


def all_rows(engine: Engine) -> dict[str, set[str]]:
    """Every row of every index table (not runs), to prove a re-run wrote nothing."""
    tables = [m.__table__ for m in (Subject, SubjectNameToken, Study, Series, Instance, EntityLink, InstanceLocation)]
    with engine.connect() as conn:
        return {t.name: {repr(tuple(r)) for r in conn.execute(select(t))} for t in tables}


def token_row_versions(engine: Engine) -> set[tuple[str, Any, str]]:
    """Each ``subject_name_token`` row with its row version (PostgreSQL ``xmin``, SQLite ``rowid``): a row deleted and written again shows."""
    version = "xmin::text" if engine.dialect.name == "postgresql" else "CAST(rowid AS TEXT)"
    with engine.connect() as conn:
        return {tuple(row) for row in conn.execute(text(f"SELECT token, subject_id, {version} FROM subject_name_token"))}  # type: ignore[misc]


def tokens_of(engine: Engine, patient_id: str) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(select(SubjectNameToken.token).join(Subject, Subject.id == SubjectNameToken.subject_id).where(Subject.patient_id == patient_id)).scalars()
        )


def patients_found(engine: Engine, **query: Any) -> set[str]:
    with engine.connect() as conn:
        return {study.subject.patient_id for study in search_studies(conn, StudyQuery(**query), limit=1000).items}


def count(engine: Engine, model: type[Base], *where: Any) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def test_full_sync_of_a_few_thousand_instances_matches_the_partner_exactly(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=250, series=3, instances=4)  # 3,000 instances, Korean names, bare keys
    result = runner_for(engine, simulator_partner("b", sim.base_url)).sync("b")
    assert result.ok, result.error
    assert result.counts["instances"] == 3000 and result.counts["created"] == 250
    assert live_index(engine, "b") == sim.dataset.expected_state()
    assert count(engine, InstanceLocation) == 3000


def test_rerun_with_no_changes_writes_nothing(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=60)
    runner = runner_for(engine, simulator_partner("b", sim.base_url))
    assert runner.sync("b").ok
    before = all_rows(engine)
    again = runner.sync("b", full=True)
    assert again.ok
    assert again.counts["unchanged"] == again.counts["fetched"] == 60
    assert again.counts["created"] == again.counts["updated"] == 0
    assert all_rows(engine) == before


def test_a_changed_study_whose_patient_keeps_the_name_writes_no_token_rows(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=20)
    runner = runner_for(engine, simulator_partner("b", sim.base_url))
    assert runner.sync("b").ok
    before = token_row_versions(engine)
    assert before  # every patient's words are there
    sim.dataset.update_study(sim.dataset.spec.study_id(3), lambda item: item.update(description="REVISED READ"))
    again = runner.sync("b", full=True)
    assert again.ok and again.counts["updated"] == 1
    assert token_row_versions(engine) == before


def test_update_deletion_and_series_removal_propagate(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=30)
    runner = runner_for(engine, simulator_partner("b", sim.base_url))
    assert runner.sync("b").ok
    spec = sim.dataset.spec
    changed, deleted, trimmed = spec.study_id(3), spec.study_id(7), spec.study_id(11)
    sim.dataset.update_study(changed, lambda item: item.update(description="REVISED READ"))
    removed_uid = sim.dataset.item(deleted)["study_instance_uid"]
    sim.dataset.delete_study(deleted)
    dropped = sim.dataset.item(trimmed)["series"][0]
    sim.dataset.remove_series(trimmed, dropped["id"])

    result = runner.sync("b")
    assert result.ok, result.error
    assert (result.counts["updated"], result.counts["deleted"]) == (2, 1)
    assert live_index(engine, "b") == sim.dataset.expected_state()
    with engine.connect() as conn:
        gone = conn.execute(select(Study.deleted_at).where(Study.study_instance_uid == removed_uid)).scalar_one()
        series_gone = conn.execute(select(Series.deleted_at).where(Series.series_instance_uid == dropped["series_instance_uid"])).scalar_one()
    assert gone is not None and series_gone is not None  # soft-deleted, hidden from reads
    dropped_sops = [i["sop_instance_uid"] for i in dropped["instances"]]
    assert count(engine, Instance, Instance.sop_instance_uid.in_(dropped_sops), Instance.deleted_at.is_(None)) == 0
    assert count(engine, InstanceLocation, InstanceLocation.instance_id.in_(select(Instance.id).where(Instance.sop_instance_uid.in_(dropped_sops)))) == 0


def test_a_deleted_study_that_comes_back_is_revived(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=5)
    runner = runner_for(engine, simulator_partner("b", sim.base_url))
    runner.sync("b")
    study_id = sim.dataset.spec.study_id(2)
    original = sim.dataset.item(study_id)
    sim.dataset.delete_study(study_id)
    runner.sync("b")
    sim.dataset.put_study(original)
    assert runner.sync("b").ok
    assert live_index(engine, "b") == sim.dataset.expected_state()


def shared_copy(item: dict[str, Any], partner: str, **changes: Any) -> dict[str, Any]:
    """The same study (same UIDs) as another partner would list it: its own ids and bucket."""
    copy = {**item, "id": f"{partner}-{item['id']}", **changes}
    copy["subject"] = {**item["subject"], "id": f"{partner}-{item['subject']['id']}"}
    copy["series"] = [
        {**s, "id": f"{partner}-{s['id']}", "instances": [{**i, "id": f"{partner}-{i['id']}", "location": f"s3://{partner}-dicom/copy/{i['sop_instance_uid']}.dcm"} for i in s["instances"]]}
        for s in item["series"]
    ]
    return copy


def test_two_partners_holding_one_study_merge_and_one_deletion_keeps_the_other_copy(engine: Engine, start_simulator: StartSimulator) -> None:
    b = start_simulator("b", studies=10)
    c = start_simulator("c", studies=3, seed=99, uid_root="1.2.826.0.1.3680043.10.5678")
    shared = b.dataset.item(b.dataset.spec.study_id(4))
    c.dataset.put_study(shared_copy(shared, "c", description="C SAYS"))
    runner = runner_for(engine, simulator_partner("b", b.base_url, priority=10), simulator_partner("c", c.base_url, priority=5))
    assert all(r.ok for r in runner.sync_all())

    uid = shared["study_instance_uid"]
    assert count(engine, Study, Study.study_instance_uid == uid) == 1
    with engine.connect() as conn:
        study = conn.execute(select(Study).where(Study.study_instance_uid == uid)).one()
        partners = set(conn.execute(select(EntityLink.partner).where(EntityLink.entity_id == study.id)).scalars())
        sop = shared["series"][0]["instances"][0]["sop_instance_uid"]
        buckets = set(conn.execute(select(InstanceLocation.bucket).join(Instance, Instance.id == InstanceLocation.instance_id).where(Instance.sop_instance_uid == sop)).scalars())
    assert study.description == shared["description"] and study.source_partner == "b"  # b has the higher priority
    assert partners == {"b", "c"}
    assert buckets == {"b-dicom", "c-dicom"}  # every partner's copy kept as a location

    b.dataset.delete_study(shared["id"])
    assert runner.sync("b").ok
    with engine.connect() as conn:
        study = conn.execute(select(Study).where(Study.study_instance_uid == uid)).one()
        buckets = set(conn.execute(select(InstanceLocation.bucket).join(Instance, Instance.id == InstanceLocation.instance_id).where(Instance.sop_instance_uid == sop)).scalars())
    assert study.deleted_at is None  # c still has it
    assert (study.description, study.source_partner) == ("C SAYS", "c")  # c's values take over
    assert buckets == {"c-dicom"}

    c.dataset.delete_study(f"c-{shared['id']}")
    assert runner.sync("c").ok
    with engine.connect() as conn:
        assert conn.execute(select(Study.deleted_at).where(Study.study_instance_uid == uid)).scalar_one() is not None


def test_lower_priority_partner_does_not_overwrite_values(engine: Engine, start_simulator: StartSimulator) -> None:
    b = start_simulator("b", studies=3)
    c = start_simulator("c", studies=1, seed=5, uid_root="1.2.826.0.1.3680043.10.77")
    shared = b.dataset.item(b.dataset.spec.study_id(0))
    c.dataset.put_study(shared_copy(shared, "c", description="LOW PRIORITY"))
    runner = runner_for(engine, simulator_partner("b", b.base_url, priority=2), simulator_partner("c", c.base_url, priority=1))
    runner.sync("b")
    runner.sync("c")
    with engine.connect() as conn:
        assert conn.execute(select(Study.description).where(Study.study_instance_uid == shared["study_instance_uid"])).scalar_one() == shared["description"]


def test_transient_failures_are_retried_then_succeed(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=20)
    sim.faults.fail_next(2, status=503)
    sim.faults.rate_limit_next(1, retry_after="0")
    sim.faults.drop_connection_next(1)
    sim.faults.delay_next(1, 1.5)
    retry = RetryPolicy(max_attempts=8, initial_backoff=0.01, max_backoff=0.05, max_total_seconds=20)
    partner = simulator_partner("b", sim.base_url, read_timeout=0.5, retry=retry)
    result = runner_for(engine, partner).sync("b")
    assert result.ok, result.error
    statuses = [r.status for r in sim.requests.for_path("/v1/studies")]
    assert statuses.count(503) == 2 and statuses.count(429) == 1
    assert live_index(engine, "b") == sim.dataset.expected_state()


def test_retries_are_bounded_and_the_run_fails_clearly(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=5)
    sim.faults.fail_next(50, status=500)
    result = runner_for(engine, simulator_partner("b", sim.base_url)).sync("b")
    assert (result.status, result.error_kind) == ("failed", "network")
    assert "giving up after 5 attempts" in (result.error or "")


@pytest.mark.parametrize(("key", "revoked", "kind_text"), [("wrong-key", frozenset(), "401"), ("sim-key", frozenset({"sim-key"}), "403")])
def test_auth_failure_stops_at_once_with_a_clear_error(engine: Engine, start_simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch, key: str, revoked: frozenset[str], kind_text: str) -> None:
    sim = start_simulator(studies=5, config=SimulatorConfig(api_key="sim-key", revoked_keys=revoked))
    monkeypatch.setenv("IMAGING_SYNC_TEST_PARTNER_KEY", key)
    result = runner_for(engine, simulator_partner("b", sim.base_url)).sync("b")
    assert (result.status, result.error_kind) == ("failed", "auth")
    assert kind_text in (result.error or "") and key not in (result.error or "")
    assert len(sim.requests.for_path("/v1/studies")) == 1  # no retry of a permanent error
    with engine.connect() as conn:
        run = conn.execute(select(SyncRun).where(SyncRun.id == result.run_id)).one()
    assert (run.status, run.error_kind) == ("failed", "auth")


def test_bad_items_are_rejected_alone_and_the_rest_of_the_page_lands(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=6)
    template = sim.dataset.item(sim.dataset.spec.study_id(0))

    def bad(sort_id: str, **changes: Any) -> None:
        item = {**template, "id": sort_id, "study_instance_uid": f"1.2.999.{len(sort_id)}.{abs(hash(sort_id)) % 10000}", "series": []}
        item.update(changes)
        sim.dataset.inject_raw(item, sort_id=sort_id)

    bad("bad-uid", study_instance_uid="1.2.03")
    bad("bad-date", study_date="2024-13-01")
    bad("bad-vocab", subject={**template["subject"], "sex": "unknown-gender-word"})
    bad("bad-length", accession_number="X" * 40)
    bad("bad-type", series="not-a-list")
    bad("dup-id")
    bad("dup-id", description="second copy")
    sim.dataset.inject_raw(["not", "an", "object"], sort_id="zz-not-an-object")
    partner = simulator_partner("b", sim.base_url, page_size=500)  # everything in one page

    result = runner_for(engine, partner).sync("b")
    assert result.ok, result.error
    assert result.counts["rejected"] == 8 and result.counts["created"] == 6
    assert live_index(engine, "b") == sim.dataset.expected_state()
    with engine.connect() as conn:
        rejected = {(r.partner_item_id, r.kind): r.reason for r in conn.execute(select(RejectedItem))}
    assert "invalid UID" in rejected[("bad-uid", "validation")]
    assert "study_date" in rejected[("bad-date", "validation")]
    assert "no sex mapping" in rejected[("bad-vocab", "mapping")]
    assert "accession_number" in rejected[("bad-length", "validation")]
    assert "series" in rejected[("bad-type", "validation")]
    assert "more than one item" in rejected[("dup-id", "validation")]
    assert (None, "validation") in rejected


def sync_in_thread(runner: SyncRunner) -> tuple[threading.Thread, list[Any]]:
    """Start a sync of partner b in a thread; its result lands in the returned list."""
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(runner.sync("b")))
    thread.start()
    return thread, results


def test_two_concurrent_syncs_of_one_partner_one_runs_one_refuses(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=20)
    runner = runner_for(engine, simulator_partner("b", sim.base_url, page_size=5))
    gate = sim.faults.block_on_page(2)
    first, results = sync_in_thread(runner)
    assert gate.wait_until_blocked(timeout=10)
    second = runner.sync("b")
    gate.release()
    first.join(timeout=30)
    assert second.status == "skipped" and second.error_kind == "locked"
    assert results and results[0].ok
    with engine.connect() as conn:
        statuses = sorted(conn.execute(select(SyncRun.status)).scalars())
    assert statuses == ["skipped", "succeeded"]


def test_expired_page_token_restarts_from_the_bookmark(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=30)
    runner = runner_for(engine, simulator_partner("b", sim.base_url, page_size=5))
    gate = sim.faults.block_on_page(3)
    worker, results = sync_in_thread(runner)
    assert gate.wait_until_blocked(timeout=10)
    sim.faults.expire_tokens()  # the blocked request carries a token that is now stale
    gate.release()
    worker.join(timeout=30)
    assert results[0].ok, results[0].error
    assert 410 in [r.status for r in sim.requests.for_path("/v1/studies")]
    assert live_index(engine, "b") == sim.dataset.expected_state()


def test_bookmark_and_overlap_window_pick_up_late_commits(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=10)
    runner = runner_for(engine, simulator_partner("b", sim.base_url, overlap_seconds=600))
    assert runner.sync("b").ok
    with engine.connect() as conn:
        bookmark = conn.execute(select(PartnerState.bookmark).where(PartnerState.partner == "b")).scalar_one()
    late = sim.dataset.item(sim.dataset.spec.study_id(9))
    late_stamp = (bookmark - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sim.dataset.put_study({**late, "description": "LATE COMMIT", "updated_at": late_stamp}, keep_updated_at=True)
    result = runner.sync("b")
    assert result.ok and result.counts["updated"] == 1
    assert live_index(engine, "b") == sim.dataset.expected_state()


def test_an_instance_moved_into_a_new_series_keeps_its_identity(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=3, series=1, instances=3)
    runner = runner_for(engine, simulator_partner("b", sim.base_url))
    assert runner.sync("b").ok
    study_id = sim.dataset.spec.study_id(1)
    moved = sim.dataset.item(study_id)["series"][0]["instances"][2]
    with engine.connect() as conn:
        before = conn.execute(select(Instance.id).where(Instance.sop_instance_uid == moved["sop_instance_uid"])).scalar_one()

    def split(item: dict[str, Any]) -> None:
        first = item["series"][0]
        first["instances"] = first["instances"][:2]
        item["series"].append({**first, "id": "b-new-series", "series_instance_uid": first["series_instance_uid"] + ".99", "series_number": 99, "instances": [moved]})

    sim.dataset.update_study(study_id, split)
    assert runner.sync("b").ok
    assert live_index(engine, "b") == sim.dataset.expected_state()
    with engine.connect() as conn:
        after = conn.execute(select(Instance.id, Instance.deleted_at).where(Instance.sop_instance_uid == moved["sop_instance_uid"])).one()
    assert after == (before, None)  # the same row, now under the new series


def test_refreshing_one_study_applies_it_without_moving_the_bookmark(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=8)
    runner = runner_for(engine, simulator_partner("b", sim.base_url))
    assert runner.sync("b").ok
    with engine.connect() as conn:
        bookmark = conn.execute(select(PartnerState.bookmark)).scalar_one()
    target = sim.dataset.spec.study_id(5)
    sim.dataset.update_study(target, lambda item: item.update(description="REFRESHED"))

    result = runner.refresh_study("b", target)
    assert result.ok and result.counts["updated"] == 1
    uid = sim.dataset.item(target)["study_instance_uid"]
    with engine.connect() as conn:
        assert conn.execute(select(Study.description).where(Study.study_instance_uid == uid)).scalar_one() == "REFRESHED"
        assert conn.execute(select(PartnerState.bookmark)).scalar_one() == bookmark

    missing = runner.refresh_study("b", "no-such-study")
    assert (missing.status, missing.error_kind) == ("failed", "not_found")


def test_a_series_moved_to_a_study_refreshed_alone_leaves_the_old_study_s_facts_right(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=3, series=2, instances=2)
    runner = runner_for(engine, simulator_partner("b", sim.base_url))
    assert runner.sync("b").ok
    source, target = sim.dataset.spec.study_id(1), sim.dataset.spec.study_id(2)
    moved = sim.dataset.item(source)["series"][1]
    sim.dataset.update_study(target, lambda item: item["series"].append(moved))  # the partner re-filed it; only the target is re-read

    assert runner.refresh_study("b", target).ok
    uids = {sid: sim.dataset.item(sid)["study_instance_uid"] for sid in (source, target)}
    with engine.connect() as conn:
        counts = dict(conn.execute(select(Study.study_instance_uid, Study.series_count).where(Study.study_instance_uid.in_(uids.values()))).all())
    assert (counts[uids[source]], counts[uids[target]]) == (1, 3)  # the autouse check compares every fact with the rows


def test_a_renamed_patient_is_found_by_the_new_name_in_studies_the_page_did_not_list(engine: Engine, start_simulator: StartSimulator) -> None:
    sim = start_simulator(studies=6, series=1, instances=1, subjects=2)  # patients with several studies
    runner = runner_for(engine, simulator_partner("b", sim.base_url))
    assert runner.sync("b").ok
    patients = [sim.dataset.item(sim.dataset.spec.study_id(i))["subject"]["patient_id"] for i in range(6)]
    patient = max(set(patients), key=patients.count)
    first = sim.dataset.spec.study_id(patients.index(patient))
    old_words = tokens_of(engine, patient)
    sim.dataset.update_study(first, lambda item: item["subject"].update(name="RENAMED^PATIENT"))

    assert runner.refresh_study("b", first).ok  # one study re-read; the patient has others
    with engine.connect() as conn:
        names = conn.execute(
            select(Study.patient_name_search).join(Subject, Subject.id == Study.subject_id).where(Subject.patient_id == patient)
        ).scalars().all()
    assert len(names) == patients.count(patient) > 1 and set(names) == {"renamed^patient"}
    assert tokens_of(engine, patient) == {"renamed", "patient"}  # the old words are gone
    assert patient in patients_found(engine, name="renam pat")
    assert patient not in patients_found(engine, name=" ".join(old_words))


def test_a_patient_handed_over_to_another_partner_takes_that_partner_s_name_words(engine: Engine, start_simulator: StartSimulator) -> None:
    b = start_simulator("b", studies=1)
    c = start_simulator("c", studies=0)  # only the copy below
    shared = b.dataset.item(b.dataset.spec.study_id(0))
    theirs = shared_copy(shared, "c")
    theirs["subject"]["name"] = "ÉMILE^ZOLA"
    c.dataset.put_study(theirs)
    runner = runner_for(engine, simulator_partner("b", b.base_url, priority=10), simulator_partner("c", c.base_url, priority=5))
    assert all(r.ok for r in runner.sync_all())
    patient = shared["subject"]["patient_id"]
    assert "emile" not in tokens_of(engine, patient)  # b's name shows
    with engine.begin() as conn:  # c's link as written before migration 0008: no words, the old folding
        link_id, attrs = conn.execute(
            select(EntityLink.id, EntityLink.attrs).join(Subject, Subject.id == EntityLink.entity_id).where(EntityLink.partner == "c", Subject.patient_id == patient)
        ).one()
        attrs = {k: v for k, v in attrs.items() if k != "patient_name_words"} | {"patient_name_search": "émile^zola"}
        conn.execute(update(EntityLink).where(EntityLink.id == link_id).values(attrs=attrs))

    b.dataset.delete_study(shared["id"])
    assert runner.sync("b").ok
    assert tokens_of(engine, patient) == {"emile", "zola"}  # the autouse check compares the search form and words too
    assert patients_found(engine, name="emile") == {patient}
