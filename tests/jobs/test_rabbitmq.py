"""RabbitMQ by URL alone: the same app and tasks with an ``amqp://`` broker and the ``rpc://`` backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

from app.assembly import worker_app
from devtools.factories import simulator_partner
from devtools.index_state import live_index
from imaging_sync.config import DatabaseConfig, JobsConfig, Settings
from imaging_sync.db.engine import create_db_engine
from imaging_sync.task_names import SYNC_PARTNER


@pytest.fixture
def amqp_settings(rabbitmq_url: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, start_simulator: Any) -> Iterator[tuple[Settings, Any]]:
    # A URL with a password is a secret: it comes from the environment variable named in the config.
    monkeypatch.setenv("IMAGING_SYNC_TEST_BROKER_URL", rabbitmq_url)
    sim = start_simulator(studies=6)
    yield Settings(
        database=DatabaseConfig(url=sqlite_url),
        jobs=JobsConfig(broker_url_env="IMAGING_SYNC_TEST_BROKER_URL"),
        partners={"b": simulator_partner("b", sim.base_url)},
    ), sim


def test_a_sync_task_round_trips_through_rabbitmq_with_the_rpc_backend(amqp_settings: Any, sqlite_url: str) -> None:
    settings, sim = amqp_settings
    # A queue of this test's own (the vhost is shared with other test runs), deleted afterwards.
    # No AMQP heartbeats: the in-thread test worker (no event loop) would wait up to 10 s for one to stop.
    queue = f"imaging-sync-test-{uuid.uuid4().hex[:12]}"
    app = worker_app(settings, task_default_queue=queue, broker_heartbeat=0)
    try:
        assert app.conf.broker_url.startswith("amqp://") and app.conf.result_backend == "rpc://"
        with start_worker(app, pool="threads", concurrency=1, loglevel="WARNING", shutdown_timeout=30):
            result = app.tasks[SYNC_PARTNER].delay("b").get(timeout=30)
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        app.close()
    assert result["status"] == "succeeded" and result["counts"]["created"] == 6
    engine = create_db_engine(DatabaseConfig(url=sqlite_url))
    try:
        assert live_index(engine, "b") == sim.dataset.expected_state()
    finally:
        engine.dispose()
