"""Who has seen patient X: every answer that disclosed a patient names it in its audit entry, and the auditor asks once.

``who_has_seen`` is the auditor's question over the REST API; a test of
another edge (a C-FIND, a C-MOVE) asks it the same way after its own
operation, so "any channel" is one query.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from api_fixtures import IndexBuilder, Keys, Located
from litestar import Litestar
from litestar.testing import TestClient
from pydicom.dataset import Dataset
from sqlalchemy import text

from devtools.storage import EmbeddedStorage
from imaging_sync import audit
from imaging_sync.audit import AuditEvent


def who_has_seen(client: TestClient[Litestar], keys: Keys, *, subject: uuid.UUID | None = None, study: uuid.UUID | None = None, **params: Any) -> list[dict[str, Any]]:
    """The auditor's query: the entries that disclosed ``subject`` (and/or ``study``), newest first, every page."""
    query = {k: str(v) for k, v in {"subject": subject, "study": study, **params}.items() if v is not None}
    items: list[dict[str, Any]] = []
    while True:
        response = client.get("/api/v1/audit", params=query, headers=keys.headers("auditor"))
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        query["cursor"] = page["next_cursor"]


def server_log(caplog: pytest.LogCaptureFixture) -> str:
    """Every line the service logged, tracebacks included (not the test client's own request lines)."""
    return "\n".join(caplog.handler.format(record) for record in caplog.records if not record.name.startswith("httpx"))


@dataclass(frozen=True)
class Patient:
    subject: uuid.UUID
    study: uuid.UUID
    series: uuid.UUID
    instance: uuid.UUID


@pytest.fixture
def kim(index: IndexBuilder, s3: EmbeddedStorage) -> Patient:
    """A patient with one study, series and instance, its file in partner b's bucket."""
    bucket = s3.buckets[0].name
    key = f"studies/{uuid.uuid4()}/IM0001.dcm"
    s3.put(bucket, key, b"DICM" * 64)
    subject = index.subject("P-KIM-1", "KIM^MINJI")
    study = index.study(subject, date=dt.date(2025, 3, 1))
    series = index.series(study)
    return Patient(subject, study, series, index.instance(series, locations=[Located("b", bucket, key)]))


@pytest.fixture
def lee(index: IndexBuilder) -> Patient:
    subject = index.subject("P-LEE-2", "LEE^SUA")
    study = index.study(subject, date=dt.date(2024, 1, 5))
    series = index.series(study)
    return Patient(subject, study, series, index.instance(series))


def test_a_wildcard_search_that_returned_a_patient_is_found_by_the_auditors_query_by_subject(
    client: TestClient[Litestar], keys: Keys, kim: Patient, lee: Patient
) -> None:
    found = client.get("/api/v1/studies", params={"patient_name": "*"}, headers=keys.headers("viewer"))
    assert found.status_code == 200 and {s["subject"]["id"] for s in found.json()["items"]} == {str(kim.subject), str(lee.subject)}

    seen = who_has_seen(client, keys, subject=kim.subject)
    assert [(e["channel"], e["action"], e["resource_type"], e["query"], e["outcome"]) for e in seen] == [("http", "search", "study", {"patient_name": "*"}, "success")]
    assert [e["id"] for e in who_has_seen(client, keys, study=lee.study)] == [seen[0]["id"]]


@pytest.mark.parametrize(
    "request_path",
    [
        "/api/v1/subjects?patient_id=P-KIM-1",
        "/api/v1/subjects/{subject}/studies",
        "/api/v1/studies?name=kim",
        "/api/v1/studies/{study}",
        "/api/v1/series/{series}/instances",
        "/api/v1/instances/{instance}/url",
        "/api/v1/instances/{instance}/file",
        "/api/v1/series/{series}/urls",
    ],
)
def test_every_answer_with_patient_data_names_its_subject_and_study(client: TestClient[Litestar], keys: Keys, kim: Patient, lee: Patient, request_path: str) -> None:
    path = request_path.format(subject=kim.subject, study=kim.study, series=kim.series, instance=kim.instance)
    response = client.get(path, headers=keys.headers("viewer"), follow_redirects=False)
    assert response.status_code in (200, 307), response.text

    by_subject = who_has_seen(client, keys, subject=kim.subject)
    assert [(e["path"], e["status"]) for e in by_subject] == [(path.partition("?")[0], response.status_code)]
    if "/subjects?" not in path:  # a subject search shows patients, not their studies
        assert [e["id"] for e in who_has_seen(client, keys, study=kim.study)] == [by_subject[0]["id"]]
    assert who_has_seen(client, keys, subject=lee.subject) == []


def test_an_answer_that_shows_no_patient_data_discloses_nothing(client: TestClient[Litestar], keys: Keys, kim: Patient) -> None:
    assert client.get(f"/api/v1/studies/{kim.study}", headers=keys.headers("auditor")).status_code == 403  # refused: nothing left
    assert client.get(f"/api/v1/studies/{uuid.uuid4()}", headers=keys.headers("viewer")).status_code == 404
    assert client.get("/api/v1/studies", params={"patient_id": "NOBODY"}, headers=keys.headers("viewer")).json()["items"] == []
    assert who_has_seen(client, keys, subject=kim.subject) == []
    assert who_has_seen(client, keys, study=kim.study) == []


def test_who_has_seen_a_patient_spans_channels_pages_and_shows_how_each_ended(
    client: TestClient[Litestar], keys: Keys, kim: Patient, core: Any
) -> None:
    client.get(f"/api/v1/studies/{kim.study}", headers=keys.headers("viewer"))
    handle = audit.begin(core.engine, AuditEvent(channel="dicom", actor="PACS_A", action="c-find", resource_type="study"), subject_ids=[kim.subject], study_ids=[kim.study])
    handle.finish("success", status=0, detail={"matches": 1})
    killed = audit.begin(core.engine, AuditEvent(channel="dicom", actor="PACS_A", action="c-move"), subject_ids=[kim.subject])
    client.get("/api/v1/subjects", params={"patient_id": "P-KIM-1"}, headers=keys.headers("viewer"))

    one_by_one = who_has_seen(client, keys, subject=kim.subject, limit=1)
    assert [(e["channel"], e["action"]) for e in one_by_one] == [("http", "search"), ("dicom", "c-move"), ("dicom", "c-find"), ("http", "read")]
    completions = {e["id"]: e["completion"] for e in one_by_one}
    assert completions[str(killed.id)] is None  # still running, or its process died: the started entry is the trace
    assert completions[str(handle.id)]["outcome"] == "success" and completions[str(handle.id)]["detail"] == {"matches": 1}
    assert [e["outcome"] for e in one_by_one] == ["success", "started", "started", "success"]
    assert [e["action"] for e in who_has_seen(client, keys, subject=kim.subject, study=kim.study)] == ["c-find", "read"]
    assert [e["action"] for e in who_has_seen(client, keys, subject=kim.subject, actor="PACS_A")] == ["c-move", "c-find"]


def test_the_auditors_query_takes_ids_only(client: TestClient[Litestar], keys: Keys) -> None:
    for name in ("subject", "study"):
        refused = client.get("/api/v1/audit", params={name: "P-KIM-1"}, headers=keys.headers("auditor"))
        assert refused.status_code == 400 and refused.json()["error"]["details"]["field"] == name
    assert client.get("/api/v1/audit", params={"subject": str(uuid.uuid4())}, headers=keys.headers("viewer")).status_code == 403


@pytest.mark.parametrize(
    "request_path",
    ["/api/v1/studies?patient_id=P-KIM-1%00Y", "/api/v1/subjects?patient_id=P-KIM-1%00Y", "/api/v1/studies?name=KIM%00MINJI", "/api/v1/studies?pati%00ent_id=P-KIM-1"],
)
def test_a_nul_byte_in_a_query_is_refused_audited_and_kept_out_of_the_logs(
    client: TestClient[Litestar], keys: Keys, kim: Patient, caplog: pytest.LogCaptureFixture, request_path: str
) -> None:
    with caplog.at_level(logging.DEBUG):
        response = client.get(request_path, headers=keys.headers("viewer"))
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"

    entries = who_has_seen(client, keys, actor=keys.viewer.split("_")[1])
    assert [(e["outcome"], e["status"], e["detail"]["error"]) for e in entries] == [("error", 400, "invalid")]
    stored = entries[0]["query"]
    assert "\x00" not in str(stored) and "\\x00" in str(stored)  # spelled out, as sent
    assert who_has_seen(client, keys, subject=kim.subject) == []
    assert "P-KIM-1" not in server_log(caplog) and "MINJI" not in server_log(caplog)


def test_a_nul_byte_in_a_path_is_answered_and_audited(client: TestClient[Litestar], keys: Keys) -> None:
    response = client.get("/api/v1/studies/abc%00def", headers=keys.headers("viewer"))
    assert response.status_code == 400
    entries = who_has_seen(client, keys, actor=keys.viewer.split("_")[1])
    assert [(e["status"], e["path"], e["resource_id"]) for e in entries] == [(400, "/api/v1/studies/abc\\x00def", "abc\\x00def")]


def test_a_refused_audit_insert_answers_503_and_logs_no_patient_data(
    client: TestClient[Litestar], keys: Keys, kim: Patient, core: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The database's message can quote the values being written (its JSONB error context once carried a patient ID)."""
    postgresql = core.engine.dialect.name == "postgresql"
    with core.engine.begin() as conn:  # a database that refuses every entry, quoting it (PostgreSQL) where it can
        if postgresql:
            conn.execute(text("CREATE FUNCTION test_refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused: % %', NEW.query::text, NEW.path; END $$"))
            conn.execute(text("CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION test_refuse_audit()"))
        else:
            conn.execute(text("CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    try:
        with caplog.at_level(logging.DEBUG):
            by_id = client.get("/api/v1/studies", params={"patient_id": "P-KIM-1"}, headers=keys.headers("viewer"))
            by_path = client.get(f"/api/v1/subjects/{kim.subject}/studies", headers=keys.headers("viewer"))
    finally:
        with core.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER test_refuse_audit" + (" ON audit_log" if postgresql else "")))
            if postgresql:
                conn.execute(text("DROP FUNCTION test_refuse_audit()"))
    for response in (by_id, by_path):
        assert response.status_code == 503 and response.json()["error"]["code"] == "audit_unavailable"
        assert "KIM" not in response.text
    logged = server_log(caplog)
    assert "P-KIM-1" not in logged and "MINJI" not in logged
    assert ("RaiseException (P0001)" if postgresql else "IntegrityError") in logged  # the failure's class is logged
    assert who_has_seen(client, keys, subject=kim.subject) == []


def test_a_wildcard_rest_search_and_a_wildcard_c_find_that_returned_a_patient_are_both_found_by_subject(
    client: TestClient[Litestar], keys: Keys, kim: Patient, lee: Patient, core: Any, s3: EmbeddedStorage
) -> None:
    """The same auditor's query finds the DICOM node's disclosure: a real node over this test's database, a real peer."""
    from pynetdicom import AE

    from dicom.server import DicomServer, build_services
    from imaging_sync.config import DicomConfig, DicomPeer
    from storage import ObjectReader

    config = DicomConfig(ae_title="ISYNC_TEST", host="127.0.0.1", port=0, peers={"PACS_A": DicomPeer(operations=["find"], addresses=["127.0.0.1"])})
    server = DicomServer(config, build_services(config, core.engine, ObjectReader(s3.registry())))
    port = server.start()
    try:
        peer = AE(ae_title="PACS_A")
        peer.add_requested_context("1.2.840.10008.5.1.4.1.2.2.1")  # Study Root Query/Retrieve - FIND
        assoc = peer.associate("127.0.0.1", port, ae_title="ISYNC_TEST")
        query = Dataset()
        query.QueryRetrieveLevel, query.PatientName, query.PatientID, query.StudyInstanceUID = "STUDY", "*", "", ""
        try:
            found = [ds.PatientID for status, ds in assoc.send_c_find(query, "1.2.840.10008.5.1.4.1.2.2.1") if status.Status == 0xFF00]
        finally:
            assoc.release()
    finally:
        server.stop()
    assert sorted(found) == ["P-KIM-1", "P-LEE-2"]
    searched = client.get("/api/v1/studies", params={"patient_name": "*"}, headers=keys.headers("viewer"))
    assert str(kim.subject) in {s["subject"]["id"] for s in searched.json()["items"]}

    seen = who_has_seen(client, keys, subject=kim.subject)
    assert [(e["channel"], e["action"], e["actor"]) for e in seen] == [("http", "search", keys.viewer.split("_")[1]), ("dicom", "c-find", "PACS_A")]
    dicom_entry = seen[1]
    assert dicom_entry["outcome"] == "started" and dicom_entry["completion"]["outcome"] == "success"  # written before the matches left
    assert dicom_entry["query"] == {"model": "STUDY", "QueryRetrieveLevel": "STUDY", "PatientName": "*"}
