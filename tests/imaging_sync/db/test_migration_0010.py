"""Migration 0010: the referring physician's search form, filled for the studies written before it, and its downgrade."""

from __future__ import annotations

import datetime as dt
import unicodedata

from sqlalchemy import Engine, insert, inspect, select

from devtools.datagen import DatasetSpec
from devtools.factories import TEST_API_KEY, settings_for, simulator_partner
from devtools.index_state import stale_facts
from devtools.simulator import PartnerSimulator, SimulatorConfig
from imaging_sync.catalog.studies import StudyQuery, search_studies
from imaging_sync.db import migrate
from imaging_sync.db.models import Study, Subject
from imaging_sync.ids import new_id
from imaging_sync.sync.runner import SyncRunner


def test_0010_fills_the_referring_physicians_search_form_of_studies_written_before_it_and_downgrades(engine: Engine) -> None:
    with PartnerSimulator(DatasetSpec(partner="b", studies=5, series_per_study=1, instances_per_series=1), SimulatorConfig(api_key=TEST_API_KEY)) as sim:
        runner = SyncRunner(engine, settings_for(engine.url.render_as_string(hide_password=False), simulator_partner("b", sim.base_url)))
        assert runner.sync("b").ok
    migrate.downgrade(engine, "0009")
    try:
        with engine.connect() as conn:
            assert "referring_physician_name_search" not in {c["name"] for c in inspect(conn).get_columns("study")}
        with engine.begin() as conn:  # a study written by the 0009 code: a decomposed accent, no search form
            now = dt.datetime.now(dt.UTC)
            entity = {"source_partner": "b", "source_priority": 0, "created_at": now, "updated_at": now}
            subject_id, study_id = new_id(), new_id()
            conn.execute(insert(Subject.__table__).values(id=subject_id, issuer="", patient_id="OLD-1", **entity))
            conn.execute(insert(Study.__table__).values(
                id=study_id, study_instance_uid="1.2.3.4.5", subject_id=subject_id, study_date=dt.date(2024, 2, 1),
                referring_physician_name=unicodedata.normalize("NFD", "ÉMILE^ZOLA"), **entity,
            ))
    finally:
        migrate.upgrade(engine)
    assert stale_facts(engine) == []  # every study's referring physician search form, the synced ones too
    with engine.connect() as conn:
        assert conn.execute(select(Study.referring_physician_name_search).where(Study.id == study_id)).scalar_one() == "emile^zola"
        found = search_studies(conn, StudyQuery(referring_physician_name="emile*"), limit=10).items
        assert [s.id for s in found] == [study_id]
