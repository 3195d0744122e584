"""api.db: a worker's requests share its connections without a thread ever waiting on the pool."""

from __future__ import annotations

import asyncio

import httpx
import msgspec
import pytest
from api_fixtures import IndexBuilder, RecordingLauncher, make_settings
from litestar.testing import TestClient
from sqlalchemy import text

from api.app import create_app
from api.db import open_pool
from api.service import ApiService
from app.assembly import api_app, open_core
from devtools.storage import EmbeddedStorage
from imaging_sync import apikeys, audit
from imaging_sync.config import DatabaseConfig
from imaging_sync.db.engine import create_db_engine
from storage import BucketRegistry

BURST = 40  # well over the executor's threads (cores + 4) and the pool's one connection


def test_a_burst_of_requests_larger_than_the_pool_is_served_without_a_stall(db_url: str, s3: EmbeddedStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    s3.export_environ(monkeypatch.setenv)
    settings = make_settings(db_url, s3.config, [b.name for b in s3.buckets], host="127.0.0.1", port=0)
    # One connection; a checkout gives up after 3 s (a stall shows as 503s, not a hang).
    settings = msgspec.structs.replace(settings, database=msgspec.structs.replace(settings.database, pool_size=1, pool_timeout=3.0))
    core = open_core(settings, configure_logs=False)
    service = ApiService(api_app(core, BucketRegistry(settings.storage)), settings.api)
    try:
        index = IndexBuilder(core.engine)
        index.study(index.subject("P-BURST", "KIM^BURST"))
        with core.engine.begin() as conn:
            _, token = apikeys.create_key(conn, "burst", "viewer")
        service.start()  # uvicorn on a free port, as `imaging-sync serve` runs it
        base, headers = f"http://127.0.0.1:{service.port}", {"Authorization": f"Bearer {token}"}

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=base, headers=headers, limits=httpx.Limits(max_connections=BURST), timeout=30) as client:
                assert (await client.get("/api/v1/studies")).status_code == 200  # the key is cached from here on
                responses = await asyncio.gather(*(client.get("/api/v1/studies", params={"patient_id": "P-BURST"}) for _ in range(BURST)))
                return [r.status_code for r in responses]

        assert asyncio.run(burst()) == [200] * BURST
    finally:
        service.stop()
        core.close()


@pytest.mark.postgres
def test_a_worker_opens_its_pool_at_start(pg_url: str) -> None:
    engine = create_db_engine(DatabaseConfig(url=pg_url, pool_size=3))
    try:
        open_pool(engine, 3)

        assert engine.pool.checkedin() == 3  # opened, and back in the pool for the first requests
    finally:
        engine.dispose()


def test_a_worker_starts_when_the_database_is_down(caplog: pytest.LogCaptureFixture) -> None:
    engine = create_db_engine(DatabaseConfig(url="postgresql+psycopg://nobody:secret@127.0.0.1:9/none", pool_size=2))
    try:
        open_pool(engine, 2)  # no exception: the connections open on first use instead

        assert "could not open the connection pool" in caplog.text
        assert "secret" not in caplog.text
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_request_connection_goes_back_to_the_pool_in_transaction_mode(pg_url: str, s3: EmbeddedStorage) -> None:
    """Requests read and audit in autocommit; whoever borrows the connection next (an operator's write) gets transactions."""
    settings = make_settings(pg_url, s3.config, [b.name for b in s3.buckets])
    settings = msgspec.structs.replace(settings, database=msgspec.structs.replace(settings.database, pool_size=1))
    core = open_core(settings, configure_logs=False)
    try:
        with core.engine.begin() as conn:
            _, token = apikeys.create_key(conn, "pool", "viewer")
        with TestClient(create_app(core, registry=s3.registry(), launcher=RecordingLauncher())) as client:
            assert client.get("/api/v1/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200

        with core.engine.connect() as conn:  # the pool's one connection, the request's a moment ago
            assert conn.connection.driver_connection.autocommit is False
            conn.execute(text("CREATE TEMP TABLE t (n int)"))
            conn.rollback()
            assert conn.execute(text("SELECT to_regclass('pg_temp.t')")).scalar_one() is None  # rolled back: it was a transaction
        with core.engine.connect() as conn:
            assert [e["action"] for e in audit.search(conn, limit=10)] == ["search"]  # the request's entry, committed
    finally:
        core.close()
