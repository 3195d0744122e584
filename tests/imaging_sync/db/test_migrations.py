"""The migrations build exactly the schema the models describe, on both backends."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select

from imaging_sync.db import migrate
from imaging_sync.db.models import Base, Study
from imaging_sync.sync.runner import SyncRunner
from imaging_sync.testing.datagen import DatasetSpec
from imaging_sync.testing.factories import TEST_API_KEY, settings_for, simulator_partner
from imaging_sync.testing.index_state import stale_facts
from imaging_sync.testing.simulator import PartnerSimulator, SimulatorConfig


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    assert migrate.is_current(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = [d for d in compare_metadata(context, Base.metadata) if not _is_extra_index(d)]
    assert differences == []


def _is_extra_index(difference: object) -> bool:
    """PostgreSQL-only search indexes (pattern, trigram) are created by SQL in 0002, not by the models."""
    return isinstance(difference, tuple) and difference[0] == "remove_index" and difference[1].name.startswith("ix_subject_patient_name_search_")


def test_0006_fills_the_facts_of_an_index_synced_before_it(engine: Engine) -> None:
    sim = PartnerSimulator(DatasetSpec(partner="b", studies=6, series_per_study=2, instances_per_series=3), SimulatorConfig(api_key=TEST_API_KEY))
    sim.start()
    try:
        runner = SyncRunner(engine, settings_for(engine.url.render_as_string(hide_password=False), simulator_partner("b", sim.base_url)))
        assert runner.sync("b").ok
        sim.dataset.update_study(sim.dataset.spec.study_id(1), lambda item: item["series"].pop())  # a soft-deleted series too
        assert runner.sync("b").ok
    finally:
        sim.stop()
    migrate.downgrade(engine, "0005")
    try:
        with engine.connect() as conn:
            assert "series_count" not in {c["name"] for c in inspect(conn).get_columns("study")}
    finally:
        migrate.upgrade(engine)
    assert stale_facts(engine) == []
    with engine.connect() as conn:
        assert sorted(conn.execute(select(Study.series_count)).scalars()) == [1, 2, 2, 2, 2, 2]
