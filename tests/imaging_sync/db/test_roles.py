"""The audit log out of the services' reach on PostgreSQL: the owner migrates, the services run as a role granted only what they use.

Each module run makes its own owning role, runtime role and database (roles
are cluster-wide: unique names, dropped at the end), the way
``infra/postgres/10-app-role.sh`` does in compose, then runs the real
``imaging-sync db upgrade``. The owner is then stopped from logging in, so
everything that still works afterwards (a sync against the partner simulator,
an API key, an audited API search, the outbox relay, alerts, pruning)
provably ran as the runtime role, and each way an owner can rewrite history
is tried as the runtime role and must be refused.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psycopg
import pytest
from cli_run import run
from litestar.testing import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.assembly import api_app, open_core
from app.cli import EXIT_DATABASE
from devtools.datagen import DatasetSpec
from devtools.factories import TEST_API_KEY, TEST_API_KEY_ENV, simulator_partner
from devtools.simulator import PartnerSimulator, SimulatorConfig
from devtools.webhook_receiver import WebhookReceiver
from imaging_sync import audit_seals
from imaging_sync.audit import AuditEvent, record_now
from imaging_sync.config import DatabaseConfig, load_settings
from imaging_sync.config_toml import dumps
from imaging_sync.db import grants
from storage import BucketRegistry

pytestmark = pytest.mark.postgres

INSUFFICIENT_PRIVILEGE = "42501"


@dataclass
class Roles:
    admin_url: str  # the superuser, as the tests' own server gives it
    database: str
    owner: str
    runtime: str
    config: Path

    def url(self, user: str) -> str:
        return make_url(self.admin_url).set(username=user, password=None, database=self.database).render_as_string(hide_password=False)

    def admin(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        engine = create_engine(make_url(self.admin_url).set(database=self.database), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                result = conn.execute(text(sql), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture(scope="module")
def simulator() -> Iterator[PartnerSimulator]:
    with PartnerSimulator(DatasetSpec(partner="b", studies=6), SimulatorConfig(api_key=TEST_API_KEY)) as sim:
        yield sim


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as hook:
        yield hook


def _write_config(path: Path, url: str, runtime_role: str | None, simulator: PartnerSimulator, webhook: str) -> Path:
    b = {k: v for k, v in msgspec.to_builtins(simulator_partner("b", simulator.base_url)).items() if k != "name"}
    database = {"url": url, **({"runtime_role": runtime_role} if runtime_role else {})}
    path.write_text(dumps({"database": database, "outbox": {"webhook": {"url": webhook}}, "partners": {"b": b}}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def roles(postgres_url: str, simulator: PartnerSimulator, receiver: WebhookReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Roles]:
    """An owner and a runtime role made by the superuser (as compose's init script does), and a database the owner owns."""
    suffix = uuid.uuid4().hex[:10]
    admin_url = make_url(postgres_url).set(database="postgres").render_as_string(hide_password=False)
    names = Roles(admin_url, f"isync_roles_{suffix}", f"isync_owner_{suffix}", f"isync_rt_{suffix}", Path())
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{names.owner}" LOGIN'))
        conn.execute(text(f'CREATE ROLE "{names.runtime}" LOGIN'))
        conn.execute(text(f'CREATE DATABASE "{names.database}" OWNER "{names.owner}"'))
    names.config = _write_config(tmp_path_factory.mktemp("roles") / "imaging-sync.toml", names.url(names.owner), names.runtime, simulator, receiver.url)
    try:
        yield names
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{names.database}" WITH (FORCE)'))
            for role in (names.runtime, names.owner):
                conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


@pytest.fixture(scope="module")
def upgraded(roles: Roles) -> Roles:
    """``imaging-sync db upgrade`` as the owner; then the owner may no longer log in, so whatever works later ran as the runtime role."""
    mp = pytest.MonkeyPatch()
    mp.setenv("IMAGING_SYNC_CONFIG", str(roles.config))
    mp.setenv(TEST_API_KEY_ENV, TEST_API_KEY)
    try:
        assert run("db", "upgrade") == 0
    finally:
        mp.undo()
    roles.admin(f'ALTER ROLE "{roles.owner}" NOLOGIN')
    return roles


@pytest.fixture
def as_config(upgraded: Roles, monkeypatch: pytest.MonkeyPatch) -> Roles:
    monkeypatch.setenv("IMAGING_SYNC_CONFIG", str(upgraded.config))
    return upgraded


def test_upgrade_grants_the_runtime_role_exactly_the_declared_privileges(upgraded: Roles) -> None:
    rows = upgraded.admin(
        "SELECT table_name, string_agg(privilege_type, ',' ORDER BY privilege_type) FROM information_schema.role_table_grants "
        "WHERE grantee = :role GROUP BY table_name", role=upgraded.runtime)
    held = {name: frozenset(str(privs).split(",")) for name, privs in rows}
    present = {name for (name,) in upgraded.admin("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert held == {name: privs for name, privs in grants.TABLES.items() if name in present}
    assert held["audit_log"] == {"INSERT", "SELECT"}
    assert upgraded.admin("SELECT has_sequence_privilege(:role, 'audit_seq', 'USAGE')", role=upgraded.runtime) == [(True,)]


def test_the_runtime_role_may_append_to_and_read_the_audit_log(upgraded: Roles) -> None:
    from imaging_sync.db.engine import create_db_engine

    engine = create_db_engine(DatabaseConfig(url=upgraded.url(upgraded.owner), runtime_role=upgraded.runtime))
    try:
        entry = record_now(engine, AuditEvent(channel="cli", actor="cli:test", action="probe", outcome="success", resource_type="test"))
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT current_user")) == upgraded.runtime
            assert conn.scalar(text("SELECT action FROM audit_log WHERE id = :id"), {"id": entry}) == "probe"
    finally:
        engine.dispose()


@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET actor = 'someone else'",
    "DELETE FROM audit_log",
    "TRUNCATE audit_log",
    "ALTER TABLE audit_log ALTER COLUMN actor TYPE text USING 'rewritten'",
    "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete",
    "ALTER TABLE audit_log DISABLE TRIGGER ALL",
    "DROP TRIGGER audit_log_no_update_delete ON audit_log",
    "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    "ALTER TABLE audit_log RENAME TO audit_log_old",
    "CREATE TABLE audit_log_swap (LIKE audit_log INCLUDING ALL)",
    "DROP TABLE audit_log",
    "UPDATE audit_disclosure SET audit_id = audit_id",
    "DELETE FROM audit_seal",
    "ALTER SEQUENCE audit_seq RESTART WITH 1",
])
def test_every_way_an_owner_could_rewrite_the_audit_log_is_refused_to_the_runtime_role(upgraded: Roles, statement: str) -> None:
    with psycopg.connect(upgraded.url(upgraded.runtime).replace("postgresql+psycopg", "postgresql")) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(statement)
    assert refused.value.sqlstate == INSUFFICIENT_PRIVILEGE, refused.value


def test_the_same_trigger_switch_works_for_the_owner_which_is_why_the_services_must_not_be_it(roles: Roles, upgraded: Roles) -> None:
    """Not a bug of the test: the owner can (and the audit's seals are what catch it); the services' role cannot (above)."""
    roles.admin(f'ALTER ROLE "{roles.owner}" LOGIN')
    try:
        with psycopg.connect(roles.url(roles.owner).replace("postgresql+psycopg", "postgresql")) as conn:
            conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete")
            conn.rollback()
    finally:
        roles.admin(f'ALTER ROLE "{roles.owner}" NOLOGIN')


def test_the_services_work_as_the_runtime_role(as_config: Roles, receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str]) -> None:
    """A sync, an API key, an audited search, the outbox relay, alerts and pruning, with the owner unable to log in."""
    from jobs import work
    from jobs.runtime import Runtime

    assert run("sync", "--quiet") == 0, capsys.readouterr()
    assert "b: succeeded" in capsys.readouterr().out
    assert run("apikeys", "create", "runtime test", "--role", "viewer") == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]

    settings = load_settings(str(as_config.config))
    core = open_core(settings, configure_logs=False)
    try:
        assert core.engine.url.username == as_config.runtime
        with TestClient(api_app(core, BucketRegistry(settings.storage))) as client:
            answer = client.get("/api/v1/studies/", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["items"]) == 6
        runtime = Runtime(core)
        try:
            relayed = work.relay_outbox(runtime.relay)
        finally:
            runtime.close()
        assert relayed["configured"] and relayed["delivered"] >= 6 and relayed["failed"] == 0
        assert receiver.wait_for(lambda r: len(r.events()) >= 6)
        work.check_alerts(core)
        assert work.prune(core, days=1)["days"] == 1
        # The sealer too: it reads the audit tables and appends a seal, nothing more.
        sealed = audit_seals.seal_through_now(core.engine)
        assert sealed.rows >= 1 and audit_seals.verify(core.engine).ok
    finally:
        core.close()
    searches = as_config.admin("SELECT count(*) FROM audit_log WHERE action = 'search' AND resource_type = 'study' AND outcome = 'success'")
    assert searches == [(1,)]


def test_upgrade_re_applies_the_grants_and_takes_back_what_someone_added(roles: Roles, upgraded: Roles, monkeypatch: pytest.MonkeyPatch) -> None:
    roles.admin(f'GRANT UPDATE, DELETE ON audit_log TO "{roles.runtime}"')
    roles.admin(f'ALTER ROLE "{roles.owner}" LOGIN')
    monkeypatch.setenv("IMAGING_SYNC_CONFIG", str(roles.config))
    try:
        assert run("db", "upgrade") == 0
    finally:
        roles.admin(f'ALTER ROLE "{roles.owner}" NOLOGIN')
    assert roles.admin("SELECT has_table_privilege(:role, 'audit_log', 'UPDATE')", role=roles.runtime) == [(False,)]


def test_upgrade_refuses_a_missing_runtime_role_the_owner_may_not_create(
    roles: Roles, upgraded: Roles, simulator: PartnerSimulator, receiver: WebhookReceiver, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    missing = f"isync_missing_{uuid.uuid4().hex[:8]}"
    config = _write_config(tmp_path / "imaging-sync.toml", roles.url(roles.owner), missing, simulator, receiver.url)
    monkeypatch.setenv("IMAGING_SYNC_CONFIG", str(config))
    roles.admin(f'ALTER ROLE "{roles.owner}" LOGIN')
    try:
        assert run("db", "upgrade") == EXIT_DATABASE
    finally:
        roles.admin(f'ALTER ROLE "{roles.owner}" NOLOGIN')
    err = capsys.readouterr().err
    assert f"role {missing} does not exist" in err and "CREATE ROLE" in err
    assert roles.admin("SELECT count(*) FROM pg_roles WHERE rolname = :r", r=missing) == [(0,)]


def test_upgrade_creates_the_runtime_role_with_a_hashed_password_when_the_owner_may(
    postgres_url: str, simulator: PartnerSimulator, receiver: WebhookReceiver, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Here the owner is the superuser of the test server; the password reaches the server as a SCRAM verifier, never in clear."""
    suffix = uuid.uuid4().hex[:10]
    admin_url = make_url(postgres_url).set(database="postgres")
    database, role = f"isync_create_{suffix}", f"isync_new_{suffix}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    try:
        config = _write_config(tmp_path / "imaging-sync.toml", admin_url.set(database=database).render_as_string(hide_password=False), role, simulator, receiver.url)
        text_ = config.read_text().replace(f'runtime_role = "{role}"', f'runtime_role = "{role}"\nruntime_password_env = "ISYNC_TEST_RUNTIME_PASSWORD"')
        config.write_text(text_)
        monkeypatch.setenv("IMAGING_SYNC_CONFIG", str(config))
        monkeypatch.setenv("ISYNC_TEST_RUNTIME_PASSWORD", "runtime-secret-5b1e")
        assert run("db", "upgrade") == 0
        out = capsys.readouterr()
        assert f"runtime role {role} created" in out.out and "runtime-secret-5b1e" not in out.out + out.err
        with admin.connect() as conn:
            login, super_, verifier = conn.execute(text("SELECT rolcanlogin, rolsuper, rolpassword FROM pg_authid WHERE rolname = :r"), {"r": role}).one()
        assert login and not super_ and str(verifier).startswith("SCRAM-SHA-256$")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def _audit_line(config: DatabaseConfig) -> tuple[str, str]:
    from app.doctor import check_database

    engine, results = check_database(config, 3.0, {})
    if engine is not None:
        engine.dispose()
    line = next(r for r in results if r.name == "audit log")
    return line.status, line.detail


def test_doctor_passes_the_runtime_role_and_fails_the_owner_a_granted_update_and_a_member_of_the_owner(roles: Roles, upgraded: Roles) -> None:
    runtime = DatabaseConfig(url=roles.url(roles.owner), runtime_role=roles.runtime)
    status, detail = _audit_line(runtime)
    assert status == "OK" and f"role {roles.runtime} may only INSERT and SELECT audit_log" in detail, detail

    roles.admin(f'ALTER ROLE "{roles.owner}" LOGIN')
    try:
        status, detail = _audit_line(DatabaseConfig(url=roles.url(roles.owner)))
    finally:
        roles.admin(f'ALTER ROLE "{roles.owner}" NOLOGIN')
    assert status == "FAIL" and "owns audit_log" in detail and "database.runtime_role" in detail, detail

    roles.admin(f'GRANT UPDATE, TRUNCATE ON audit_log TO "{roles.runtime}"')
    try:
        status, detail = _audit_line(runtime)
    finally:
        roles.admin(f'REVOKE UPDATE, TRUNCATE ON audit_log FROM "{roles.runtime}"')
    assert status == "FAIL" and "could UPDATE, TRUNCATE audit_log" in detail, detail

    roles.admin(f'GRANT "{roles.owner}" TO "{roles.runtime}"')
    try:
        status, detail = _audit_line(runtime)
    finally:
        roles.admin(f'REVOKE "{roles.owner}" FROM "{roles.runtime}"')
    assert status == "FAIL" and f"is a member of {roles.owner}, owner of audit_log" in detail, detail
    assert _audit_line(runtime)[0] == "OK"
