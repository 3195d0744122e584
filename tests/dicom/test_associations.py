"""Associations: verification, the calling-AE allowlist, cancel, concurrency, audit rows and clean logs."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dicom_fixtures import NODE_AE, SUBJECTS, Files, Node, audit_entries, run_tool, start_node
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from scu import find, identifier, values
from sqlalchemy import Engine, insert

from imaging_sync.config import DicomPeer
from imaging_sync.db.models import Study, Subject
from imaging_sync.ids import new_id


def test_echo_with_dcmtk_echoscu(sqlite_node: Node, dcmtk: Path) -> None:
    out = run_tool(dcmtk, "echoscu", "-aec", NODE_AE, "127.0.0.1", str(sqlite_node.port))
    assert out.returncode == 0, out.stderr


def test_an_unknown_calling_ae_is_rejected_at_association_time(sqlite_engine: Engine, files: Files) -> None:
    node = start_node(sqlite_engine, files, peers={"GOOD_AE": DicomPeer(operations=["echo"])})
    try:
        ae = AE(ae_title="EVIL_AE")
        ae.add_requested_context(Verification)
        refused = ae.associate(*node.address, ae_title=NODE_AE)
        assert refused.is_rejected and not refused.is_established
        ae = AE(ae_title="GOOD_AE")
        ae.add_requested_context(Verification)
        accepted = ae.associate(*node.address, ae_title=NODE_AE)
        assert accepted.is_established and accepted.send_c_echo().Status == 0x0000
        accepted.release()
    finally:
        node.server.stop()


def test_every_find_is_audited_with_caller_keys_and_count(node: Node) -> None:
    status, results, _ = find(node.address, identifier("STUDY", PatientName="KIM*", StudyInstanceUID=""), calling_ae="AUDITED_SCU")
    assert status == 0x0000 and len(results) == 2
    [row] = audit_entries(node.engine, action="c-find")
    assert (row["channel"], row["actor"], row["client_addr"], row.outcome, row.status) == ("dicom", "AUDITED_SCU", "127.0.0.1", "success", 0)
    assert row["query"] == {"model": "STUDY", "QueryRetrieveLevel": "STUDY", "PatientName": "KIM*"}
    assert row.detail["matches"] == 2 and row["resource_type"] == "study"
    assert row.started and len(row.disclosed["subject"]) == 1 and len(row.disclosed["study"]) == 2  # KIM^MINJUN's two studies


def test_refused_queries_are_audited_as_invalid(sqlite_node: Node) -> None:
    status, _, _ = find(sqlite_node.address, identifier("SERIES", SeriesInstanceUID=""))
    assert status == 0xA900
    [row] = audit_entries(sqlite_node.engine)
    assert (row.outcome, row.status, row["action"]) == ("error", 0xA900, "c-find")
    assert not row.started and row.disclosed == {"subject": [], "study": []}  # nothing left, one complete entry


def test_logs_never_carry_patient_names_or_ids(sqlite_node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    find(sqlite_node.address, identifier("STUDY", PatientName="KIM^MINJUN", PatientID="P001", StudyInstanceUID=""))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "c-find" in text and "2 matches" in text  # the administrator still sees what happened
    assert "KIM" not in text.upper() and "P001" not in text


MATCHES = 3000


def test_cancel_ends_a_find_with_fe00(sqlite_engine: Engine, files: Files, dcmtk: Path) -> None:
    """DCMTK's findscu cancels after the first response; the node stops within a few matches.

    pynetdicom's reactor sends before it reads: before handlers.MAX_UNSENT_RESPONSES, every match was
    queued at once and the cancel was read after most of them (18,500 of 20,000 in one run).
    """
    from dicom_fixtures import load_index

    load_index(sqlite_engine, files)
    now = dt.datetime.now(dt.UTC)
    subject_id = new_id()
    with sqlite_engine.begin() as conn:
        conn.execute(insert(Subject.__table__), [{"id": subject_id, "source_partner": "b", "source_priority": 0, "issuer": "", "patient_id": "BULK",
                                                  "patient_name": "BULK^PATIENT", "patient_name_search": "bulk^patient", "created_at": now, "updated_at": now}])
        conn.execute(insert(Study.__table__), [
            {"id": new_id(), "source_partner": "b", "source_priority": 0, "study_instance_uid": f"1.2.826.0.9.{i}", "subject_id": subject_id,
             "study_date": dt.date(2020, 1, 1), "created_at": now, "updated_at": now}
            for i in range(MATCHES)
        ])
    node = start_node(sqlite_engine, files)
    try:
        result = run_tool(
            dcmtk, "findscu", "-S", "-aet", "FINDSCU", "-aec", NODE_AE, "--cancel", "1",
            "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=BULK", "-k", "StudyInstanceUID", "127.0.0.1", str(node.port), timeout=60,
        )
    finally:
        node.server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = audit_entries(sqlite_engine)
    assert row.status == 0xFE00 and row.detail["matches"] < 100
    assert len(row.disclosed["study"]) < 200  # disclosed batch by batch, not the 3000 studies the query matched


def test_eight_concurrent_associations_each_get_their_own_answers(node: Node) -> None:
    expected = {
        subj.patient_id: sorted(std.uid for std in subj.studies if not std.deleted)
        for subj in SUBJECTS if not subj.deleted
    }
    patients = sorted(expected) * 2  # 8 associations, 4 different questions
    barrier = threading.Barrier(len(patients))

    def ask(patient_id: str) -> tuple[str, list[str]]:
        barrier.wait(timeout=10)
        answers = []
        for _ in range(3):
            status, results, _ = find(node.address, identifier("STUDY", PatientID=patient_id, StudyInstanceUID="", PatientName=""), calling_ae=f"SCU_{patient_id[:4]}")
            assert status == 0x0000
            answers = values(results, "StudyInstanceUID")
        return patient_id, answers

    with ThreadPoolExecutor(len(patients)) as pool:
        got = list(pool.map(ask, patients))
    assert all(answers == expected[pid] for pid, answers in got), got
