"""Assemble the core once per process: settings, logging, engine, session factory, runner."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from imaging_sync.alerts import Alerts, notifiers_from
from imaging_sync.config import Settings, load_settings
from imaging_sync.db import migrate
from imaging_sync.db.engine import create_db_engine, make_session_factory, missing_sqlite_file
from imaging_sync.errors import DatabaseError
from imaging_sync.logs import configure_logging
from imaging_sync.sync.runner import SyncRunner


@dataclass
class Core:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    runner: SyncRunner
    alerts: Alerts

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


def bootstrap(settings: Settings | None = None, *, configure_logs: bool = True, verbose: bool = False) -> Core:
    """``verbose``: libraries' INFO lines reach the console too (the CLI's ``--verbose``)."""
    settings = settings or load_settings()
    if configure_logs:
        configure_logging(settings.logging, verbose=verbose)
    engine = create_db_engine(settings.database)
    alerts = Alerts(engine, settings, notifiers_from(settings.alerts))
    runner = SyncRunner(engine, settings, after_run=[alerts.on_run])
    return Core(settings=settings, engine=engine, sessions=make_session_factory(engine), runner=runner, alerts=alerts)
