"""One engine and session factory per process, created at start and passed in."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
from sqlalchemy import URL, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from imaging_sync.config import DatabaseConfig, database_password, runtime_password

_encode_json = msgspec.json.Encoder().encode

# What a process connects to the database for: "migrate" is `imaging-sync db upgrade` alone; "serve" is every
# other process (API, DICOM node, workers, beat, the sync and the other commands, doctor).
Purpose = Literal["migrate", "serve"]


def connection_url(config: DatabaseConfig, purpose: Purpose = "serve", environ: Mapping[str, str] | None = None, *, with_password: bool = True) -> URL:
    """The one place that decides which role, and which secret, a process connects with.

    ``"migrate"``: ``db upgrade``, and any other step that must own the tables
    (``audit archive`` detaches and drops partitions, which only the owner may).

    ``database.url`` names the role that owns the tables; migrations run as it.
    With ``database.runtime_role`` set, everything else connects to the same
    host and database as that role instead, with its own secret
    (``runtime_password_env``/``_file``): a role holding only the grants of
    :mod:`imaging_sync.db.grants`, so a compromised or buggy service cannot
    rewrite, drop or switch off the audit log the way a table owner can
    (``ALTER TABLE … DISABLE TRIGGER``, ``DROP TRIGGER``, ``ALTER COLUMN … USING``).
    Without it, every process connects as the owner (SQLite, one machine,
    development). ``with_password=False``: the URL to show, no secret read.
    """
    url = make_url(config.url)
    as_runtime = purpose == "serve" and bool(config.runtime_role)
    if as_runtime:
        url = url.set(username=config.runtime_role, password=None)
    if not with_password:
        return url.set(password=None) if url.password else url
    password = runtime_password(config, environ) if as_runtime else database_password(config, environ)
    if password is not None:
        url = url.set(password=password.reveal())
    return url


def create_db_engine(config: DatabaseConfig, purpose: Purpose = "serve") -> Engine:
    """The process's engine, on PostgreSQL or SQLite, as the role :func:`connection_url` decides for ``purpose``.

    ``hide_parameters``: SQLAlchemy writes a failed statement's parameters
    into the exception's text (and ``echo`` into the log), and those are
    patient names and IDs: a search's filters, an audit entry's query. With
    it, an error message shows the statement alone.
    """
    url = connection_url(config, purpose)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, config)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url, echo=config.echo, json_serializer=json_text, hide_parameters=True, **_pool_options(config))
    _ping_when_idle(engine)
    return engine


# A connection returned to the pool less than this many seconds ago is lent without a ping.
PING_AFTER_IDLE_SECONDS = 2.0


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before lending it, but only when it has lain idle.

    ``pool_pre_ping`` pings on every checkout: one more round trip per API
    request (a fifth of them, with the transaction's BEGIN and COMMIT). A
    connection used a moment ago is as alive as a ping would show; one that lay
    idle may have outlived a database restart. When a connection that skipped
    the ping turns out dead anyway, SQLAlchemy invalidates the whole pool on
    that first error, so one request fails and the next ones reconnect.
    """

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _lent(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned < PING_AFTER_IDLE_SECONDS:
            return  # new (just connected) or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:  # the pool discards it and lends another
            raise exc.DisconnectionError("pooled connection failed its ping after lying idle") from error


def _pool_options(config: DatabaseConfig) -> dict[str, Any]:
    """The queue pool of a database server (and of an SQLite file): at most ``pool_size``, each kept once opened.

    No overflow: an overflow connection is closed as soon as it is returned, so
    a burst above the pool's size opened new PostgreSQL backends (a fork, and
    caches that start cold) at the worst moment, and closed them again. The
    latency benchmark saw dozens of connects in a second at each burst.
    """
    return {"pool_size": config.pool_size, "max_overflow": 0, "pool_timeout": config.pool_timeout}


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
        pool = _pool_options(config)
    engine = create_engine(url, echo=config.echo, connect_args={"timeout": 30}, json_serializer=json_text, hide_parameters=True, **pool)

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


def sqlite_file(engine: Engine) -> Path | None:
    """The file of an SQLite database (None for PostgreSQL and in-memory SQLite)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def missing_sqlite_file(engine: Engine) -> Path | None:
    """The SQLite file the engine would create on first connect, if it does not exist yet.

    SQLite creates a missing file silently; commands other than ``db upgrade``
    check this first, so a typo in database.url or a command run in the wrong
    directory says so instead of leaving an empty database behind.
    """
    path = sqlite_file(engine)
    return path if path is not None and not path.exists() else None


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
