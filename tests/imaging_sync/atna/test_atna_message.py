"""The DICOM audit messages an audit entry becomes: event codes, participants, and the PS3.15 A.5.1 schema."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from imaging_sync.atna.message import Entry, Patient, Report, Source, build_messages
from imaging_sync.atna.syslog import format_message, frame

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).with_name("ps3_15_audit_message.rng"))))
AT = dt.datetime(2026, 12, 3, 9, 30, tzinfo=dt.UTC)
SOURCE = Source("imaging-sync", "index01.hospital.internal", "SEOUL-GENERAL", max_objects=3)


def entry(**values: Any) -> Entry:
    defaults: dict[str, Any] = {"id": uuid.uuid4(), "at": AT, "channel": "http", "actor": "isk_viewer1", "action": "search", "outcome": "success",
                                "client_addr": "10.1.2.3", "status": 200}
    return Entry(**{**defaults, **values})


def parsed(report: Report) -> list[etree._Element]:
    documents = [etree.fromstring(xml) for xml in build_messages(report, SOURCE)]
    for document in documents:
        SCHEMA.assertValid(document)
    return documents


def code(document: etree._Element, path: str) -> str:
    return str(document.find(path).get("csd-code"))


def objects(document: etree._Element) -> list[tuple[str, str]]:
    return [(o.find("ParticipantObjectIDTypeCode").get("csd-code"), o.get("ParticipantObjectID")) for o in document.findall("ParticipantObjectIdentification")]


def test_a_rest_search_is_a_query_with_its_filters_and_the_patients_and_studies_it_disclosed() -> None:
    report = Report(entry(path="/api/v1/studies", query={"patient_id": "P-1"}), "entry", "success", AT,
                    patients=(Patient("P-1", "HOSP"),), study_uids=("1.2.3.4",))
    [document] = parsed(report)
    assert code(document, "EventIdentification/EventID") == "110112"
    assert document.find("EventIdentification").get("EventOutcomeIndicator") == "0"
    assert objects(document) == [("12", "/api/v1/studies"), ("2", "P-1^^^HOSP"), ("110180", "1.2.3.4")]
    query = document.find("ParticipantObjectIdentification/ParticipantObjectQuery").text
    assert json.loads(base64.b64decode(query)) == {"patient_id": "P-1"}
    requestor = document.find("ActiveParticipant")
    assert (requestor.get("UserID"), requestor.get("UserIsRequestor"), requestor.get("NetworkAccessPointID"), requestor.get("NetworkAccessPointTypeCode")) == (
        "isk_viewer1", "true", "10.1.2.3", "2")
    assert document.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") == "SEOUL-GENERAL"


def test_a_c_find_query_names_its_information_model_sop_class() -> None:
    report = Report(entry(channel="dicom", actor="PACS1", action="c-find", outcome="started", query={"model": "STUDY", "PatientID": "P-1"}),
                    "completion", "success", AT, status=0)
    [document] = parsed(report)
    assert code(document, "EventIdentification/EventID") == "110112"
    assert objects(document) == [("110181", "1.2.840.10008.5.1.4.1.2.2.1")]


@pytest.mark.parametrize(("phase", "outcome", "event_id", "indicator"), [
    ("start", "started", "110102", "0"),
    ("completion", "success", "110104", "0"),
    ("completion", "error", "110104", "8"),
    ("abandoned", "error", "110104", "8"),
])
def test_a_c_move_begins_and_ends_as_transfer_events(phase: str, outcome: str, event_id: str, indicator: str) -> None:
    report = Report(entry(channel="dicom", actor="PACS1", action="c-move", outcome="started", detail={"destination": "WS1"}), phase, outcome, AT,  # type: ignore[arg-type]
                    patients=(Patient("P-1"),), study_uids=("1.2.3",), abandoned_after=60)
    [document] = parsed(report)
    assert code(document, "EventIdentification/EventID") == event_id
    assert document.find("EventIdentification").get("EventOutcomeIndicator") == indicator
    assert objects(document) == [("2", "P-1"), ("110180", "1.2.3")]
    roles = [(p.get("UserID"), p.find("RoleIDCode").get("csd-code") if p.find("RoleIDCode") is not None else None) for p in document.findall("ActiveParticipant")]
    assert roles == [("PACS1", None), ("imaging-sync", "110153"), ("WS1", "110152")]


@pytest.mark.parametrize(("values", "event_id", "type_code", "indicator"), [
    ({"outcome": "denied", "status": 401, "actor": "anonymous", "detail": {"error": "unauthenticated"}}, "110114", "110122", "4"),
    ({"outcome": "denied", "status": 403, "action": "trigger_sync"}, "110113", "110132", "4"),
    ({"channel": "dicom", "outcome": "denied", "action": "associate", "actor": "STRANGER"}, "110113", "110126", "4"),
    ({"action": "create_api_key", "channel": "cli", "actor": "cli:root"}, "110113", "110129", "0"),
    ({"action": "read_audit", "resource_type": "audit_log"}, "110101", None, "0"),
    ({"action": "issue_url", "resource_type": "instance"}, "110103", None, "0"),
    ({"action": "read", "outcome": "not_found", "status": 404}, "110103", None, "4"),
])
def test_each_kind_of_entry_has_its_event_code(values: dict[str, Any], event_id: str, type_code: str | None, indicator: str) -> None:
    [document] = parsed(Report(e := entry(**values), "entry", e.outcome, AT, status=e.status, detail=e.detail))
    assert code(document, "EventIdentification/EventID") == event_id
    found = document.find("EventIdentification/EventTypeCode")
    assert (found.get("csd-code") if found is not None else None) == type_code
    assert document.find("EventIdentification").get("EventOutcomeIndicator") == indicator
    assert str(e.id) in document.find("EventIdentification/EventOutcomeDescription").text


def test_many_disclosures_are_split_into_parts_each_a_whole_message() -> None:
    patients = tuple(Patient(f"P-{n}") for n in range(4))
    report = Report(entry(action="read"), "entry", "success", AT, patients=patients, study_uids=("1.2.3", "1.2.4"))
    documents = parsed(report)
    assert [len(objects(d)) for d in documents] == [3, 3]
    assert [o for d in documents for o in objects(d)] == [("2", f"P-{n}") for n in range(4)] + [("110180", "1.2.3"), ("110180", "1.2.4")]
    assert "part 2 of 2" in documents[1].find("EventIdentification/EventOutcomeDescription").text


def test_characters_xml_cannot_carry_are_replaced_and_the_message_is_the_same_when_built_again() -> None:
    report = Report(entry(actor="AE\x01X", action="read"), "entry", "success", AT, patients=(Patient("P\x00 1"),))
    first = build_messages(report, SOURCE)
    assert first == build_messages(report, SOURCE)
    [document] = parsed(report)
    assert document.find("ActiveParticipant").get("UserID") == "AE?X"


def test_the_syslog_message_is_rfc_5424_with_the_ihe_msgid_and_octet_counted_framing() -> None:
    message = format_message(b"<AuditMessage/>", at=AT, hostname="index 01", app_name="imaging-sync", procid="42", failure=True)
    assert message == b"<84>1 2026-12-03T09:30:00.000000Z index_01 imaging-sync 42 IHE+RFC-3881 - \xef\xbb\xbf<AuditMessage/>"
    assert frame(b"abc") == b"3 abc"
