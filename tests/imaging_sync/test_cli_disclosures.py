"""No unaudited disclosure in the CLI: each command that prints patient data writes its entry first, as the real account."""

from __future__ import annotations

import datetime as dt
import logging
import os
import pwd
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_run import run
from sqlalchemy import Engine, select

import app.cli
from app.cli import EXIT_FAILED
from app.cli_support import cli_actor
from devtools.datagen import DatasetSpec
from devtools.factories import simulator_partner
from devtools.simulator import PartnerSimulator, SimulatorConfig
from devtools.toml_config import write_config
from imaging_sync import audit, audit_refusals
from imaging_sync.config import DatabaseConfig
from imaging_sync.db.engine import create_db_engine
from imaging_sync.db.models import AuditEntry, EntityLink, Study
from imaging_sync.errors import AuditUnavailableError

REAL = f"cli:{pwd.getpwuid(os.getuid()).pw_name}@{socket.gethostname()}"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture(autouse=True)
def _someone_else_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What getpass.getuser() believed: every test here runs as `anyone` by the environment."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, "anyone")


@pytest.fixture
def simulator() -> Iterator[PartnerSimulator]:
    with PartnerSimulator(DatasetSpec(partner="b", studies=4), SimulatorConfig(api_key="sim-key")) as sim:
        yield sim


@pytest.fixture
def engine(tmp_path: Path, simulator: PartnerSimulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    monkeypatch.setenv("IMAGING_SYNC_CONFIG", str(write_config(tmp_path / "imaging-sync.toml", url, simulator_partner("b", simulator.base_url))))
    assert run("db", "upgrade") == 0
    engine = create_db_engine(DatabaseConfig(url=url))
    yield engine
    engine.dispose()


def entries(engine: Engine) -> list[AuditEntry]:
    with engine.connect() as conn:
        return list(conn.execute(select(AuditEntry).order_by(AuditEntry.at, AuditEntry.id)))  # type: ignore[arg-type]


def test_the_cli_actor_is_the_account_of_the_real_uid_and_the_host_whatever_the_environment_says() -> None:
    assert os.environ["LOGNAME"] == os.environ["USER"] == os.environ["USERNAME"] == "anyone"
    assert cli_actor() == REAL[:128]
    assert "anyone" not in cli_actor()


def test_an_account_the_password_database_does_not_know_is_its_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    def unknown(uid: int) -> Any:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", unknown)
    monkeypatch.setattr(socket, "gethostname", lambda: "h" * 300)
    actor = cli_actor()
    assert actor.startswith(f"cli:{os.getuid()}@hhh") and len(actor) == 128


def test_rejected_list_with_payload_is_audited_with_the_patients_it_shows(engine: Engine, simulator: PartnerSimulator, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("sync", "--quiet") == 0
    broken = simulator.dataset.spec.study_id(1)  # in the index, then an update that breaks the contract
    simulator.dataset.update_study(broken, lambda item: item["subject"].update(patient_id=""))
    simulator.dataset.inject_raw({"id": "broken-new", "updated_at": "2026-01-01T00:00:00Z", "study_instance_uid": "1.02"}, sort_id="broken-new")
    assert run("sync", "--quiet") == 0
    capsys.readouterr()

    assert run("rejected", "list", "--payload") == 0
    out = capsys.readouterr().out
    assert broken in out and "broken-new" in out

    [entry] = entries(engine)
    assert (entry.channel, entry.actor, entry.action, entry.outcome, entry.resource_type) == ("cli", REAL, "list", "success", "rejected_item")
    assert entry.detail["payload"] is True and entry.detail["count"] == 2 and len(entry.detail["items"]) == 2
    with engine.connect() as conn:
        study_id, subject_id = conn.execute(
            select(Study.id, Study.subject_id).join(EntityLink, EntityLink.entity_id == Study.id).where(EntityLink.partner_entity_id == broken, EntityLink.entity_type == "study")
        ).one()
        assert audit.disclosed_by(conn, entry.id) == {"subject": [subject_id], "study": [study_id]}  # "who has seen patient X" finds it
        assert [e["id"] for e in audit.search(conn, subject=subject_id)] == [entry.id]

    assert run("rejected", "list") == 0  # the listing without payloads is recorded too (partner ids, reasons), naming nobody
    listing = entries(engine)[-1]
    assert (listing.action, listing.detail["payload"], listing.actor) == ("list", False, REAL)
    with engine.connect() as conn:
        assert audit.disclosed_by(conn, listing.id) == {"subject": [], "study": []}


def test_runs_show_is_audited(engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("sync", "--quiet") == 0
    capsys.readouterr()
    assert run("runs", "list") == 0
    run_id = capsys.readouterr().out.splitlines()[1].split()[0]
    assert entries(engine) == []  # counts only: nothing to record

    assert run("runs", "show", run_id) == 0
    [entry] = entries(engine)
    assert (entry.actor, entry.action, entry.resource_type, entry.resource_id) == (REAL, "read", "sync_run", run_id)


@pytest.mark.parametrize("args", [("rejected", "list", "--payload"), ("rejected", "list"), ("runs", "show", "RUN")])
def test_when_the_entry_cannot_be_written_nothing_is_printed_and_the_command_fails(
    engine: Engine, simulator: PartnerSimulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    simulator.dataset.inject_raw({"id": "broken-1", "updated_at": "2026-01-01T00:00:00Z", "study_instance_uid": "1.02"}, sort_id="broken-1")
    assert run("sync", "--quiet") == 0
    capsys.readouterr()
    assert run("runs", "list") == 0
    run_id = capsys.readouterr().out.splitlines()[1].split()[0]

    def refused(*_: Any, **__: Any) -> Any:
        raise AuditUnavailableError("the audit log could not record the access: OperationalError")

    monkeypatch.setattr(app.cli.audit_log, "record_now", refused)
    assert run(*(run_id if a == "RUN" else a for a in args)) == EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.out == "" and "audit log could not record" in captured.err
    assert entries(engine) == []


def test_refusals_shows_the_addresses_refused_most_and_one_address_by_minute(engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    now = dt.datetime.now(dt.UTC)
    for i in range(5):
        audit_refusals.count_now(engine, audit_refusals.Refusal("http", "203.0.113.7", audit_refusals.http_attempt("GET", f"/api/v1/s{i % 2}", reason="missing"), at=now))
    audit_refusals.count_now(engine, audit_refusals.Refusal("dicom", "198.51.100.9", audit_refusals.dicom_attempt("PROBE", "IMAGING_SYNC", "calling_ae_not_listed"), at=now))

    assert run("refusals") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["channel", "address", "refusals"]
    assert lines[1].split()[:5] == ["http", "203.0.113.7", "5", "1", "5"] and lines[2].split()[:3] == ["dicom", "198.51.100.9", "1"]

    assert run("refusals", "--addr", "203.0.113.7") == 0
    out = capsys.readouterr().out
    assert "GET /api/v1/s0 (missing); GET /api/v1/s1 (missing)" in out
    assert run("refusals", "--channel", "dicom", "--minutes", "5") == 0
    assert "203.0.113.7" not in capsys.readouterr().out
    assert [(e.actor, e.action, e.resource_type) for e in entries(engine)] == [(REAL, "read_audit", "audit_refusal")] * 3
