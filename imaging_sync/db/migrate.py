"""Schema migrations (Alembic) run programmatically: ``imaging-sync db upgrade``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from imaging_sync.config import DatabaseConfig
from imaging_sync.db import partitions
from imaging_sync.db.engine import create_db_engine, sqlite_file
from imaging_sync.db.roles import RoleReport, check_login, prepare_runtime_role

_HERE = Path(__file__).parent


def _alembic_config() -> Config:
    config = Config(str(_HERE / "alembic.ini"))
    config.set_main_option("script_location", str(_HERE / "migrations"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to ``revision``; the one step that creates a missing SQLite file (and its folder)."""
    path = sqlite_file(engine)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    _run(engine, command.upgrade, revision)
    if engine.dialect.name == "postgresql" and revision == "head":
        # The audit tables' monthly partitions, kept partitions.MONTHS_AHEAD months ahead at every upgrade.
        with engine.begin() as connection:
            partitions.ensure_ahead(connection)


def upgrade_database(config: DatabaseConfig, revision: str = "head") -> tuple[str | None, RoleReport | None]:
    """``imaging-sync db upgrade``: migrate as the owning role, then prepare the services' role; ``(revision now, what was granted)``.

    The only step that connects as ``database.url``'s role (the owner of every
    table). With ``database.runtime_role`` set, the role is created or checked
    and granted exactly :mod:`imaging_sync.db.grants` in one transaction after
    the migrations, then a connection as it proves the services can log in.
    """
    owner = create_db_engine(config, "migrate")
    try:
        upgrade(owner, revision)
        report = prepare_runtime_role(owner, config)
        now = current_revision(owner)
    finally:
        owner.dispose()
    if report is not None:
        services = create_db_engine(config, "serve")
        try:
            check_login(services)
        finally:
            services.dispose()
    return now, report


def downgrade(engine: Engine, revision: str) -> None:
    """Back to ``revision`` (an operator rolling a release back; tests of a migration's data step)."""
    _run(engine, command.downgrade, revision)


def _run(engine: Engine, step: Callable[[Config, str], None], revision: str) -> None:
    """An Alembic command on ``engine``, in one transaction."""
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        step(config, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def is_current(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()
