"""The audit writer: entries written before the answer, cleaned and capped, completed append-only, naming whose data left."""

from __future__ import annotations

import datetime as dt
import logging
import signal
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.exc import DBAPIError

from imaging_sync import audit
from imaging_sync.audit import AuditEvent
from imaging_sync.config import DatabaseConfig
from imaging_sync.db.engine import create_db_engine
from imaging_sync.db.models import Instance, Series, Study, Subject
from imaging_sync.errors import AuditUnavailableError
from imaging_sync.ids import new_id
from imaging_sync.logs import describe_failure

PATIENT_ID, PATIENT_NAME = "P-SECRET-77", "HONG^GILDONG"


def event(**overrides: object) -> AuditEvent:
    values: dict[str, object] = {"channel": "http", "actor": "abc123", "action": "read", "outcome": "success", "resource_type": "study", "resource_id": "s-1"}
    values.update(overrides)
    return AuditEvent(**values)  # type: ignore[arg-type]


def started(**overrides: object) -> AuditEvent:
    values: dict[str, object] = {"channel": "dicom", "actor": "VIEWER_AE", "action": "c-find", "client_addr": "127.0.0.1", "resource_type": "study"}
    values.update(overrides)
    return AuditEvent(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Patient:
    subject: uuid.UUID
    study: uuid.UUID
    series: uuid.UUID
    instance: uuid.UUID


def patient(engine: Engine, patient_id: str) -> Patient:
    """One subject with one study, series and instance, written directly."""
    now = dt.datetime.now(dt.UTC)
    entity = {"source_partner": "b", "source_priority": 0, "created_at": now, "updated_at": now}
    ids = Patient(new_id(), new_id(), new_id(), new_id())
    uid = f"1.2.826.0.1.{ids.subject.int % 10**12}"
    with engine.begin() as conn:
        conn.execute(insert(Subject.__table__).values(id=ids.subject, issuer="", patient_id=patient_id, **entity))
        conn.execute(insert(Study.__table__).values(id=ids.study, study_instance_uid=f"{uid}.1", subject_id=ids.subject, **entity))
        conn.execute(insert(Series.__table__).values(id=ids.series, series_instance_uid=f"{uid}.2", study_id=ids.study, modality="CT", **entity))
        conn.execute(insert(Instance.__table__).values(id=ids.instance, sop_instance_uid=f"{uid}.3", series_id=ids.series, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", **entity))
    return ids


def seen(engine: Engine, **filters: object) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return audit.search(conn, **filters)  # type: ignore[arg-type]


def test_entries_are_searchable_newest_first_by_actor_and_resource(engine: Engine) -> None:
    audit.record_now(engine, event(resource_id="s-1"))
    audit.record_now(engine, event(actor="other", resource_id="s-2", outcome="denied", status=403))
    audit.record_now(engine, event(resource_type="instance", resource_id="i-9", action="issue_url"))
    with engine.connect() as conn:
        mine = audit.search(conn, actor="abc123")
        studies = audit.search(conn, resource="study")
        one = audit.search(conn, resource="study:s-2")
    assert [e["resource_id"] for e in mine] == ["i-9", "s-1"]
    assert {e["resource_id"] for e in studies} == {"s-1", "s-2"}
    assert [(e["actor"], e["outcome"], e["status"], e["completion"]) for e in one] == [("other", "denied", 403, None)]


@pytest.mark.parametrize("table,key", [("audit_log", "id"), ("audit_completion", "audit_id"), ("audit_disclosure", "audit_id")])
@pytest.mark.parametrize("operation", ["UPDATE {table} SET {key} = {key}", "DELETE FROM {table}"])
def test_the_database_itself_refuses_to_change_or_delete_audit_rows(engine: Engine, table: str, key: str, operation: str) -> None:
    someone = patient(engine, "P-APPEND")
    handle = audit.begin(engine, started(), subject_ids=[someone.subject])
    handle.finish("success", status=0)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(operation.format(table=table, key=key)))
    assert [(e["id"], e["completion"]["outcome"]) for e in seen(engine, subject=someone.subject)] == [(handle.id, "success")]  # type: ignore[index]


@pytest.mark.postgres
@pytest.mark.parametrize("table", ["audit_log", "audit_completion", "audit_disclosure"])
def test_truncate_is_refused_on_postgresql(pg_url: str, table: str) -> None:
    engine = create_engine(pg_url)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {table} CASCADE"))
    engine.dispose()


def test_an_outcome_outside_the_list_is_a_programming_error(engine: Engine) -> None:
    with pytest.raises(ValueError):
        audit.record_now(engine, event(outcome="meh"))
    with pytest.raises(ValueError, match="begin"):
        audit.record_now(engine, event(outcome="started"))  # a started entry is begin()'s, with a completion to follow
    with pytest.raises(ValueError, match="record"):
        audit.begin(engine, started(outcome="success"))
    handle = audit.begin(engine, started())
    with pytest.raises(ValueError):
        handle.finish("started")


def test_a_nul_byte_and_control_characters_anywhere_in_an_entry_are_stored_spelled_out(engine: Engine) -> None:
    """On PostgreSQL one NUL in an identifier made the JSONB insert fail after the matches had been sent."""
    query = {"PatientName": "*", "InstitutionName": "X\x00Y", "Other\x00Key": ["a\x1b[31mred", b"\x00\xff", {"deep": "line\nbreak\x7f"}], "Lone": "\ud800"}
    audit.record_now(engine, event(actor="AE\x00TITLE", resource_id="s\x00-1", path="/p\x00ath", query=query, detail={"comment": "ok\x9b\r\n"}))
    stored = seen(engine)[0]
    assert stored["query"] == {
        "PatientName": "*",
        "InstitutionName": "X\\x00Y",
        "Other\\x00Key": ["a\\x1b[31mred", "\\x00\\xff", {"deep": "line\\x0abreak\\x7f"}],
        "Lone": "\\ud800",
    }
    assert (stored["actor"], stored["resource_id"], stored["path"], stored["detail"]) == ("AE\\x00TITLE", "s\\x00-1", "/p\\x00ath", {"comment": "ok\\x9b\\x0d\\x0a"})


def test_a_started_entry_and_its_completion_are_cleaned_too(engine: Engine) -> None:
    handle = audit.begin(engine, started(query={"InstitutionName": "X\x00Y", "PatientName": "*"}))
    handle.finish("error", status=0xA700, detail={"error": "refused\x00"})
    stored = seen(engine)[0]
    assert stored["query"] == {"InstitutionName": "X\\x00Y", "PatientName": "*"}
    assert stored["completion"]["detail"] == {"error": "refused\\x00"}  # type: ignore[index]


def test_long_strings_long_lists_and_deep_nesting_are_capped_and_say_so(engine: Engine) -> None:
    huge = {
        "long": "A" * 10_000,
        "uids": [f"1.2.3.{i}" for i in range(1000)],
        "deep": {"a": {"b": {"c": {"d": {"e": "too deep"}}}}},
        **{f"key{i}": i for i in range(100)},
    }
    audit.record_now(engine, event(actor="X" * 500, resource_id="r" * 500, query=huge))
    stored = seen(engine)[0]
    query = stored["query"]
    assert isinstance(query, dict)
    assert len(query["long"]) == audit.MAX_TEXT and query["long"].endswith("…")
    assert len(query["uids"]) == audit.MAX_ITEMS + 1 and query["uids"][-1] == f"… {1000 - audit.MAX_ITEMS} more"
    assert query["deep"] == {"a": {"b": {"c": "…"}}}
    assert len(query) == audit.MAX_ITEMS + 1 and query["…"] == f"{103 - audit.MAX_ITEMS} more"
    assert len(stored["actor"]) == 128 and len(stored["resource_id"]) == 128  # type: ignore[arg-type]


def test_the_strings_of_one_value_share_a_budget() -> None:
    many = {f"k{i}": "v" * 200 for i in range(60)}
    cleaned = audit.clean(many)
    assert sum(len(k) + len(v) for k, v in cleaned.items()) <= audit.MAX_CHARS + 64
    assert cleaned["…"].endswith("more")


def test_begin_disclose_and_finish_write_a_started_entry_its_disclosures_and_its_completion(engine: Engine) -> None:
    kim, lee = patient(engine, "P-KIM"), patient(engine, "P-LEE")
    handle = audit.begin(engine, started(query={"PatientName": "*"}), subject_ids=[kim.subject], study_ids=[kim.study])
    with engine.connect() as conn:
        assert audit.entry(conn, handle.id)["outcome"] == "started"  # type: ignore[index]
        assert audit.entry(conn, handle.id)["completion"] is None  # type: ignore[index]
    handle.disclose(subject_ids=[kim.subject, lee.subject], study_ids=[lee.study, lee.study])  # kim's subject again: skipped
    handle.disclose(subject_ids=[lee.subject])  # nothing new: no statement at all
    handle.finish("success", status=0, detail={"matches": 2})

    with engine.connect() as conn:
        whole = audit.entry(conn, handle.id)
        disclosed = audit.disclosed_by(conn, handle.id)
    assert whole is not None and whole["outcome"] == "started"
    assert whole["completion"]["outcome"] == "success" and whole["completion"]["status"] == 0 and whole["completion"]["detail"] == {"matches": 2}
    assert disclosed == {"subject": sorted([kim.subject, lee.subject]), "study": sorted([kim.study, lee.study])}
    assert [e["id"] for e in seen(engine, subject=lee.subject)] == [handle.id]
    assert [e["id"] for e in seen(engine, study=kim.study)] == [handle.id]
    assert seen(engine, subject=kim.study) == []  # a study's id is not a subject's
    with pytest.raises(RuntimeError):
        handle.disclose(subject_ids=[new_id()])
    with pytest.raises(RuntimeError):
        handle.finish("success")


def test_series_and_instances_disclose_their_study_and_subject(engine: Engine) -> None:
    kim, lee = patient(engine, "P-KIM"), patient(engine, "P-LEE")
    by_instance = audit.record_now(engine, event(action="issue_url", resource_type="instance"), instance_ids=[kim.instance])
    by_series = audit.begin(engine, started(action="c-move"), series_ids=[lee.series])
    by_series.disclose(instance_ids=[kim.instance, lee.instance])
    by_series.finish("success")
    with engine.connect() as conn:
        assert audit.disclosed_by(conn, by_instance) == {"subject": [kim.subject], "study": [kim.study]}
        assert audit.disclosed_by(conn, by_series.id) == {"subject": sorted([kim.subject, lee.subject]), "study": sorted([kim.study, lee.study])}


def test_who_has_seen_a_patient_is_paged_newest_first_across_channels(engine: Engine) -> None:
    kim, lee = patient(engine, "P-KIM"), patient(engine, "P-LEE")
    http = audit.record_now(engine, event(action="search"), subject_ids=[kim.subject], study_ids=[kim.study])
    audit.record_now(engine, event(action="search"), subject_ids=[lee.subject])
    dicom = audit.begin(engine, started(), subject_ids=[kim.subject])
    cli = audit.record_now(engine, event(channel="cli", actor="cli:root", action="export"), study_ids=[kim.study], subject_ids=[kim.subject])

    first = seen(engine, subject=kim.subject, limit=2)
    rest = seen(engine, subject=kim.subject, limit=2, before_id=first[-1]["id"])
    assert [e["id"] for e in first + rest] == [cli, dicom.id, http]
    assert [e["channel"] for e in first + rest] == ["cli", "dicom", "http"]
    assert [e["id"] for e in seen(engine, subject=kim.subject, study=kim.study)] == [cli, http]
    assert [e["id"] for e in seen(engine, subject=kim.subject, actor="VIEWER_AE")] == [dicom.id]


def test_a_started_entry_survives_its_process_being_killed_before_the_end(db_url: str, engine: Engine, tmp_path: Path) -> None:
    someone = patient(engine, "P-KILLED")
    script = textwrap.dedent(f"""
        import sys, time, uuid
        from imaging_sync import audit
        from imaging_sync.audit import AuditEvent
        from imaging_sync.config import DatabaseConfig
        from imaging_sync.db.engine import create_db_engine

        engine = create_db_engine(DatabaseConfig(url={db_url!r}))
        handle = audit.begin(engine, AuditEvent(channel="dicom", actor="KILLED_AE", action="c-find"), subject_ids=[uuid.UUID({str(someone.subject)!r})])
        handle.disclose(study_ids=[uuid.UUID({str(someone.study)!r})])
        print(handle.id, flush=True)
        time.sleep(120)
        handle.finish("success")
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert child.stdout is not None
        entry_id = uuid.UUID(child.stdout.readline().strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    with engine.connect() as conn:
        left = audit.entry(conn, entry_id)
        disclosed = audit.disclosed_by(conn, entry_id)
    assert left is not None and (left["outcome"], left["actor"], left["completion"]) == ("started", "KILLED_AE", None)
    assert disclosed == {"subject": [someone.subject], "study": [someone.study]}
    assert [e["id"] for e in seen(engine, subject=someone.subject)] == [entry_id]


def test_an_audit_log_that_cannot_be_written_raises_the_typed_error(tmp_path: Path) -> None:
    unmigrated = create_db_engine(DatabaseConfig(url=f"sqlite:///{tmp_path / 'empty.db'}"))
    with pytest.raises(AuditUnavailableError, match="OperationalError"):
        audit.begin(unmigrated, started(query={"PatientID": "P-SECRET"}))
    with pytest.raises(AuditUnavailableError):
        audit.record_now(unmigrated, event(query={"PatientID": "P-SECRET"}))
    unmigrated.dispose()


@pytest.mark.postgres
def test_an_unreachable_database_raises_the_typed_error() -> None:
    nowhere = create_db_engine(DatabaseConfig(url="postgresql://postgres@127.0.0.1:9/imaging_sync", pool_timeout=1))
    with pytest.raises(AuditUnavailableError, match="OperationalError"):
        audit.begin(nowhere, started())
    nowhere.dispose()


def test_a_failed_disclosure_or_completion_raises_the_typed_error(engine: Engine, tmp_path: Path) -> None:
    handle = audit.begin(engine, started())
    gone = create_db_engine(DatabaseConfig(url=f"sqlite:///{tmp_path / 'missing-dir' / 'index.db'}"))  # cannot even be opened
    stranded = audit.AuditHandle(gone, handle.id, set())
    with pytest.raises(AuditUnavailableError):
        stranded.disclose(subject_ids=[new_id()])
    with pytest.raises(AuditUnavailableError):
        stranded.finish("success")
    assert not stranded.finished
    gone.dispose()


@pytest.mark.postgres
def test_the_error_and_its_log_line_name_the_failure_not_the_values(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The database's own message can quote what was being written (PostgreSQL's JSONB error context once quoted a patient ID)."""
    engine = create_db_engine(DatabaseConfig(url=pg_url))
    with engine.begin() as conn:  # a database that refuses the entry with the values in its message
        conn.execute(text("CREATE FUNCTION test_refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused: %', NEW.query::text; END $$"))
        conn.execute(text("CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION test_refuse_audit()"))
    query = {"PatientID": PATIENT_ID, "PatientName": PATIENT_NAME}  # by name: a traceback quotes source lines
    try:
        with pytest.raises(AuditUnavailableError) as raised:
            audit.begin(engine, started(query=query))
        with pytest.raises(AuditUnavailableError) as raised_by_record:
            audit.record_now(engine, event(query=query), subject_ids=[new_id()])
        logger = logging.getLogger("tests.audit")
        with caplog.at_level(logging.INFO):
            for error in (raised.value, raised_by_record.value):
                try:
                    raise error
                except AuditUnavailableError:
                    logger.exception("audit failed")
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER test_refuse_audit ON audit_log"))
            conn.execute(text("DROP FUNCTION test_refuse_audit()"))
        engine.dispose()
    assert "RaiseException" in str(raised.value) and "P0001" in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert PATIENT_ID not in caplog.text and PATIENT_NAME not in caplog.text
    assert caplog.text.count("AuditUnavailableError") == 2


def test_a_failed_statement_does_not_carry_its_parameters(engine: Engine) -> None:
    """SQLAlchemy puts a failed statement's parameters in the exception's text unless the engine hides them."""
    with pytest.raises(DBAPIError) as raised, engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table WHERE patient_id = :patient_id"), {"patient_id": PATIENT_ID})
    assert PATIENT_ID not in str(raised.value)
    assert describe_failure(raised.value).startswith("ProgrammingError" if engine.dialect.name == "postgresql" else "OperationalError")


def test_a_batch_whose_disclosure_failed_is_written_when_disclosed_again(engine: Engine) -> None:
    someone = patient(engine, "P-RETRY")
    handle = audit.begin(engine, started())
    postgresql = engine.dialect.name == "postgresql"
    with engine.begin() as conn:  # a database that refuses disclosures for a moment
        if postgresql:
            conn.execute(text("CREATE FUNCTION test_refuse_disclosure() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"))
            conn.execute(text("CREATE TRIGGER test_refuse_disclosure BEFORE INSERT ON audit_disclosure FOR EACH ROW EXECUTE FUNCTION test_refuse_disclosure()"))
        else:
            conn.execute(text("CREATE TRIGGER test_refuse_disclosure BEFORE INSERT ON audit_disclosure BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    try:
        with pytest.raises(AuditUnavailableError):
            handle.disclose(subject_ids=[someone.subject], study_ids=[someone.study])
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER test_refuse_disclosure" + (" ON audit_disclosure" if postgresql else "")))
            if postgresql:
                conn.execute(text("DROP FUNCTION test_refuse_disclosure()"))
    handle.disclose(subject_ids=[someone.subject], study_ids=[someone.study])
    handle.finish("success")
    with engine.connect() as conn:
        assert audit.disclosed_by(conn, handle.id) == {"subject": [someone.subject], "study": [someone.study]}
