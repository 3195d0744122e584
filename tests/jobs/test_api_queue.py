"""With ``api.sync_launcher = "queue"`` a sync started from the REST API runs on a Celery worker, as one run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from jobs_fixtures import IGNORE_SETEX
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select, update

from app.assembly import api_app, open_core
from devtools.factories import simulator_partner
from devtools.waiting import eventually
from imaging_sync import apikeys
from imaging_sync.config import ApiConfig, JobsConfig, Settings
from imaging_sync.db.models import SyncRun, utcnow
from imaging_sync.sync.runner import QUEUED_RUN_EXPIRY, SyncRunner
from storage import BucketRegistry

pytestmark = [IGNORE_SETEX]


def queued(settings: Settings, **jobs_config: Any) -> Settings:
    settings = msgspec.structs.replace(settings, api=ApiConfig(sync_launcher="queue"))
    if jobs_config:
        settings = msgspec.structs.replace(settings, jobs=JobsConfig(**jobs_config))
    return settings


@pytest.fixture
def api_client() -> Iterator[Any]:
    """``start(settings)`` -> (TestClient, operator headers, core) for the REST API over those settings."""
    opened: list[Any] = []

    def start(settings: Settings) -> tuple[TestClient[Litestar], dict[str, str], Any]:
        core = open_core(settings, configure_logs=False)
        with core.engine.begin() as conn:
            _, token = apikeys.create_key(conn, "ops", "operator")
        client = TestClient(api_app(core, BucketRegistry(core.settings.storage)))
        client.__enter__()
        opened.append((client, core))
        return client, {"Authorization": f"Bearer {token}"}, core

    yield start
    for client, core in opened:
        client.__exit__(None, None, None)
        core.close()


def runs(core: Any) -> list[SyncRun]:
    with core.sessions() as session:
        return list(session.scalars(select(SyncRun).order_by(SyncRun.started_at)))


def test_an_api_started_sync_waits_queued_then_a_worker_carries_that_same_run(jobs: Any, start_simulator, api_client) -> None:
    sim = start_simulator(studies=6)
    settings = queued(jobs.settings(simulator_partner("b", sim.base_url, page_size=4)))
    client, operator, core = api_client(settings)

    accepted = client.post("/api/v1/partners/b/sync", headers=operator, json={"full": True})

    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run_id"]
    waiting = client.get(f"/api/v1/sync-runs/{run_id}", headers=operator).json()["run"]
    assert (waiting["status"], waiting["trigger"], waiting["full"]) == ("queued", "api", True), "no worker yet: nothing ran in the API process"
    assert client.get("/api/v1/sync-runs?status=queued", headers=operator).json()["items"][0]["id"] == run_id

    with jobs.worker(jobs.app(settings=settings)):
        done = eventually(lambda: (r := client.get(f"/api/v1/sync-runs/{run_id}", headers=operator).json()["run"])["status"] == "succeeded" and r, timeout=60, what="the queued run to succeed")

    assert (done["created"], done["pages"], done["trigger"]) == (6, 2, "api")
    assert [str(r.id) for r in runs(core)] == [run_id], "the worker carried the API's run on; it did not record another"


def test_a_broker_that_does_not_take_the_task_is_a_503_and_the_run_says_why(sqlite_jobs: Any, start_simulator, api_client) -> None:
    sim = start_simulator(studies=1)
    settings = queued(sqlite_jobs.settings(simulator_partner("b", sim.base_url)), broker_url="redis://127.0.0.1:9/0")
    client, operator, core = api_client(settings)

    refused = client.post("/api/v1/partners/b/sync", headers=operator)

    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "queue_unavailable"
    (run,) = runs(core)
    assert (run.status, run.error_kind) == ("failed", "queue") and "did not take the task" in (run.error or "")


def test_a_task_that_comes_again_records_a_run_of_its_own(sqlite_jobs: Any, start_simulator) -> None:
    sim = start_simulator(studies=2)
    settings = sqlite_jobs.settings(simulator_partner("b", sim.base_url))
    runner = SyncRunner(sqlite_jobs.engine(), settings)
    queued_id = runner.record_queued_run("b", trigger="api", full=False)

    first = runner.sync("b", trigger="api", run_id=queued_id)
    again = runner.sync("b", trigger="api", run_id=queued_id)  # a retry or a redelivery of the same task

    assert first.run_id == queued_id and first.status == "succeeded"
    assert again.run_id != queued_id and again.status == "succeeded"
    with sqlite_jobs.engine().connect() as conn:
        statuses = dict(conn.execute(select(SyncRun.id, SyncRun.status)).all())
    assert statuses == {queued_id: "succeeded", again.run_id: "succeeded"}, "the first attempt's outcome is kept"


def test_a_run_queued_longer_than_an_hour_is_abandoned_by_the_partners_next_run(sqlite_jobs: Any, start_simulator) -> None:
    sim = start_simulator(studies=1)
    engine = sqlite_jobs.engine()
    runner = SyncRunner(engine, sqlite_jobs.settings(simulator_partner("b", sim.base_url)))
    lost = runner.record_queued_run("b", trigger="api", full=False)
    recent = runner.record_queued_run("b", trigger="api", full=False)
    with engine.begin() as conn:
        conn.execute(update(SyncRun).where(SyncRun.id == lost).values(started_at=utcnow() - QUEUED_RUN_EXPIRY - dt.timedelta(minutes=1)))

    runner.sync("b", trigger="schedule")

    with engine.connect() as conn:
        statuses = dict(conn.execute(select(SyncRun.id, SyncRun.status)).all())
    assert statuses[lost] == "abandoned" and statuses[recent] == "queued", "a task still on its way keeps its run"
