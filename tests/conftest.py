"""Shared fixtures: real databases (SQLite and PostgreSQL), settings, partner simulators.

PostgreSQL tests skip with a visible reason when no server is reachable;
``IMAGING_SYNC_REQUIRE_POSTGRES=1`` (set by .ci/run) turns that skip into a
failure so CI always exercises PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from devtools.factories import TEST_API_KEY, TEST_API_KEY_ENV
from imaging_sync.config import DatabaseConfig
from imaging_sync.db import migrate
from imaging_sync.db.engine import create_db_engine
from imaging_sync.db.models import Base

PG_ADMIN_URL = os.environ.get("IMAGING_SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("IMAGING_SYNC_REQUIRE_POSTGRES") == "1"


def _postgres_problem() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure to connect means "no PostgreSQL here"
        return f"PostgreSQL not reachable at {make_url(PG_ADMIN_URL).render_as_string(hide_password=True)}: {type(exc).__name__}"


@pytest.fixture(scope="session")
def postgres_url(worker_id: str) -> Iterator[str]:
    """A migrated PostgreSQL database of this test worker's own."""
    problem = _postgres_problem()
    if problem:
        if REQUIRE_POSTGRES:
            pytest.fail(f"{problem} (IMAGING_SYNC_REQUIRE_POSTGRES=1 forbids skipping)")
        pytest.skip(problem)
    # Per process, so two test runs on one server (a developer and CI) never share a database.
    name = f"imaging_sync_test_{worker_id}_{os.getpid()}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once is the slow part)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = create_db_engine(DatabaseConfig(url=f"sqlite:///{path}"))
    migrate.upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def _truncate_all(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        # The audit log's triggers refuse TRUNCATE; replica mode (superuser, tests only) skips them.
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(f"TRUNCATE {tables} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty database: each test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "index.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    _truncate_all(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "index.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    _truncate_all(postgres_url)
    return postgres_url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(DatabaseConfig(url=db_url))
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def _partner_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_API_KEY_ENV, TEST_API_KEY)


# -- which external services this run used: in the header and in a summary at the end --------------
# A CI log must show that the PostgreSQL half (and DCMTK, Redis, RabbitMQ, Chromium) really ran, not
# only that nothing failed. A test counts for a service when it requests one of these fixtures (or,
# for PostgreSQL, carries the ``postgres`` mark of the database parameter).

SERVICE_FIXTURES = {
    "PostgreSQL": {"postgres_url", "pg_url"},
    "Redis": {"redis_server", "redis_url"},
    "RabbitMQ": {"rabbitmq_url"},
    "DCMTK": {"dcmtk"},
    "Chromium": {"chromium", "mermaid_cli"},
}
_REQUIRED = {
    "PostgreSQL": "IMAGING_SYNC_REQUIRE_POSTGRES",
    "DCMTK": "IMAGING_SYNC_REQUIRE_DCMTK",
    "Redis": "IMAGING_SYNC_REQUIRE_SERVICES",
    "RabbitMQ": "IMAGING_SYNC_REQUIRE_SERVICES",
    "Chromium": "IMAGING_SYNC_REQUIRE_SERVICES",
}
_outcomes: dict[str, dict[str, int]] = {name: {"passed": 0, "failed": 0, "skipped": 0} for name in SERVICE_FIXTURES}


def pytest_report_header(config: pytest.Config) -> list[str]:
    where = {"PostgreSQL": make_url(PG_ADMIN_URL).render_as_string(hide_password=True), "DCMTK": "/usr/bin",
             "Redis": "127.0.0.1:6379", "RabbitMQ": "127.0.0.1:5672", "Chromium": "/usr/bin/chromium"}
    return ["external services (SQLite always runs): " + "; ".join(
        f"{name} at {where[name]} ({'required' if os.environ.get(_REQUIRED[name]) == '1' else 'skipped when missing'})" for name in SERVICE_FIXTURES
    )]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # In the report's user properties, so the count also works across pytest-xdist workers.
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        services = [
            name for name, fixtures in SERVICE_FIXTURES.items()
            if used & fixtures or (name == "PostgreSQL" and item.get_closest_marker("postgres") is not None)
        ]
        item.user_properties.append(("services", services))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    final = report.when == "call" or (report.when == "setup" and not report.passed)
    if not final:
        return
    for name in dict(report.user_properties).get("services", ()):
        _outcomes[name][report.outcome] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_sep("-", "external services used")
    for name, counts in _outcomes.items():
        terminalreporter.write_line(f"{name}: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items()))
