"""JSON-lines logs carry the run id and partner on every line of a run, and no patient data."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from devtools.datagen import DatasetSpec
from devtools.factories import settings_for, simulator_partner
from devtools.simulator import PartnerSimulator, SimulatorConfig
from imaging_sync.config import LoggingConfig
from imaging_sync.logs import configure_logging
from imaging_sync.sync.runner import SyncRunner


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(LoggingConfig(level="INFO", format="json"))
    buffer = io.StringIO()
    root.handlers[0].stream = buffer  # type: ignore[attr-defined]
    yield buffer
    root.handlers[:], root.level = saved


def test_every_line_of_a_run_carries_its_run_id_and_no_patient_names(engine: Engine, json_log: io.StringIO) -> None:
    with PartnerSimulator(DatasetSpec(partner="b", studies=5, korean_fraction=1.0), SimulatorConfig(api_key="sim-key")) as sim:
        sim.faults.fail_next(1, status=503)  # a retry warning inside the run
        names = [sim.dataset.item(i)["subject"]["name"] for i in sim.dataset.live_study_ids()]
        result = SyncRunner(engine, settings_for(engine.url.render_as_string(hide_password=False), simulator_partner("b", sim.base_url))).sync("b")
    lines = [json.loads(line) for line in json_log.getvalue().splitlines() if line.strip()]
    run_lines = [line for line in lines if line["logger"].startswith("imaging_sync")]
    assert len(run_lines) >= 2  # the retry warning and the summary
    assert all(line["run_id"] == str(result.run_id) and line["partner"] == "b" for line in run_lines)
    assert any(line["level"] == "WARNING" and "retry" in line["message"] for line in run_lines)
    text = json_log.getvalue()
    assert not any(name and name.split("^")[0] in text for name in names)
