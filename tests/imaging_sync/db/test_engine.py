"""The engine's pool lends live connections without pinging every checkout."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, create_engine, exc, text

from imaging_sync.config import DatabaseConfig
from imaging_sync.db import engine as db_engine

pytestmark = pytest.mark.postgres


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(pg_url: str, pid: int) -> None:
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    admin.dispose()


def test_a_connection_killed_while_idle_is_replaced_on_checkout(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = db_engine.create_db_engine(DatabaseConfig(url=pg_url, pool_size=1))
    try:
        first = _backend_pid(engine)
        _terminate(pg_url, first)  # a database restart, as the idle connection sees it
        monkeypatch.setattr(db_engine, "PING_AFTER_IDLE_SECONDS", 0.0)  # it has lain idle long enough

        second = _backend_pid(engine)  # no error: the ping found it dead and the pool reconnected

        assert second != first
    finally:
        engine.dispose()


def test_a_connection_just_used_is_lent_without_a_ping_and_a_dead_one_fails_once(pg_url: str) -> None:
    engine = db_engine.create_db_engine(DatabaseConfig(url=pg_url, pool_size=1))
    try:
        first = _backend_pid(engine)
        _terminate(pg_url, first)

        with pytest.raises(exc.DBAPIError) as failed:  # not pinged: returned a moment ago
            _backend_pid(engine)
        assert failed.value.connection_invalidated

        assert _backend_pid(engine) != first  # the pool was invalidated: the next checkout reconnects
    finally:
        engine.dispose()
