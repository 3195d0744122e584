"""One engine and session factory per process, created at start and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from imaging_sync.config import DatabaseConfig, database_password

_encode_json = msgspec.json.Encoder().encode


def create_db_engine(config: DatabaseConfig) -> Engine:
    url = make_url(config.url)
    password = database_password(config)
    if password is not None:
        url = url.set(password=password.reveal())
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, config)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return create_engine(url, pool_pre_ping=True, echo=config.echo, json_serializer=json_text, **_pool_options(config))


def _pool_options(config: DatabaseConfig) -> dict[str, Any]:
    """The queue pool of a database server (and of an SQLite file): ``pool_size``, as many again on overflow."""
    return {"pool_size": config.pool_size, "max_overflow": config.pool_size, "pool_timeout": config.pool_timeout}


def connection_limit(config: DatabaseConfig) -> int:
    """How many connections an engine from :func:`create_db_engine` lends at once."""
    options = _pool_options(config)
    return int(options["pool_size"] + options["max_overflow"])


def json_text(value: Any) -> str:
    """JSON columns are written by msgspec: fast, and it knows dates and UUIDs."""
    return _encode_json(value).decode()


def _sqlite_engine(url: Any, config: DatabaseConfig) -> Engine:
    pool: dict[str, Any] = {}
    if url.database and url.database != ":memory:":  # a file: a queue pool sized like a server's (connection_limit)
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        pool = _pool_options(config)
    engine = create_engine(url, echo=config.echo, connect_args={"timeout": 30}, json_serializer=json_text, **pool)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, emit BEGIN (see _begin below).
        dbapi_connection.isolation_level = None
        # WAL lets the API read while a sync writes; foreign keys are off by default in SQLite.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # A write transaction that starts as a reader and later wants to write
        # fails at once in WAL mode if another writer committed meanwhile;
        # BEGIN IMMEDIATE takes the write lock up front and waits (busy_timeout).
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
