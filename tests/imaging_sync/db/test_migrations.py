"""The migrations build exactly the schema the models describe, on both backends."""

import datetime as dt
import re
import time
import unicodedata
from collections.abc import Callable

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, insert, inspect, select

from devtools.datagen import DatasetSpec
from devtools.factories import TEST_API_KEY, settings_for, simulator_partner
from devtools.index_state import stale_facts
from devtools.simulator import PartnerSimulator, SimulatorConfig
from imaging_sync.catalog.studies import StudyQuery, search_studies
from imaging_sync.db import migrate
from imaging_sync.db.models import Base, Study, Subject, SubjectNameToken
from imaging_sync.ids import new_id
from imaging_sync.sync.runner import SyncRunner


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    assert migrate.is_current(engine)
    with engine.connect() as conn:
        # The audit tables' monthly partitions (0013) are the database's, not the models'.
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": _not_a_partition})
        differences = [d for d in compare_metadata(context, Base.metadata) if not _is_extra_index(d)]
    assert differences == []


def _not_a_partition(name: str | None, type_: str, parent_names: object) -> bool:
    return not (type_ == "table" and name is not None and re.search(r"_(y\d{4}m\d{2}|default)$", name))


def _is_extra_index(difference: object) -> bool:
    """PostgreSQL-only objects made by SQL, not by the models: search indexes (pattern, trigram; 0002), the audit tables'
    BRIN on txid (0011), and the copies of audit_completion's foreign key PostgreSQL keeps for each partition of audit_log (0013)."""
    if not isinstance(difference, tuple):
        return False
    if difference[0] == "remove_fk":
        return any(re.search(r"_(y\d{4}m\d{2}|default)$", element.column.table.name) for element in difference[1].elements)
    return difference[0] == "remove_index" and (difference[1].name.startswith("ix_subject_patient_name_search_") or difference[1].name.endswith("_txid"))


def _sync_from_a_simulator(engine: Engine, spec: DatasetSpec, *edits: Callable[[PartnerSimulator], None]) -> None:
    """Sync partner b from a simulator of ``spec``; each edit changes the partner's data, then another sync follows."""
    with PartnerSimulator(spec, SimulatorConfig(api_key=TEST_API_KEY)) as sim:
        runner = SyncRunner(engine, settings_for(engine.url.render_as_string(hide_password=False), simulator_partner("b", sim.base_url)))
        assert runner.sync("b").ok
        for edit in edits:
            edit(sim)
            assert runner.sync("b").ok


def test_0006_fills_the_facts_of_an_index_synced_before_it(engine: Engine) -> None:
    _sync_from_a_simulator(
        engine, DatasetSpec(partner="b", studies=6, series_per_study=2, instances_per_series=3),
        lambda sim: sim.dataset.update_study(sim.dataset.spec.study_id(1), lambda item: item["series"].pop()),  # a soft-deleted series too
    )
    migrate.downgrade(engine, "0005")
    try:
        with engine.connect() as conn:
            assert "series_count" not in {c["name"] for c in inspect(conn).get_columns("study")}
    finally:
        migrate.upgrade(engine)
    assert stale_facts(engine) == []
    with engine.connect() as conn:
        assert sorted(conn.execute(select(Study.series_count)).scalars()) == [1, 2, 2, 2, 2, 2]


def test_0008_refolds_names_fills_words_and_tokens_of_rows_written_before_it_and_downgrades(engine: Engine) -> None:
    _sync_from_a_simulator(
        engine, DatasetSpec(partner="b", studies=6, series_per_study=1, instances_per_series=1),
        lambda sim: sim.dataset.update_study(sim.dataset.spec.study_id(0), lambda item: item["subject"].update(name="ÉMILE^ZOLA")),
    )
    migrate.downgrade(engine, "0007")
    try:
        with engine.connect() as conn:
            assert "patient_name_words" not in {c["name"] for c in inspect(conn).get_columns("subject")}
            assert "subject_name_token" not in inspect(conn).get_table_names()
            # The 0007 folding is back (NFKC, casefold: accents kept), on the subject and its studies.
            assert set(conn.execute(select(Study.patient_name_search).join(Subject).where(Subject.patient_name == "ÉMILE^ZOLA")).scalars()) == {"émile^zola"}
        with engine.begin() as conn:  # a patient written by the 0007 code, decomposed accents and all
            now = dt.datetime.now(dt.UTC)
            entity = {"source_partner": "b", "source_priority": 0, "created_at": now, "updated_at": now}
            name = unicodedata.normalize("NFD", "José^María")
            subject_id, study_id = new_id(), new_id()
            old_search = unicodedata.normalize("NFKC", name).casefold()
            conn.execute(insert(Subject.__table__).values(id=subject_id, issuer="", patient_id="OLD-1", patient_name=name, patient_name_search=old_search, **entity))
            conn.execute(insert(Study.__table__).values(id=study_id, study_instance_uid="1.2.3.4.5", subject_id=subject_id, patient_name_search="stale", **entity))
    finally:
        migrate.upgrade(engine)
    assert stale_facts(engine) == []  # every subject's search form, words and tokens; every study's copies
    with engine.connect() as conn:
        assert conn.execute(select(Study.patient_name_search, Study.patient_name_words).where(Study.id == study_id)).one() == ("jose^maria", " jose maria")
        assert set(conn.execute(select(SubjectNameToken.token).where(SubjectNameToken.subject_id == subject_id)).scalars()) == {"jose", "maria"}
        assert set(conn.execute(select(Subject.patient_name_search).where(Subject.patient_name == "ÉMILE^ZOLA")).scalars()) == {"emile^zola"}
        found = search_studies(conn, StudyQuery(name="emi zol"), limit=10).items
        assert [s.subject.patient_name for s in found] == ["ÉMILE^ZOLA"]


def test_0013_partitions_the_audit_tables_by_month_keeping_rows_and_seals_true_and_downgrades(engine: Engine) -> None:
    """Entries and seals written before 0013 move into the monthly partitions unchanged (their seals still verify), and back."""
    from sqlalchemy import text

    from imaging_sync import audit, audit_seals
    from imaging_sync.audit import AuditEvent
    from imaging_sync.db import partitions

    postgres = engine.dialect.name == "postgresql"
    migrate.downgrade(engine, "0012")
    try:
        for i in range(6):
            handle = audit.begin(engine, AuditEvent(channel="dicom", actor="AE", action="c-find", resource_id=str(i)))
            handle.finish("success", status=0)
        sealed, deadline = 0, time.monotonic() + 30
        while sealed < 12 and time.monotonic() < deadline:  # another test's transaction may hold the horizon a moment
            sealed += audit_seals.seal(engine).rows
            time.sleep(0.05)
        assert sealed == 12
    finally:
        migrate.upgrade(engine)
    with engine.connect() as conn:
        if postgres:
            assert conn.scalar(text("SELECT relkind FROM pg_class WHERE relname = 'audit_log'")) == "p"
            assert dt.date.today().replace(day=1) in partitions.months_present(conn)
            assert len(partitions.months_present(conn)) >= partitions.MONTHS_AHEAD
        assert conn.scalar(text("SELECT count(*) FROM audit_log")) == 6
    report = audit_seals.verify(engine)
    assert report.ok and report.rows == 12, [p.describe() for p in report.problems]
    migrate.downgrade(engine, "0012")
    try:
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM audit_completion")) == 6
            if postgres:
                assert conn.scalar(text("SELECT relkind FROM pg_class WHERE relname = 'audit_log'")) == "r"
    finally:
        migrate.upgrade(engine)
    assert audit_seals.verify(engine).ok, "the seals still hold after the way down and up again"
