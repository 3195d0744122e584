"""The command line, end to end: real config file, real database, real simulator."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import run

from app.cli import EXIT_DATABASE, EXIT_FAILED, EXIT_LOCKED, EXIT_USAGE
from devtools.datagen import DatasetSpec
from devtools.factories import UNREACHED_WEBHOOK, simulator_partner
from devtools.simulator import PartnerSimulator, SimulatorConfig
from devtools.toml_config import write_config
from imaging_sync.config import DatabaseConfig
from imaging_sync.db import migrate
from imaging_sync.db.engine import create_db_engine
from imaging_sync.sync.lock import partner_lock


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def simulator() -> Iterator[PartnerSimulator]:
    with PartnerSimulator(DatasetSpec(partner="b", studies=12), SimulatorConfig(api_key="sim-key")) as sim:
        yield sim


@pytest.fixture
def config(tmp_path: Path, simulator: PartnerSimulator, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_config(tmp_path / "imaging-sync.toml", f"sqlite:///{tmp_path / 'index.db'}", simulator_partner("b", simulator.base_url))
    monkeypatch.setenv("IMAGING_SYNC_CONFIG", str(path))
    return path


def test_sync_refuses_an_unmigrated_database_and_says_what_to_run(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("sync") == EXIT_DATABASE
    assert "imaging-sync db upgrade" in capsys.readouterr().err


def test_upgrade_then_sync_then_inspect(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("db", "upgrade") == 0
    assert run("db", "current") == 0
    assert "up to date" in capsys.readouterr().out

    assert run("sync") == 0
    out = capsys.readouterr().out
    assert "b: succeeded" in out and "12 studies fetched (12 created" in out

    assert run("partners", "list") == 0
    listing = capsys.readouterr().out
    assert "b " in listing and "succeeded" in listing and "2026-" in listing  # bookmark shown

    assert run("runs", "list") == 0
    run_id = capsys.readouterr().out.splitlines()[1].split()[0]
    assert run("runs", "show", run_id) == 0
    shown = capsys.readouterr().out
    assert "succeeded" in shown and "created: 12" in shown


def test_rejected_items_are_listed_with_their_reason(config: Path, simulator: PartnerSimulator, capsys: pytest.CaptureFixture[str]) -> None:
    simulator.dataset.inject_raw({"id": "broken-1", "updated_at": "2026-01-01T00:00:00Z", "study_instance_uid": "1.02"}, sort_id="broken-1")
    run("db", "upgrade")
    assert run("sync", "--quiet") == 0
    capsys.readouterr()
    assert run("rejected", "list") == 0
    out = capsys.readouterr().out
    assert "broken-1" in out and "invalid UID" in out


def test_unknown_partner_is_a_usage_error_naming_the_flag_before_the_database_is_touched(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("sync", "--partner", "nope") == EXIT_USAGE  # no database yet: the usage error comes first
    err = capsys.readouterr().err
    assert "--partner" in err and "'nope'" in err and "known: b" in err
    assert not (tmp_path / "index.db").exists()


def test_bad_config_exits_2_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[partners.b]\nbase_url = "ftp://x"\napi_key_env = "K"\n')
    monkeypatch.setenv("K", "v")
    monkeypatch.setenv("IMAGING_SYNC_CONFIG", str(path))
    assert run("partners", "list") == EXIT_USAGE
    assert "partners.b.base_url" in capsys.readouterr().err


def test_auth_failure_exits_1_with_an_actionable_message(config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run("db", "upgrade")
    monkeypatch.setenv("IMAGING_SYNC_TEST_PARTNER_KEY", "wrong")
    assert run("sync", "--quiet") == EXIT_FAILED
    out = capsys.readouterr().out
    assert "failed" in out and "401" in out and "partners.b api key" in out


def test_a_partner_locked_elsewhere_exits_3(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("db", "upgrade")
    engine = create_db_engine(DatabaseConfig(url=f"sqlite:///{tmp_path / 'index.db'}"))
    with partner_lock(engine, "b"):
        assert run("sync", "--quiet") == EXIT_LOCKED
    assert "skipped" in capsys.readouterr().out
    engine.dispose()


def test_migrations_run_on_an_empty_database(tmp_path: Path) -> None:
    engine = create_db_engine(DatabaseConfig(url=f"sqlite:///{tmp_path / 'fresh.db'}"))
    migrate.upgrade(engine)
    assert migrate.is_current(engine)
    engine.dispose()


def test_a_sync_process_refuses_while_another_process_holds_the_partner(config: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    run("db", "upgrade")
    engine = create_db_engine(DatabaseConfig(url=f"sqlite:///{tmp_path / 'index.db'}"))
    with partner_lock(engine, "b"):
        other = subprocess.run([sys.executable, "-m", "app", "sync", "--quiet"], capture_output=True, text=True, timeout=60)
    engine.dispose()
    assert other.returncode == EXIT_LOCKED, other.stdout + other.stderr
    assert "already being synced by another process" in other.stdout


def test_sync_study_refreshes_one_study(config: Path, simulator: PartnerSimulator, capsys: pytest.CaptureFixture[str]) -> None:
    run("db", "upgrade")
    run("sync", "--quiet")
    capsys.readouterr()
    assert run("sync", "--partner", "b", "--study", simulator.dataset.spec.study_id(3)) == 0
    assert "1 studies fetched (0 created, 0 updated, 1 unchanged" in capsys.readouterr().out
    assert run("sync", "--study", "x") == EXIT_USAGE


def test_outbox_status_and_retry_failed(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sqlalchemy import select, update

    from imaging_sync.db.models import AuditEntry, OutboxEvent

    with config.open("a", encoding="utf-8") as file:  # a sink: without one the sync writes no events
        file.write(f'\n[outbox.webhook]\nurl = "{UNREACHED_WEBHOOK}"\n')
    run("db", "upgrade")
    run("sync", "--quiet")
    capsys.readouterr()
    assert run("outbox", "status") == 0
    out = capsys.readouterr().out
    assert "pending: 12" in out and "oldest undelivered:" in out and "no sink" not in out

    engine = create_db_engine(DatabaseConfig(url=f"sqlite:///{config.parent / 'index.db'}"))
    with engine.begin() as conn:
        conn.execute(update(OutboxEvent).values(status="failed", last_error="webhook answered HTTP 500"))
    assert run("outbox", "status") == 0
    assert "failed: 12" in capsys.readouterr().out
    assert run("outbox", "retry-failed") == 0
    assert "12 failed events queued again" in capsys.readouterr().out
    with engine.connect() as conn:
        statuses = set(conn.execute(select(OutboxEvent.status)).scalars())
        actions = list(conn.execute(select(AuditEntry.action, AuditEntry.actor)))
    engine.dispose()
    assert statuses == {"pending"}
    assert actions[0][0] == "outbox_retry_failed" and actions[0][1].startswith("cli:")
    assert run("outbox", "retry-failed", "--id", "nope") == EXIT_USAGE


@pytest.mark.parametrize(
    "args",
    [("partners", "list"), ("runs", "list"), ("runs", "show", "01a23af6-dd11-7115-879f-d405ec74b6cc"), ("rejected", "list"),
     ("outbox", "status"), ("apikeys", "list"), ("apikeys", "revoke", "abc"), ("sync",)],
)
def test_commands_other_than_db_upgrade_never_create_the_database(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]) -> None:
    assert run(*args) == EXIT_DATABASE
    assert "does not exist: run `imaging-sync db upgrade`" in capsys.readouterr().err
    assert not (tmp_path / "index.db").exists()


def test_db_current_reports_a_missing_database_without_creating_it(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("db", "current") == 0
    assert "no database" in capsys.readouterr().out
    assert not (tmp_path / "index.db").exists()


def test_an_empty_database_gets_the_upgrade_hint_not_a_raw_sql_error(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "index.db").touch()
    assert run("runs", "list") == EXIT_DATABASE
    err = capsys.readouterr().err
    assert "run `imaging-sync db upgrade`" in err and "no such table" not in err


@pytest.mark.parametrize(
    ("args", "named"),
    [(("sync", "--study", "X"), "--study needs exactly one --partner"), (("runs", "show", "nope"), "RUN_ID"),
     (("rejected", "list", "--run", "nope"), "--run"), (("outbox", "retry-failed", "--id", "nope"), "--id"),
     (("apikeys", "create", " ", "--role", "viewer"), "NAME"), (("sync", "--partner", "b", "--study", ".."), "--study")],
)
def test_usage_errors_exit_2_before_the_database_is_touched(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], named: str) -> None:
    assert run(*args) == EXIT_USAGE
    assert named in capsys.readouterr().err
    assert not (tmp_path / "index.db").exists()


def test_a_missing_config_file_is_named_as_the_user_gave_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--config", str(tmp_path / "nope.toml"), "runs", "list") == EXIT_USAGE
    assert "config error at --config:" in capsys.readouterr().err
    monkeypatch.setenv("IMAGING_SYNC_CONFIG", str(tmp_path / "nope.toml"))
    assert run("runs", "list") == EXIT_USAGE
    assert "config error at IMAGING_SYNC_CONFIG:" in capsys.readouterr().err


def test_library_info_lines_stay_off_the_console_unless_verbose(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("db", "upgrade") == 0
    assert "alembic" not in capsys.readouterr().err
    assert run("--verbose", "db", "current") == 0
    assert "INFO alembic.runtime.migration" in capsys.readouterr().err


def test_config_example_prints_the_documented_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("config", "example") == 0
    assert capsys.readouterr().out == (Path(__file__).parents[2] / "docs" / "imaging-sync.example.toml").read_text(encoding="utf-8")


def test_revoke_help_says_how_soon_a_key_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("apikeys", "revoke", "--help") == 0
    assert "within 5 seconds" in " ".join(capsys.readouterr().out.split())


def test_outbox_status_says_when_no_sink_is_configured_and_no_events_are_written(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("db", "upgrade")
    run("sync", "--quiet")
    capsys.readouterr()
    assert run("outbox", "status") == 0
    out = capsys.readouterr().out
    assert "no sink configured" in out and "pending: 0" in out and "oldest undelivered: none" in out


def test_headers_read_and_status_count_what_could_not_be_read_per_partner(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The simulator's bucket is in no storage registry here: every header is refused and recorded, counted by kind."""
    assert run("db", "upgrade") == 0 and run("sync") == 0
    capsys.readouterr()
    assert run("headers", "status") == 0
    before = capsys.readouterr().out.splitlines()[1].split()
    assert before[:3] == ["b", "0", "0"] and int(before[3]) > 0  # kept, failed, unread
    assert run("headers", "read") == 0
    assert capsys.readouterr().out.strip() == f"b: 0 headers read, bucket_refused {before[3]}"
    assert run("headers", "status") == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["b", "0", before[3], "0", "bucket_refused", before[3]]
    assert run("headers", "read", "--partner", "zz") == EXIT_USAGE
    assert "--partner" in capsys.readouterr().err
