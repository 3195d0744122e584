"""A real `imaging-sync sync` process SIGKILLed between pages, then re-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from devtools.datagen import DatasetSpec
from devtools.factories import simulator_partner
from devtools.index_state import live_index
from devtools.simulator import PartnerSimulator, SimulatorConfig
from devtools.toml_config import write_config
from imaging_sync.db.models import Instance, PartnerState, SyncRun

pytestmark = pytest.mark.slow


def start_sync(config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "IMAGING_SYNC_CONFIG": str(config)}
    return subprocess.Popen([sys.executable, "-m", "app", "sync", "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sync_killed_between_pages_resumes_to_exactly_the_partner_state(engine: Engine, tmp_path: Path) -> None:
    spec = DatasetSpec(partner="b", studies=60, series_per_study=2, instances_per_series=3)
    with PartnerSimulator(spec, SimulatorConfig(api_key="sim-key")) as sim:
        config = write_config(tmp_path / "imaging-sync.toml", engine.url.render_as_string(hide_password=False), simulator_partner("b", sim.base_url, page_size=5))

        for kill_on_page in (4, 3):  # twice: the second run resumes from the first one's bookmark
            gate = sim.faults.block_on_page(kill_on_page)
            process = start_sync(config)
            assert gate.wait_until_blocked(timeout=60), process.communicate(timeout=5)[0]
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            gate.release()
            with engine.connect() as conn:
                assert conn.execute(select(PartnerState.bookmark)).scalar_one() is not None  # some pages committed
            assert live_index(engine, "b") != sim.dataset.expected_state()  # and not all of them

        sim.dataset.update_study(spec.study_id(1), lambda item: item.update(description="CHANGED WHILE DOWN"))
        finished = subprocess.run([sys.executable, "-m", "app", "sync", "--quiet"], env={**os.environ, "IMAGING_SYNC_CONFIG": str(config)}, capture_output=True, text=True, timeout=120)
        assert finished.returncode == 0, finished.stdout + finished.stderr
        assert "b: succeeded" in finished.stdout

    assert live_index(engine, "b") == sim.dataset.expected_state()
    with engine.connect() as conn:
        statuses = sorted(conn.execute(select(SyncRun.status)).scalars())
        instances = conn.execute(select(func.count()).select_from(Instance)).scalar_one()
    assert statuses == ["abandoned", "abandoned", "succeeded"]
    assert instances == 60 * 2 * 3
