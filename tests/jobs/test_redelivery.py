"""A worker process SIGKILLed mid-sync: the task is delivered again and the next worker completes the run.

The worker is the real command line (``imaging-sync worker``) in a process of
its own; the kill lands while the sync waits on the simulator between two
pages, after some pages (and the bookmark) are committed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jobs_fixtures import IGNORE_SETEX
from sqlalchemy import select

from devtools.factories import simulator_partner
from devtools.index_state import live_index
from devtools.toml_config import write_config
from imaging_sync.config import load_settings
from imaging_sync.db.models import PartnerState, SyncRun
from imaging_sync.task_names import SYNC_PARTNER

pytestmark = [pytest.mark.slow, IGNORE_SETEX]


def start_worker_process(config: Path, pool: str, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "app", "--config", str(config), "worker", "--pool", pool, "--concurrency", "1",
               "--loglevel", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat"]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class Scene:
    """A simulator, a config file for it, and a sync task parked on the simulator's page gate in a worker process."""

    def __init__(self, jobs: Any, start_simulator: Any, tmp_path: Path, pool: str) -> None:
        self.sim = start_simulator(studies=40)
        partner = simulator_partner("b", self.sim.base_url, page_size=5, overlap_seconds=0)
        config = write_config(tmp_path / "imaging-sync.toml", jobs.db_url, partner)
        # A short visibility timeout: the unacknowledged task of a dead worker is delivered again within seconds.
        config.write_text(config.read_text() + f'\n[jobs]\nbroker_url = "{jobs.broker_url}"\nvisibility_timeout = 2\n')
        self.app = jobs.app(settings=load_settings(config))
        self.engine = jobs.engine()
        self.gate = self.sim.faults.block_on_page(4)
        self.log = tmp_path / "worker.log"
        self.process = start_worker_process(config, pool, self.log)
        self.queued = self.app.tasks[SYNC_PARTNER].delay("b")
        if not self.gate.wait_until_blocked(timeout=30):
            stop(self.process)
            pytest.fail(f"the worker never reached page 4:\n{self.log.read_text(errors='replace')}")

    def running_run(self) -> SyncRun:
        with self.engine.connect() as conn:
            run = conn.execute(select(SyncRun)).one()
            assert conn.execute(select(PartnerState.bookmark)).scalar_one() is not None  # three pages committed
        assert run.status == "running"
        return run

    def assert_completed_from_the_bookmark(self, result: dict[str, Any]) -> None:
        assert result["status"] == "succeeded", result
        assert result["counts"]["fetched"] < 40  # resumed from the bookmark, not from the start
        assert live_index(self.engine, "b") == self.sim.dataset.expected_state()
        with self.engine.connect() as conn:
            runs = {r.status: r for r in conn.execute(select(SyncRun))}
        assert set(runs) == {"abandoned", "succeeded"}
        assert runs["succeeded"].since is not None


def test_a_task_whose_worker_was_killed_is_redelivered_and_completes_from_the_bookmark(sqlite_jobs: Any, start_simulator, tmp_path: Path) -> None:
    scene = Scene(sqlite_jobs, start_simulator, tmp_path, pool="solo")
    try:
        os.killpg(scene.process.pid, signal.SIGKILL)  # the whole worker, as when its machine dies
        scene.process.wait(timeout=10)
    finally:
        stop(scene.process)
        scene.gate.release()
    scene.running_run()
    with sqlite_jobs.worker(scene.app, concurrency=1):  # another worker takes the unacknowledged task
        result = scene.queued.get(timeout=30)
    scene.assert_completed_from_the_bookmark(result)


def test_a_task_whose_pool_process_died_is_requeued_and_completed_by_the_same_worker(sqlite_jobs: Any, start_simulator, tmp_path: Path) -> None:
    scene = Scene(sqlite_jobs, start_simulator, tmp_path, pool="prefork")
    try:
        child = scene.running_run().pid  # the prefork child running the sync
        assert child is not None and child != scene.process.pid
        os.kill(child, signal.SIGKILL)  # task_reject_on_worker_lost: the parent puts the task back
        scene.gate.release()
        result = scene.queued.get(timeout=30)
    finally:
        scene.gate.release()
        stop(scene.process)
    scene.assert_completed_from_the_bookmark(result)
