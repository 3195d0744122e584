"""``imaging-sync doctor`` against real parts: SQLite, the partner simulator, an embedded S3, Redis, a DICOM node.

A healthy setup gives all OK; then each part is broken on its own and the
right line must FAIL with a reason an on-call engineer can act on, while no
secret ever appears in the output.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from infra_support import free_port
from required import require

from app.cli import cli
from devtools.datagen import PARTNER_VOCABULARY, DatasetSpec
from devtools.simulator import PartnerSimulator, SimulatorConfig
from imaging_sync.config import DatabaseConfig, DicomConfig, DicomPeer
from imaging_sync.db import migrate
from imaging_sync.db.engine import create_db_engine

REDIS_URL = os.environ.get("IMAGING_SYNC_TEST_DOCTOR_REDIS_URL", "redis://127.0.0.1:6379/0")
PARTNER_KEY = "doctor-partner-key-7f3a9c"  # distinctive, so a leak is easy to find
KEY_ENV = "DOCTOR_TEST_PARTNER_KEY"
NODE_AE = "ISYNC_DOCTOR_T"


def _redis_problem() -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        client.close()
        return None
    except Exception as exc:  # any failure means "no Redis here"
        return f"Redis not reachable at {REDIS_URL}: {type(exc).__name__}"


@pytest.fixture(scope="module")
def redis_url() -> str:
    require(_redis_problem())
    return REDIS_URL


@pytest.fixture(scope="module")
def simulator(storage: Any) -> Iterator[PartnerSimulator]:
    spec = DatasetSpec(partner="demo", studies=4, series_per_study=1, instances_per_series=2, bucket=storage.buckets[0].name)
    sim = PartnerSimulator(spec, SimulatorConfig(api_key=PARTNER_KEY))
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def storage() -> Iterator[Any]:
    from devtools.storage import embedded_storage

    with embedded_storage(["us-east-1", "eu-west-1"]) as s3:
        yield s3


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> str:
    path = tmp_path_factory.mktemp("doctor-db") / "index.db"
    path.write_bytes(sqlite_template.read_bytes())
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def dicom_node(database: str, storage: Any) -> Iterator[DicomConfig]:
    """The real Q/R node of the dicom package, on a free port of 127.0.0.1."""
    from dicom.server import DicomServer, build_services
    from storage import ObjectReader

    config = DicomConfig(ae_title=NODE_AE, host="127.0.0.1", port=0)
    engine = create_db_engine(DatabaseConfig(url=database))
    server = DicomServer(config, build_services(config, engine, ObjectReader(storage.registry())))
    port = server.start()
    yield DicomConfig(ae_title=NODE_AE, host="127.0.0.1", port=port)
    server.stop()
    engine.dispose()


@dataclass
class Setup:
    """What the config file says; each test breaks one part of a copy."""

    database_url: str
    partner_url: str
    buckets: dict[str, dict[str, Any]]
    partner_bucket: str
    broker_url: str
    dicom_port: int
    dicom_ae: str = NODE_AE
    broker_url_env: str | None = None
    echo_peers: list[str] = field(default_factory=lambda: ["ISYNC_DOCTOR"])
    env: dict[str, str] = field(default_factory=dict)

    def toml(self) -> str:
        q = json.dumps
        lines = [
            "[database]", f"url = {q(self.database_url)}", "",
            "[jobs]", f"broker_url = {q(self.broker_url)}", *([f"broker_url_env = {q(self.broker_url_env)}"] if self.broker_url_env else []), "",
            "[dicom]", f"ae_title = {q(self.dicom_ae)}", 'host = "127.0.0.1"', f"port = {self.dicom_port}",
            "",
            *[line for title in self.echo_peers for line in (f"[dicom.peers.{title}]", 'operations = ["echo"]', "")],
        ]
        for name, bucket in self.buckets.items():
            lines.append(f"[storage.buckets.{name}]")
            lines += [f"{k} = {q(v)}" for k, v in bucket.items()]
            lines.append("")
        lines += ["[partners.demo]", f"base_url = {q(self.partner_url)}", f"api_key_env = {q(KEY_ENV)}",
                  f"default_bucket = {q(self.partner_bucket)}", ""]
        for vocab_field, table in PARTNER_VOCABULARY.items():
            lines.append(f"[partners.demo.vocabulary.{vocab_field}]")
            lines += [f"{q(k)} = {q(v)}" for k, v in table.items()]
            lines.append("")
        return "\n".join(lines)


@pytest.fixture
def setup(database: str, simulator: PartnerSimulator, storage: Any, redis_url: str, dicom_node: DicomConfig, tmp_path: Path) -> Setup:
    db_path = tmp_path / "index.db"
    db_path.write_bytes(Path(database.removeprefix("sqlite:///")).read_bytes())
    buckets = {
        b.name: {"region": b.region, "endpoint_url": storage.endpoint_url, "auth": "keys", "addressing_style": "path",
                 "access_key_id_env": b.access_key_id_env, "secret_access_key_env": b.secret_access_key_env}
        for b in storage.buckets
    }
    return Setup(
        database_url=f"sqlite:///{db_path}", partner_url=simulator.base_url, buckets=buckets, partner_bucket=storage.buckets[0].name,
        broker_url=redis_url, dicom_port=dicom_node.port, env={KEY_ENV: PARTNER_KEY, **storage.environ},
    )


@dataclass
class Report:
    exit_code: int
    output: str
    lines: dict[str, tuple[str, str]]

    def status(self, name: str) -> str:
        return self.lines[name][0]

    def detail(self, name: str) -> str:
        return self.lines[name][1]


def doctor(setup: Setup, tmp_path: Path, *args: str) -> Report:
    config = tmp_path / "imaging-sync.toml"
    config.write_text(setup.toml(), encoding="utf-8")
    env = {k: None for k in os.environ if k.startswith("IMAGING_SYNC")}  # the developer's own settings stay out
    env.update(setup.env)
    result = CliRunner().invoke(cli, ["--config", str(config), "doctor", "--timeout", "3", *args], env=env, catch_exceptions=False)
    lines = {}
    for line in result.output.splitlines()[1:]:
        match = re.match(r"^(.+?)\s{2,}(OK|FAIL|SKIP)\s{2,}(.*)$", line)
        if match:
            lines[match.group(1).strip()] = (match.group(2), match.group(3))
    secrets = [PARTNER_KEY, *(v for k, v in setup.env.items() if "SECRET" in k), *(setup.env.get(KEY_ENV, ""),)]
    for secret in secrets:
        if len(secret) >= 4:
            assert secret not in result.output, "doctor printed a secret"
    return Report(result.exit_code, result.output, lines)


def test_a_healthy_deployment_is_all_ok_and_exits_zero(setup: Setup, tmp_path: Path, storage: Any) -> None:
    report = doctor(setup, tmp_path)
    assert report.exit_code == 0, report.output
    expected = {"config", "database", "migrations", "audit seals", "partner demo", "broker", "dicom", *(f"bucket {b.name}" for b in storage.buckets)}
    assert set(report.lines) == expected, report.output
    assert all(status == "OK" for status, _ in report.lines.values()), report.output
    assert "C-ECHO" in report.detail("dicom") and "health ok, key accepted" in report.detail("partner demo")
    assert "HeadBucket allowed" in report.detail(f"bucket {storage.buckets[0].name}")
    assert report.output.rstrip().endswith(f"all {len(expected)} checks passed")


def test_json_output_carries_the_same_verdict(setup: Setup, tmp_path: Path) -> None:
    report = doctor(setup, tmp_path, "--json")
    body = json.loads(report.output)
    assert body["ok"] is True and {c["name"] for c in body["checks"]} >= {"database", "broker", "dicom"}


def test_after_a_sync_the_bucket_check_heads_an_object_the_index_knows(
    setup: Setup, tmp_path: Path, storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import select

    from app.assembly import open_core
    from imaging_sync.config import load_settings
    from imaging_sync.db.models import InstanceLocation

    for name, value in setup.env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "imaging-sync.toml").write_text(setup.toml(), encoding="utf-8")
    core = open_core(load_settings(tmp_path / "imaging-sync.toml"), configure_logs=False)
    try:
        assert core.runner.sync("demo").ok
        with core.engine.connect() as conn:
            key = conn.scalar(select(InstanceLocation.key).where(InstanceLocation.bucket == setup.partner_bucket).limit(1))
    finally:
        core.close()
    assert key is not None, "the sync indexed files in the partner's bucket"
    bucket = f"bucket {setup.partner_bucket}"
    missing = doctor(setup, tmp_path)  # the simulator's files were never uploaded
    assert missing.status(bucket) == "OK" and "indexed object is missing (404)" in missing.detail(bucket), missing.output
    storage.put(setup.partner_bucket, key, b"DICM")
    present = doctor(setup, tmp_path)
    assert present.status(bucket) == "OK" and "HEAD of an indexed object allowed" in present.detail(bucket), present.output


def test_a_wrong_partner_key_fails_the_partner_line_naming_where_the_key_comes_from(setup: Setup, tmp_path: Path) -> None:
    setup.env[KEY_ENV] = "not-the-right-key-1234"
    report = doctor(setup, tmp_path)
    assert report.exit_code == 1
    assert report.status("partner demo") == "FAIL"
    assert "401" in report.detail("partner demo") and KEY_ENV in report.detail("partner demo"), report.output
    assert {report.status(n) for n in ("database", "broker", "dicom")} == {"OK"}


def test_a_missing_partner_key_fails_the_config_line_and_stops_there(setup: Setup, tmp_path: Path) -> None:
    del setup.env[KEY_ENV]
    report = doctor(setup, tmp_path)
    assert report.exit_code == 1
    assert report.status("config") == "FAIL" and f"environment variable {KEY_ENV} is not set" in report.detail("config")
    assert set(report.lines) == {"config"}


def test_a_partner_that_is_down_fails_as_unreachable(setup: Setup, tmp_path: Path) -> None:
    setup.partner_url = f"http://127.0.0.1:{free_port()}"
    report = doctor(setup, tmp_path)
    assert report.status("partner demo") == "FAIL" and "unreachable" in report.detail("partner demo"), report.output


def test_a_bucket_that_does_not_exist_at_its_endpoint_fails(setup: Setup, tmp_path: Path, storage: Any) -> None:
    setup.buckets["isync-nowhere"] = dict(setup.buckets[storage.buckets[0].name])
    report = doctor(setup, tmp_path)
    assert report.status("bucket isync-nowhere") == "FAIL" and "does not exist" in report.detail("bucket isync-nowhere"), report.output
    assert report.status(f"bucket {storage.buckets[0].name}") == "OK"


class _DenyAll(BaseHTTPRequestHandler):
    """What S3 answers credentials that may not touch a bucket: 403 AccessDenied."""

    def _deny(self) -> None:
        body = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = _deny

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def denying_s3() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyAll)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_bucket_that_denies_access_fails_with_access_denied(setup: Setup, tmp_path: Path, storage: Any, denying_s3: str) -> None:
    denied = storage.buckets[1].name
    setup.buckets[denied]["endpoint_url"] = denying_s3
    report = doctor(setup, tmp_path)
    assert report.status(f"bucket {denied}") == "FAIL", report.output
    assert "access denied (403)" in report.detail(f"bucket {denied}") and f"storage.buckets.{denied}" in report.detail(f"bucket {denied}")
    assert report.status(f"bucket {storage.buckets[0].name}") == "OK"


def test_a_probe_object_outside_the_registry_fails_as_unregistered(setup: Setup, tmp_path: Path) -> None:
    report = doctor(setup, tmp_path, "--probe-object", "not-registered-bucket/a/b.dcm")
    assert report.status("bucket not-registered-bucket") == "FAIL"
    assert "not in the storage registry" in report.detail("bucket not-registered-bucket")


def test_a_partner_bucket_with_no_registry_at_all_fails_the_storage_line(setup: Setup, tmp_path: Path) -> None:
    setup.buckets = {}
    report = doctor(setup, tmp_path)
    assert report.status("storage") == "FAIL" and setup.partner_bucket in report.detail("storage"), report.output


def test_a_missing_probe_object_fails(setup: Setup, tmp_path: Path) -> None:
    report = doctor(setup, tmp_path, "--probe-object", f"{setup.partner_bucket}/no/such/object.dcm")
    assert report.status(f"bucket {setup.partner_bucket}") == "FAIL"
    assert "probe object is not there (404)" in report.detail(f"bucket {setup.partner_bucket}")


def test_a_broker_on_a_closed_port_fails_the_broker_line(setup: Setup, tmp_path: Path) -> None:
    setup.broker_url = f"redis://127.0.0.1:{free_port()}/0"
    report = doctor(setup, tmp_path)
    assert report.exit_code == 1
    assert report.status("broker") == "FAIL" and "unreachable" in report.detail("broker") and "refused" in report.detail("broker").lower()


def test_a_broker_password_is_never_printed(setup: Setup, tmp_path: Path) -> None:
    port = free_port()
    setup.broker_url_env = "DOCTOR_TEST_BROKER_URL"
    setup.env["DOCTOR_TEST_BROKER_URL"] = f"redis://:broker-pass-93kd@127.0.0.1:{port}/0"
    report = doctor(setup, tmp_path)
    assert report.status("broker") == "FAIL"
    assert "broker-pass-93kd" not in report.output and f"127.0.0.1:{port}" in report.detail("broker")


def test_an_unmigrated_database_fails_the_migrations_line(setup: Setup, tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    setup.database_url = f"sqlite:///{empty}"
    report = doctor(setup, tmp_path)
    assert report.status("database") == "OK"
    assert report.status("migrations") == "FAIL" and "run `imaging-sync db upgrade`" in report.detail("migrations"), report.output


def test_a_database_behind_the_code_fails_the_migrations_line(setup: Setup, tmp_path: Path) -> None:
    behind = tmp_path / "behind.db"
    engine = create_db_engine(DatabaseConfig(url=f"sqlite:///{behind}"))
    migrate.upgrade(engine, "0001")
    engine.dispose()
    setup.database_url = f"sqlite:///{behind}"
    report = doctor(setup, tmp_path)
    assert report.status("migrations") == "FAIL" and "schema at 0001" in report.detail("migrations")


def test_a_missing_database_file_fails_the_database_line(setup: Setup, tmp_path: Path) -> None:
    setup.database_url = f"sqlite:///{tmp_path / 'nowhere' / 'index.db'}"
    report = doctor(setup, tmp_path)
    assert report.status("database") == "FAIL" and "does not exist" in report.detail("database")
    assert report.status("migrations") == "SKIP"
    assert not (tmp_path / "nowhere").exists(), "the doctor must not create what it checks"


def test_a_postgres_server_that_is_down_fails_the_database_line_quickly(setup: Setup, tmp_path: Path) -> None:
    setup.database_url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/imaging_sync"
    report = doctor(setup, tmp_path)
    assert report.status("database") == "FAIL" and "unreachable" in report.detail("database"), report.output


def test_a_closed_dicom_port_fails_the_dicom_line(setup: Setup, tmp_path: Path) -> None:
    setup.dicom_port = free_port()
    report = doctor(setup, tmp_path)
    assert report.exit_code == 1
    assert report.status("dicom") == "FAIL" and f"nothing answers on 127.0.0.1:{setup.dicom_port}" in report.detail("dicom")


def test_an_allowlisted_node_that_refuses_our_calling_ae_still_counts_as_answering(tmp_path: Path, database: str, storage: Any) -> None:
    from app.doctor import dicom_echo
    from dicom.server import DicomServer, build_services
    from storage import ObjectReader

    config = DicomConfig(ae_title=NODE_AE, host="127.0.0.1", port=0, peers={"PACS_ONLY": DicomPeer(operations=["echo"])})
    engine = create_db_engine(DatabaseConfig(url=database))
    server = DicomServer(config, build_services(config, engine, ObjectReader(storage.registry())))
    port = server.start()
    try:
        refused = dicom_echo(NODE_AE, "127.0.0.1", port, calling_aet="ISYNC_DOCTOR", timeout=3)
        assert refused.status == "OK" and "not listed in [dicom.peers]" in refused.detail
        allowed = dicom_echo(NODE_AE, "127.0.0.1", port, calling_aet="PACS_ONLY", timeout=3)
        assert allowed.status == "OK" and "C-ECHO" in allowed.detail and "succeeded" in allowed.detail
    finally:
        server.stop()
        engine.dispose()
