"""Fixtures for the jobs tests: a real Redis (and RabbitMQ), real Celery workers, the partner simulator.

The fixtures are registered for this folder by conftest.py; test modules import
helpers (``IGNORE_SETEX``, ``FAST_OUTBOX``, …) from here by this unique name.

Redis tests use a database of their own (one of 9-15, claimed for the test
run), emptied around each test. Without a reachable server they are skipped with
the reason; ``IMAGING_SYNC_REQUIRE_SERVICES=1`` turns that skip into a failure.
Elsewhere: ``IMAGING_SYNC_TEST_REDIS=host:port``, ``IMAGING_SYNC_TEST_AMQP_URL``.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import celery.contrib.testing.tasks  # noqa: F401  # registers celery.ping, which start_worker checks
import msgspec
import pytest
import redis
from celery.contrib.testing.worker import start_worker
from required import require
from sqlalchemy import Engine

from app.assembly import worker_app
from devtools.datagen import DatasetSpec
from devtools.simulator import PartnerSimulator, SimulatorConfig
from imaging_sync.config import DatabaseConfig, DicomwebConfig, JobsConfig, OutboxConfig, PartnerConfig, Settings, WebhookConfig
from imaging_sync.db.engine import create_db_engine
from jobs.app import JobsApp

# host:port of the Redis server (the tests pick the database number themselves)
REDIS_HOST, _, _port = os.environ.get("IMAGING_SYNC_TEST_REDIS", "127.0.0.1:6379").rpartition(":")
REDIS_PORT = int(_port)
RABBITMQ_URL = os.environ.get("IMAGING_SYNC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
FAST_OUTBOX = OutboxConfig(batch_size=50, lease_seconds=30, max_attempts=3, initial_backoff=0.01, max_backoff=0.02, poll_interval=0.01)


def _redis_problem(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
        client.close()
        return None
    except Exception as exc:  # any failure means "no Redis here"
        return f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}: {type(exc).__name__}"


def _tcp_problem(what: str, host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"{what} not reachable at {host}:{port}: {type(exc).__name__}"


CLAIM_KEY = "imaging-sync-tests:owner"
CLAIM_SECONDS = 3600  # renewed by every test; frees the database if a run is killed
CLAIMABLE = range(9, 16)


_claimed: dict[str, Any] = {}
_claim_lock = threading.Lock()


def _claim_database() -> str:
    """Claim a free database among 9-15 for this process, once (released when the process exits).

    Several test runs may share one Redis (xdist workers, two engineers, CI):
    each claims a database with a key only it may set (``SET NX``, with an
    expiry in case the run is killed) and empties only that one.
    """
    with _claim_lock:
        if "url" in _claimed:
            return _claimed["url"]
        require(_redis_problem(f"redis://{REDIS_HOST}:{REDIS_PORT}/0"))
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        for number in CLAIMABLE:
            client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
            if client.set(CLAIM_KEY, token, nx=True, ex=CLAIM_SECONDS):
                break
            client.close()
        else:
            require(f"every Redis database in {CLAIMABLE.start}-{CLAIMABLE.stop - 1} is claimed by another test run")
        _claimed["url"] = f"redis://{REDIS_HOST}:{REDIS_PORT}/{number}"

        def release() -> None:
            try:
                if client.get(CLAIM_KEY) == token.encode():
                    client.flushdb()
                client.close()
            except redis.RedisError:
                pass

        atexit.register(release)
        return _claimed["url"]


@pytest.fixture(scope="session")
def redis_server() -> str:
    """This test process's own Redis database."""
    return _claim_database()


def _flush_keeping_the_claim(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(count=1000):
            if key != CLAIM_KEY.encode():
                client.delete(key)
        client.expire(CLAIM_KEY, CLAIM_SECONDS)
    finally:
        client.close()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The claimed database, empty at the start and the end of the test."""
    _flush_keeping_the_claim(redis_server)
    yield redis_server
    _flush_keeping_the_claim(redis_server)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    url = urlsplit(RABBITMQ_URL)
    require(_tcp_problem("RabbitMQ", url.hostname or "127.0.0.1", url.port or 5672))
    return RABBITMQ_URL


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., PartnerSimulator]]:
    started: list[PartnerSimulator] = []

    def start(partner: str = "b", studies: int = 20, series: int = 2, instances: int = 2, **spec: Any) -> PartnerSimulator:
        sim = PartnerSimulator(DatasetSpec(partner=partner, studies=studies, series_per_study=series, instances_per_series=instances, **spec), SimulatorConfig(api_key="sim-key"))
        sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@dataclass
class Jobs:
    """Builds settings, apps and in-process workers against one database and one broker."""

    db_url: str
    broker_url: str
    apps: list[JobsApp] = field(default_factory=list)
    engines: list[Engine] = field(default_factory=list)

    def settings(
        self, *partners: PartnerConfig, webhook_url: str | None = None, celery_task: str | None = None, read_headers: bool = False, **jobs: Any
    ) -> Settings:
        """Settings for this database and broker; the outbox relays to ``webhook_url`` and/or ``celery_task``; DICOMweb's
        header reader after each sync only when ``read_headers`` (its own test turns it on)."""
        outbox = msgspec.structs.replace(FAST_OUTBOX, webhook=WebhookConfig(url=webhook_url) if webhook_url else None, celery_task=celery_task)
        return Settings(
            database=DatabaseConfig(url=self.db_url),
            dicomweb=DicomwebConfig(read_headers_after_sync=read_headers),
            outbox=outbox,
            jobs=JobsConfig(broker_url=self.broker_url, **jobs),
            partners={p.name: p for p in partners},
        )

    def app(self, *partners: PartnerConfig, settings: Settings | None = None, **kwargs: Any) -> JobsApp:
        app = worker_app(settings or self.settings(*partners, **kwargs))
        self.apps.append(app)
        return app

    @contextmanager
    def worker(self, app: JobsApp, concurrency: int = 2, pool: str = "threads") -> Iterator[Any]:
        """A real worker consuming from the broker, in a thread of this process."""
        with start_worker(app, concurrency=concurrency, pool=pool, loglevel="WARNING", perform_ping_check=True, shutdown_timeout=30) as worker:
            yield worker

    def engine(self) -> Engine:
        engine = create_db_engine(DatabaseConfig(url=self.db_url))
        self.engines.append(engine)
        return engine

    def close(self) -> None:
        for app in self.apps:
            app.close()
        for engine in self.engines:
            engine.dispose()


@pytest.fixture
def jobs(db_url: str, redis_url: str) -> Iterator[Jobs]:
    """Redis broker and backend; each test runs on SQLite and PostgreSQL."""
    helper = Jobs(db_url, redis_url)
    yield helper
    helper.close()


@pytest.fixture
def sqlite_jobs(sqlite_url: str, redis_url: str) -> Iterator[Jobs]:
    """Redis broker and backend, SQLite only (tests whose database side is covered elsewhere)."""
    helper = Jobs(sqlite_url, redis_url)
    yield helper
    helper.close()




# Celery's Redis result backend still calls redis-py's deprecated setex: not ours to fix here.
IGNORE_SETEX = pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
