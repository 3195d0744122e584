"""The core's own objects of one process: settings, engine, session factory, sync runner, alerts.

Built by :meth:`Core.open`, called from the one assembly point of each
process (``app.assembly``), which passes the Core to the edges it builds.
Nothing here configures logging or knows an edge.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from imaging_sync.alerts import Alerts, notifiers_from
from imaging_sync.config import Settings
from imaging_sync.db import migrate
from imaging_sync.db.engine import create_db_engine, make_session_factory, missing_sqlite_file
from imaging_sync.errors import DatabaseError
from imaging_sync.sync.runner import SyncRunner


@dataclass
class Core:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    runner: SyncRunner
    alerts: Alerts

    @classmethod
    def open(cls, settings: Settings) -> Core:
        """The core over ``settings``: one engine (pool not opened yet), its session factory, runner and alerts."""
        engine = create_db_engine(settings.database)
        alerts = Alerts(engine, settings, notifiers_from(settings.alerts))
        runner = SyncRunner(engine, settings, after_run=[alerts.on_run])
        return cls(settings=settings, engine=engine, sessions=make_session_factory(engine), runner=runner, alerts=alerts)

    def require_current_schema(self) -> None:
        """DatabaseError unless the database exists at the schema the code expects (checked without creating it)."""
        missing = missing_sqlite_file(self.engine)
        if missing is not None:
            raise DatabaseError(f"database file {missing} does not exist: run `imaging-sync db upgrade` to create it (or check database.url)")
        current, head = migrate.current_revision(self.engine), migrate.head_revision()
        if current != head:
            raise DatabaseError(f"database schema is at {current or 'nothing'}, code expects {head}: run `imaging-sync db upgrade`")

    def close(self) -> None:
        self.engine.dispose()
