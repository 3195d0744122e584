"""Audit before answer: every C-FIND, C-MOVE and C-GET that discloses patient data has its entry written before
the first match or file leaves, names whose data left, and is refused when it cannot be audited. A NUL byte in
an identifier is answered or refused, audited either way, and no log line carries a patient's name or ID."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from dicom_fixtures import CT, NODE_AE, SUBJECTS, Node, audit_entries
from pydicom.dataset import Dataset
from pynetdicom import AE
from scu import FIND, GET, MOVE, find, get_ae, identifier, scu
from sqlalchemy import Engine, select, text
from test_retrieve import PyStoreSCP

from imaging_sync import audit
from imaging_sync.db.models import Subject

# Every name and patient ID the index holds: none may appear in a log line.
PATIENT_DATA = sorted({s.patient_id for s in SUBJECTS} | {part for s in SUBJECTS if s.name for part in s.name.replace("=", "^").split("^") if len(part) > 1})
STUDY_2 = "1.2.826.0.1.2"  # KIM^MINJUN's MR study: 2 instances, Explicit VR Little Endian


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(caplog.handler.format(record) for record in caplog.records)


def assert_no_patient_data(caplog: pytest.LogCaptureFixture) -> None:
    text_ = logged(caplog)
    leaked = [value for value in PATIENT_DATA if value in text_]
    assert leaked == [], leaked


def subject_id(engine: Engine, patient_id: str) -> uuid.UUID:
    with engine.connect() as conn:
        return conn.execute(select(Subject.id).where(Subject.patient_id == patient_id)).scalar_one()


def with_nul(level: str, **keys: Any) -> Dataset:
    ds = identifier(level, **keys)
    ds.InstitutionName = "X\x00Y"  # not a key of ours: returned empty, never matched; its value still goes to the audit log
    return ds


@pytest.fixture
def pystore(node: Node) -> Iterator[PyStoreSCP]:
    store = PyStoreSCP(node.ports["PYSTORE"])
    yield store
    store.stop()


def test_a_nul_byte_beside_a_wildcard_c_find_is_answered_audited_and_kept_out_of_the_logs(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        status, results, _ = find(node.address, with_nul("STUDY", PatientName="*", PatientID="", StudyInstanceUID=""))
    assert status == 0x0000 and len(results) == 5  # every live study
    [entry] = audit_entries(node.engine, action="c-find")
    assert entry.started and (entry.outcome, entry.status, entry.detail["matches"]) == ("success", 0x0000, 5)
    assert entry["query"]["InstitutionName"] == "X\\x00Y"  # spelled out, as sent: PostgreSQL's JSONB refuses a NUL
    assert len(entry.disclosed["subject"]) == 4 and len(entry.disclosed["study"]) == 5
    assert_no_patient_data(caplog)


def test_a_nul_byte_in_a_matching_key_is_refused_as_an_invalid_value_and_audited(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        status, results, final = find(node.address, identifier("STUDY", PatientName="KIM\x00*", StudyInstanceUID=""))
    assert (status, results) == (0xC001, []) and final.OffendingElement == 0x00100010
    [entry] = audit_entries(node.engine, action="c-find")
    assert (entry.outcome, entry.status) == ("error", 0xC001) and entry["query"]["PatientName"] == "KIM\\x00*"
    assert entry.disclosed == {"subject": [], "study": []}
    assert_no_patient_data(caplog)


def test_a_nul_byte_in_a_c_get_and_a_c_move_is_answered_and_audited(node: Node, pystore: PyStoreSCP, caplog: pytest.LogCaptureFixture) -> None:
    kim = subject_id(node.engine, "P001")
    with caplog.at_level(logging.DEBUG):
        ae, roles = get_ae([(CT, ["1.2.840.10008.1.2.1"]), ("1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1"])])
        got: list[str] = []
        assoc = ae.associate(*node.address, ae_title=NODE_AE, ext_neg=roles, evt_handlers=[(_store_event(), lambda e: got.append(e.request.AffectedSOPInstanceUID) or 0)])
        try:
            final = [s for s, _ in assoc.send_c_get(with_nul("STUDY", StudyInstanceUID=STUDY_2), GET["STUDY"])][-1]
        finally:
            assoc.release()
        assert final.Status == 0x0000 and len(got) == 2
        mover = scu().associate(*node.address, ae_title=NODE_AE)
        try:
            moved = [s for s, _ in mover.send_c_move(with_nul("STUDY", StudyInstanceUID=STUDY_2), "PYSTORE", MOVE["STUDY"])][-1]
            refused = [s for s, _ in mover.send_c_move(with_nul("STUDY", StudyInstanceUID=STUDY_2), "NOWHERE", MOVE["STUDY"])][-1]
        finally:
            mover.release()
    assert moved.Status == 0x0000 and len(pystore.received) == 2
    assert refused.Status == 0xA801  # PS3.4 C.4.2.1.5: Move Destination unknown

    [get] = audit_entries(node.engine, action="c-get")
    ok_move, unknown = audit_entries(node.engine, action="c-move")
    for entry in (get, ok_move):
        assert entry.started and entry.outcome == "success" and entry.detail["completed"] == 2
        assert entry.disclosed["subject"] == [kim] and entry["query"]["InstitutionName"] == "X\\x00Y"
    # Refused for its destination: the entry names the destination and what was asked; nothing left.
    assert not unknown.started and (unknown.outcome, unknown.status) == ("denied", 0xA801)
    assert unknown.detail["destination"] == "NOWHERE" and unknown["query"]["StudyInstanceUID"] == STUDY_2
    assert unknown["query"]["InstitutionName"] == "X\\x00Y" and unknown.disclosed == {"subject": [], "study": []}
    assert_no_patient_data(caplog)


def _store_event() -> Any:
    from pynetdicom import evt

    return evt.EVT_C_STORE


def test_a_wildcard_c_find_is_found_by_the_auditors_question_who_has_seen_this_patient(node: Node) -> None:
    kim, lee = subject_id(node.engine, "P001"), subject_id(node.engine, "P003")
    status, results, _ = find(node.address, identifier("PATIENT", PatientName="*", PatientID=""), "PATIENT", calling_ae="AUDITED_SCU")
    assert status == 0x0000 and "P001" in {str(r.PatientID) for r in results}
    find(node.address, identifier("STUDY", PatientID="P003", StudyInstanceUID=""))  # someone else looks at LEE only
    with node.engine.connect() as conn:
        seen_kim = audit.search(conn, subject=kim)
        seen_lee = audit.search(conn, subject=lee)
    assert [(e["channel"], e["actor"], e["action"], e["resource_type"]) for e in seen_kim] == [("dicom", "AUDITED_SCU", "c-find", "patient")]
    assert [e["actor"] for e in seen_lee] == ["TEST_SCU", "AUDITED_SCU"]


@pytest.fixture
def refusing_audit(node: Node) -> Iterator[Node]:
    """The node's database refuses every new audit entry, quoting it in its error where it can (PostgreSQL)."""
    engine = node.engine
    postgresql = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        if postgresql:
            conn.execute(text("CREATE FUNCTION test_refuse_dicom_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused: %', NEW.query::text; END $$"))
            conn.execute(text("CREATE TRIGGER test_refuse_dicom_audit BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION test_refuse_dicom_audit()"))
        else:
            conn.execute(text("CREATE TRIGGER test_refuse_dicom_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    yield node
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER test_refuse_dicom_audit" + (" ON audit_log" if postgresql else "")))
        if postgresql:
            conn.execute(text("DROP FUNCTION test_refuse_dicom_audit()"))


def test_when_the_audit_log_cannot_be_written_no_match_and_no_file_leaves(refusing_audit: Node, pystore: PyStoreSCP, caplog: pytest.LogCaptureFixture) -> None:
    node = refusing_audit
    with caplog.at_level(logging.DEBUG):
        status, results, final = find(node.address, identifier("STUDY", PatientName="KIM*", PatientID="", StudyInstanceUID=""))
        mover = scu().associate(*node.address, ae_title=NODE_AE)
        try:
            moved = [s for s, _ in mover.send_c_move(identifier("STUDY", StudyInstanceUID=STUDY_2), "PYSTORE", MOVE["STUDY"])]
        finally:
            mover.release()
    assert (status, results) == (0xC004, []) and "audited" in final.ErrorComment  # unable to process: not audited, not answered
    assert moved[-1].Status == 0xC004 and moved[-1].NumberOfCompletedSuboperations == 0 and pystore.received == {}
    text_ = logged(caplog)
    assert "could not be written" in text_ and ("RaiseException (P0001)" if node.engine.dialect.name == "postgresql" else "IntegrityError") in text_
    assert_no_patient_data(caplog)


def test_the_pynetdicom_peer_sees_the_first_match_only_after_its_entry_is_committed(node: Node) -> None:
    """Read the audit log from the peer's side, when the first match arrives: the entry is already there."""
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(FIND["STUDY"])
    assoc = ae.associate(*node.address, ae_title=NODE_AE)
    seen_at_first_match: list[Any] = []
    try:
        for status, _ in assoc.send_c_find(identifier("STUDY", PatientID="P001", StudyInstanceUID=""), FIND["STUDY"]):
            if status.Status == 0xFF00 and not seen_at_first_match:
                seen_at_first_match = audit_entries(node.engine, action="c-find")
    finally:
        assoc.release()
    [entry] = seen_at_first_match
    assert entry["outcome"] == "started" and len(entry.disclosed["study"]) == 2
