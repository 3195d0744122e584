"""The command line around the API: `imaging-sync apikeys …` (audited) and `imaging-sync serve api` (a real server)."""

from __future__ import annotations

import http.client
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cli_run import run
from sqlalchemy import select

from app.cli import EXIT_FAILED, EXIT_USAGE
from devtools.ports import free_port
from devtools.toml_config import write_config
from imaging_sync import apikeys
from imaging_sync.config import DatabaseConfig
from imaging_sync.db.engine import create_db_engine
from imaging_sync.db.models import AuditEntry


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def config(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_config(tmp_path / "imaging-sync.toml", db_url)
    monkeypatch.setenv("IMAGING_SYNC_CONFIG", str(path))
    return path


def test_apikeys_create_list_revoke_print_the_token_once_and_are_audited(config: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("apikeys", "create", "frontend", "--role", "viewer", "--expires-in-days", "30") == 0
    token = capsys.readouterr().out.strip()
    engine = create_db_engine(DatabaseConfig(url=db_url))
    try:
        with engine.begin() as conn:
            principal = apikeys.authenticate(conn, token)
        assert principal.role == "viewer" and principal.name == "frontend"

        assert run("apikeys", "list") == 0
        listed = capsys.readouterr().out
        assert principal.prefix in listed and "active" in listed and token not in listed

        assert run("apikeys", "revoke", principal.prefix) == 0
        assert "revoked" in capsys.readouterr().out
        assert run("apikeys", "revoke", "no-such-key") == EXIT_FAILED
        assert run("apikeys", "create", "x", "--role", "admin") == EXIT_USAGE
        assert run("apikeys", "create", " ", "--role", "viewer") == EXIT_USAGE

        with engine.connect() as conn:
            entries = conn.execute(select(AuditEntry.channel, AuditEntry.action, AuditEntry.outcome, AuditEntry.resource_id).order_by(AuditEntry.at)).all()
        assert [(c, a, o) for c, a, o, _ in entries] == [
            ("cli", "create_api_key", "success"), ("cli", "list_api_keys", "success"), ("cli", "revoke_api_key", "success"), ("cli", "revoke_api_key", "not_found"),
        ]
        assert entries[0].resource_id == str(principal.key_id)
        with engine.connect() as conn:
            actors = {a for (a,) in conn.execute(select(AuditEntry.actor))}
        assert all(a.startswith("cli:") for a in actors)
    finally:
        engine.dispose()


KEEP_ALIVE = 6.0  # longer than uvicorn's own 5 s: a server that ignored api.keep_alive_seconds closes sooner


def idle_connection_lifetime(port: int, *, limit: float = 20.0) -> float:
    """Seconds from a request to the server's closing of its kept-alive connection, left idle once answered (at most ``limit``).

    Counted from before the request was sent, so never less than the server's idle limit, which starts once it has answered.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=limit)
    try:
        asked = time.monotonic()
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and not response.will_close, "an answer that keeps the connection open"
        assert conn.sock is not None and conn.sock.recv(1) == b"", "the server closes the idle connection, sending nothing more"
        return time.monotonic() - asked
    finally:
        conn.close()


@pytest.mark.slow
def test_serve_api_runs_several_workers_from_the_app_factory(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path / "imaging-sync.toml", sqlite_url)
    with config.open("a", encoding="utf-8") as toml:
        toml.write(f"\n[api]\nkeep_alive_seconds = {KEEP_ALIVE}\n")
    env = {**os.environ, "IMAGING_SYNC_CONFIG": str(config)}
    created = subprocess.run([sys.executable, "-m", "app", "apikeys", "create", "t", "--role", "viewer"], env=env, capture_output=True, text=True, check=True)
    token = created.stdout.strip()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "app", "serve", "api", "--port", str(port), "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the API did not become ready"
            time.sleep(0.1)
        assert httpx.get(f"{base}/api/v1/studies", headers={"Authorization": f"Bearer {token}"}).json() == {"items": [], "next_cursor": None}
        assert httpx.get(f"{base}/api/v1/studies").status_code == 401
        assert KEEP_ALIVE <= idle_connection_lifetime(port) < 20, "api.keep_alive_seconds reaches the workers"
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0]
    assert "/api/v1/studies" not in output, "no access log: query strings carry patient data"


def test_the_api_runs_as_a_service_of_the_single_process_mode_and_keeps_idle_connections_as_configured(sqlite_url: str) -> None:
    from api.service import ApiService
    from app.assembly import api_app, open_core
    from imaging_sync.config import ApiConfig, DatabaseConfig, Settings
    from storage import BucketRegistry

    core = open_core(Settings(database=DatabaseConfig(url=sqlite_url), api=ApiConfig(port=0, keep_alive_seconds=KEEP_ALIVE)), configure_logs=False)
    service = ApiService(api_app(core, BucketRegistry(core.settings.storage)), core.settings.api)
    try:
        service.start()
        assert httpx.get(f"http://127.0.0.1:{service.port}/ready").json()["status"] == "ready"
        assert str(service.port) in service.describe()
        assert KEEP_ALIVE <= idle_connection_lifetime(service.port) < 20
    finally:
        service.stop()
        core.close()
