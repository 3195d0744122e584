"""infra/backup.sh and infra/restore.sh on the real local PostgreSQL, with a database a real sync filled.

The source is migrated, synced from the partner simulator through SyncRunner,
and given audit entries; it is dumped by backup.sh and restored by restore.sh
into a fresh database, and every table must come back row for row, the audit
log identical and still append-only (its triggers refuse UPDATE, DELETE and
TRUNCATE). Also: a non-empty target is refused unless forced, a corrupt dump
is refused, retention deletes only this database's old dumps, and the
first-start script of the compose PostgreSQL gives the service a role that
cannot switch the audit triggers off.

Skipped with the reason when PostgreSQL or its client tools are absent;
``IMAGING_SYNC_REQUIRE_POSTGRES=1`` (CI) turns that skip into a failure.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from infra_support import REPO
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from devtools.datagen import DatasetSpec
from devtools.factories import TEST_API_KEY, TEST_API_KEY_ENV, UNREACHED_WEBHOOK, settings_for, simulator_partner
from devtools.simulator import PartnerSimulator, SimulatorConfig
from imaging_sync.audit import AuditEvent, record_now
from imaging_sync.config import DatabaseConfig
from imaging_sync.db import migrate
from imaging_sync.db.models import AuditEntry, Base
from imaging_sync.sync.runner import SyncRunner

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PG_ADMIN_URL = os.environ.get("IMAGING_SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("IMAGING_SYNC_REQUIRE_POSTGRES") == "1"
BACKUP, RESTORE, APP_ROLE_INIT = REPO / "infra" / "backup.sh", REPO / "infra" / "restore.sh", REPO / "infra" / "postgres" / "10-app-role.sh"
RUN_TAG = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"  # per test process: two runs on one server never collide


def _problem() -> str | None:
    missing = [tool for tool in ("pg_dump", "pg_restore", "psql") if shutil.which(tool) is None]
    if missing:
        return f"PostgreSQL client tools not installed: {', '.join(missing)}"
    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means "no PostgreSQL here"
        return f"PostgreSQL not reachable at {make_url(PG_ADMIN_URL).render_as_string(hide_password=True)}: {type(exc).__name__}"
    return None


@pytest.fixture(scope="module")
def admin() -> Iterator[Engine]:
    problem = _problem()
    if problem:
        if REQUIRE_POSTGRES:
            pytest.fail(f"{problem} (IMAGING_SYNC_REQUIRE_POSTGRES=1 forbids skipping)")
        pytest.skip(problem)
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def databases(admin: Engine) -> Iterator[dict[str, str]]:
    """Names of this module's databases (dropped at the end, whatever happened)."""
    names = {role: f"isync_infra_{role}_{RUN_TAG}" for role in ("source", "restored", "forced", "spare")}
    yield names
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _url(name: str) -> str:
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _pg_env(database: str | None = None, **extra: str) -> dict[str, str]:
    url: URL = make_url(PG_ADMIN_URL)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL", "BACKUP_", "RESTORE_"))}
    env.update({"PGHOST": url.host or "127.0.0.1", "PGPORT": str(url.port or 5432), "PGUSER": url.username or "postgres"})
    if url.password:
        env["PGPASSWORD"] = url.password
    if database:
        env["PGDATABASE"] = database
    env.update(extra)
    return env


def _script(script: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=120)


AUDIT_EVENTS = [
    AuditEvent(channel="http", actor="key:ab12", action="search", outcome="success", method="GET", path="/api/v1/studies",
               query={"patient_name": "KIM^*"}, status=200, resource_type="study", client_addr="10.0.0.7"),
    AuditEvent(channel="dicom", actor="PACS_A", action="c-move", outcome="denied", resource_type="study", resource_id="1.2.3.4",
               detail={"destination": "WS1", "note": "김민준 — unicode survives"}),
    AuditEvent(channel="cli", actor="cli:oncall", action="outbox_retry_failed", outcome="success", resource_type="outbox", detail={"count": 3}),
]


@pytest.fixture(scope="module")
def source(databases: dict[str, str], admin: Engine) -> Iterator[Engine]:
    """Migrated, synced from the simulator (two runs), with audit entries and an API key."""
    name = databases["source"]
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(_url(name))
    migrate.upgrade(engine)
    spec = DatasetSpec(partner="b", studies=25, series_per_study=2, instances_per_series=3)
    with PartnerSimulator(spec, SimulatorConfig(api_key=TEST_API_KEY)) as sim, pytest.MonkeyPatch.context() as env:
        env.setenv(TEST_API_KEY_ENV, TEST_API_KEY)  # module scope: the autouse per-test key is not set yet
        runner = SyncRunner(engine, settings_for(_url(name), simulator_partner("b", sim.base_url), webhook_url=UNREACHED_WEBHOOK))  # outbox rows too
        first = runner.sync("b")
        assert first.ok and first.counts["created"] == 25, first.error
        assert runner.sync("b", full=True).ok  # a second run: sync_run history with more than one row
    for event in AUDIT_EVENTS:
        record_now(engine, event)
    from imaging_sync import apikeys

    with engine.begin() as conn:
        apikeys.create_key(conn, "backup-test", "viewer", None)
    yield engine
    engine.dispose()


def _tables() -> list[str]:
    return sorted([t.name for t in Base.metadata.sorted_tables] + ["alembic_version"])


def _snapshot(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, in primary-key order."""
    snapshot = {}
    with engine.connect() as conn:
        for name in _tables():
            table = Base.metadata.tables.get(name)
            if table is None:
                rows = conn.execute(text(f'SELECT * FROM "{name}" ORDER BY 1')).all()
            else:
                rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
            snapshot[name] = [tuple(row) for row in rows]
    return snapshot


@pytest.fixture(scope="module")
def dump(source: Engine, tmp_path_factory: pytest.TempPathFactory, databases: dict[str, str]) -> Path:
    directory = tmp_path_factory.mktemp("backups")
    done = _script(BACKUP, ["--dir", str(directory), "--keep-days", "30", "--keep", "5"], _pg_env(databases["source"]))
    assert done.returncode == 0, done.stdout + done.stderr
    dumps = sorted(directory.glob("imaging-sync_*.dump"))
    assert len(dumps) == 1, done.stdout
    assert f"wrote {dumps[0]}" in done.stdout and "tables' data" in done.stdout
    assert (directory / f"{dumps[0].name}.sha256").is_file()
    assert not list(directory.glob("*.partial")), "no half-written dump is left behind"
    assert oct(dumps[0].stat().st_mode & 0o777) == "0o600", "dumps hold patient data: owner-only"
    return dumps[0]


def test_backup_then_restore_into_a_fresh_database_gives_back_every_row(source: Engine, dump: Path, databases: dict[str, str]) -> None:
    target = databases["restored"]
    # The target named by a URL in SQLAlchemy's spelling (imaging-sync's database.url), password-free PG* for the rest.
    env = _pg_env(RESTORE_DATABASE_URL=_url(target))
    done = _script(RESTORE, ["--create", str(dump)], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"created database {target}" in done.stdout and "checksum of" in done.stdout
    assert f"schema revision {migrate.head_revision()}" in done.stdout
    restored = create_engine(_url(target))
    try:
        before, after = _snapshot(source), _snapshot(restored)
        assert {t: len(r) for t, r in after.items()} == {t: len(r) for t, r in before.items()}
        assert len(before["instance"]) == 25 * 2 * 3 and len(before["sync_run"]) == 2 and len(before["outbox_event"]) >= 25
        for table in _tables():
            assert after[table] == before[table], f"table {table} differs after the restore"
        assert migrate.is_current(restored)
    finally:
        restored.dispose()


def test_the_restored_audit_log_is_intact_and_still_append_only(source: Engine, dump: Path, databases: dict[str, str]) -> None:
    target = databases["restored"]
    if not _exists(target):
        assert _script(RESTORE, ["--create", str(dump)], _pg_env(target)).returncode == 0
    restored = create_engine(_url(target))
    try:
        with source.connect() as a, restored.connect() as b:
            original = a.execute(select(AuditEntry.__table__).order_by(AuditEntry.id)).mappings().all()
            copy = b.execute(select(AuditEntry.__table__).order_by(AuditEntry.id)).mappings().all()
        assert [dict(r) for r in copy] == [dict(r) for r in original]
        assert {r["action"] for r in copy} >= {"search", "c-move", "outbox_retry_failed"}
        assert any(r["detail"] and "김민준" in r["detail"].get("note", "") for r in copy)
        # A plain TRUNCATE is refused by the completions' foreign key before any trigger runs; with CASCADE the triggers refuse it.
        refusals = {"UPDATE audit_log SET actor = 'tampered'": "append-only", "DELETE FROM audit_log": "append-only",
                    "TRUNCATE audit_log": "append-only|referenced in a foreign key", "TRUNCATE audit_log CASCADE": "append-only"}
        for statement, refusal in refusals.items():
            with pytest.raises(DBAPIError, match=refusal):
                with restored.begin() as conn:
                    conn.execute(text(statement))
        record_now(restored, AuditEvent(channel="cli", actor="cli:restore-test", action="after_restore", outcome="success"))
        with restored.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM audit_log")) == len(original) + 1, "inserts still work"
    finally:
        restored.dispose()


def test_restore_refuses_a_database_that_has_tables_and_leaves_it_untouched(source: Engine, dump: Path, databases: dict[str, str]) -> None:
    before = _snapshot(source)
    refused = _script(RESTORE, [str(dump)], _pg_env(databases["source"]))
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "refusing" in refused.stderr and "--force" in refused.stderr
    assert _snapshot(source) == before


def test_restore_with_force_replaces_what_the_dump_holds(source: Engine, dump: Path, databases: dict[str, str], admin: Engine) -> None:
    target = databases["forced"]
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{target}"'))
    forced = create_engine(_url(target))
    try:
        migrate.upgrade(forced)  # the state a started stack leaves: migrated, empty
        record_now(forced, AuditEvent(channel="cli", actor="cli:someone", action="before_restore", outcome="success"))
        done = _script(RESTORE, ["--force", str(dump)], _pg_env(target))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "--force" in done.stdout
        assert _snapshot(forced) == _snapshot(source)
    finally:
        forced.dispose()


def test_restore_refuses_a_missing_database_without_create_and_a_corrupt_dump(dump: Path, databases: dict[str, str], tmp_path: Path) -> None:
    missing = _script(RESTORE, [str(dump)], _pg_env(databases["spare"]))
    assert missing.returncode == 2 and "does not exist; pass --create" in missing.stderr
    corrupt = tmp_path / dump.name
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    shutil.copy(f"{dump}.sha256", tmp_path)
    refused = _script(RESTORE, ["--create", str(corrupt)], _pg_env(databases["spare"]))
    assert refused.returncode == 2 and "does not match its checksum" in refused.stderr
    assert not _exists(databases["spare"]), "nothing is created for a dump that is refused"


def test_backup_retention_deletes_only_this_databases_old_dumps(source: Engine, databases: dict[str, str], tmp_path: Path) -> None:
    name = databases["source"]
    old = [f"imaging-sync_{name}_20200101T000000Z.dump", f"imaging-sync_{name}_20200102T000000Z.dump"]
    recent = [f"imaging-sync_{name}_{(dt.datetime.now(dt.UTC) - dt.timedelta(hours=h)):%Y%m%dT%H%M%SZ}.dump" for h in (3, 2, 1)]
    others = ["imaging-sync_otherdb_20200101T000000Z.dump", "notes.txt"]
    for file in [*old, *recent, *others]:
        (tmp_path / file).write_bytes(b"x")
    done = _script(BACKUP, ["--dir", str(tmp_path), "--keep-days", "7", "--keep", "3"], _pg_env(name))
    assert done.returncode == 0, done.stdout + done.stderr
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    newest = [n for n in left if n.startswith(f"imaging-sync_{name}_") and n.endswith(".dump") and n not in recent]
    assert len(newest) == 1, left
    # Age: the 2020 dumps go. Count: of the 4 recent ones (3 planted + the new one) the newest 3 stay.
    assert set(left) == {*recent[1:], newest[0], f"{newest[0]}.sha256", *others}, done.stdout
    for gone in [*old, recent[0]]:
        assert f"deleted {gone}" in done.stdout


def test_backup_fails_clearly_without_a_reachable_database(tmp_path: Path, admin: Engine) -> None:
    done = _script(BACKUP, ["--dir", str(tmp_path)], _pg_env("no_such_database_" + RUN_TAG))
    assert done.returncode == 2 and "cannot connect" in done.stderr
    assert not any(tmp_path.glob("*.dump"))


def test_the_compose_first_start_script_makes_an_owner_and_a_runtime_role_that_cannot_switch_the_audit_triggers_off(admin: Engine) -> None:
    """The owner may switch triggers off (it owns the tables); the runtime role the services use may not, once `db upgrade` granted it."""
    role, database, password = f"isync_role_{RUN_TAG}", f"isync_infra_app_{RUN_TAG}", "pw-with-'quote\"-and-$dollar"
    runtime = f"isync_rt_{RUN_TAG}"
    env = _pg_env(POSTGRES_USER=make_url(PG_ADMIN_URL).username or "postgres", POSTGRES_DB="postgres",
                  APP_DB_USER=role, APP_DB_NAME=database, IMAGING_SYNC_DB_PASSWORD=password,
                  APP_RUNTIME_USER=runtime, IMAGING_SYNC_DB_RUNTIME_PASSWORD="rt-" + password)
    try:
        for _ in range(2):  # idempotent
            done = subprocess.run(["bash", str(APP_ROLE_INIT)], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
        with admin.connect() as conn:
            owner = conn.scalar(text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :d"), {"d": database})
            superuser = conn.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": role})
            runtime_row = conn.execute(text("SELECT rolsuper, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = :r"), {"r": runtime}).one()
        assert owner == role and superuser is False
        assert tuple(runtime_row) == (False, False, True)
        # As those roles (trust auth locally; the passwords are what a password-checking server would ask).
        config = DatabaseConfig(url=make_url(PG_ADMIN_URL).set(database=database, username=role).render_as_string(hide_password=False), runtime_role=runtime)
        migrate.upgrade_database(config)
        app = create_engine(make_url(PG_ADMIN_URL).set(database=database, username=role, password=password))
        service = create_engine(make_url(PG_ADMIN_URL).set(database=database, username=runtime))
        try:
            with pytest.raises(DBAPIError, match="permission denied|must be superuser"):
                with app.begin() as conn:
                    conn.execute(text("SET session_replication_role = replica"))
            with pytest.raises(DBAPIError, match="must be owner"):
                with service.begin() as conn:
                    conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER ALL"))
        finally:
            app.dispose()
            service.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{runtime}"'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))


def _exists(database: str) -> bool:
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            return bool(conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}))
    finally:
        engine.dispose()
