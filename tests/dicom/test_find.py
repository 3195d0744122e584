"""C-FIND with pynetdicom as the peer: PS3.4 C.2.2.2 matching at every level, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from dicom_fixtures import NODE_AE, Node
from pydicom.dataset import Dataset
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from scu import FIND, find, identifier, values
from sqlalchemy import insert

from imaging_sync.db.models import Study, Subject
from imaging_sync.ids import new_id
from imaging_sync.person_names import search_form

# (model, level, keys, the key to read back, expected values) — answers from conftest.SUBJECTS.
STUDY_CASES = {
    "single value": ("STUDY", dict(AccessionNumber="ACC002", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.2"]),
    "universal returns all live studies": ("STUDY", dict(StudyInstanceUID=""), "StudyInstanceUID",
                                           ["1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3", "1.2.826.0.1.4", "1.2.826.0.1.6"]),
    "wildcard star": ("STUDY", dict(AccessionNumber="ACC00*", StudyInstanceUID=""), "StudyInstanceUID",
                      ["1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3", "1.2.826.0.1.4"]),
    "wildcard question mark": ("STUDY", dict(AccessionNumber="ACC00?", StudyInstanceUID=""), "AccessionNumber", ["ACC001", "ACC002", "ACC003", "ACC004"]),
    "wildcard is case-sensitive outside names": ("STUDY", dict(AccessionNumber="acc*", StudyInstanceUID=""), "StudyInstanceUID", []),
    "SQL metacharacters match literally": ("STUDY", dict(AccessionNumber="AC%_*", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.6"]),
    "percent is not a wildcard": ("STUDY", dict(AccessionNumber="ACC%", StudyInstanceUID=""), "StudyInstanceUID", []),
    "date range closed": ("STUDY", dict(StudyDate="20240101-20240131", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.1", "1.2.826.0.1.4"]),
    "date range open end": ("STUDY", dict(StudyDate="20240201-", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.2"]),
    "date range open start": ("STUDY", dict(StudyDate="-20231231", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.3"]),
    "single date": ("STUDY", dict(StudyDate="20240115", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.1"]),
    "time range": ("STUDY", dict(StudyTime="0800-1400", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.1"]),
    "time reduced precision covers the hour": ("STUDY", dict(StudyTime="14", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.2"]),
    "uid list": ("STUDY", dict(StudyInstanceUID=["1.2.826.0.1.1", "1.2.826.0.1.3", "1.2.826.0.1.5"]), "StudyInstanceUID", ["1.2.826.0.1.1", "1.2.826.0.1.3"]),
    "name case-insensitive": ("STUDY", dict(PatientName="kim^minjun", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.1", "1.2.826.0.1.2"]),
    "name wildcard": ("STUDY", dict(PatientName="LEE*", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.4"]),
    "name with SQL metacharacters": ("STUDY", dict(PatientName="O_NEIL^JO%", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.6"]),
    "referring physician case-insensitive": ("STUDY", dict(ReferringPhysicianName="SMITH*", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.1", "1.2.826.0.1.2"]),
    "modalities in study matches any series": ("STUDY", dict(ModalitiesInStudy="SR", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.1"]),
    "modalities in study list": ("STUDY", dict(ModalitiesInStudy=["MR", "US"], StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.2", "1.2.826.0.1.3", "1.2.826.0.1.4"]),
    "deleted series do not count for modalities": ("STUDY", dict(ModalitiesInStudy="CT", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.1", "1.2.826.0.1.3"]),
    "patient id and sex together": ("STUDY", dict(PatientID="P003", PatientSex="F", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.4"]),
    "birth date range": ("STUDY", dict(PatientBirthDate="19700101-19791231", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.3"]),
    "description wildcard with unicode": ("STUDY", dict(StudyDescription="CT*", StudyInstanceUID=""), "StudyInstanceUID", ["1.2.826.0.1.1", "1.2.826.0.1.3"]),
    "lone star is universal": ("STUDY", dict(AccessionNumber="*", StudyInstanceUID="1.2.826.0.1.6"), "StudyInstanceUID", ["1.2.826.0.1.6"]),
}


def test_study_level_matching_rules_give_the_known_answers(node: Node) -> None:
    wrong = {}
    for case, (model, keys, read, expected) in sorted(STUDY_CASES.items()):
        status, results, _ = find(node.address, identifier("STUDY", **keys), model)
        if status != 0x0000 or values(results, read) != sorted(expected):
            wrong[case] = (hex(status), values(results, read))
    assert wrong == {}


def test_study_responses_carry_exactly_the_requested_keys_and_counts(node: Node) -> None:
    ds = identifier(
        "STUDY", StudyInstanceUID="1.2.826.0.1.1", PatientName="", PatientID="", StudyDate="", StudyTime="", AccessionNumber="",
        ModalitiesInStudy="", NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="", StudyID="",
    )
    status, [match], _ = find(node.address, ds)
    assert status == 0x0000
    assert {e.keyword for e in match} == {e.keyword for e in ds} | {"RetrieveAETitle"}  # always: where to C-MOVE from
    assert (match.PatientName, match.PatientID, match.StudyDate, match.StudyTime) == ("KIM^MINJUN", "P001", "20240115", "083000")
    assert list(match.ModalitiesInStudy) == ["CT", "SR"]
    assert (match.NumberOfStudyRelatedSeries, match.NumberOfStudyRelatedInstances) == (3, 6)
    assert match.StudyID == "" and "SpecificCharacterSet" not in match  # ASCII only: no character set needed


def test_patient_level_counts_only_live_entities(node: Node) -> None:
    ds = identifier("PATIENT", PatientID="", PatientName="", PatientBirthDate="", PatientSex="", IssuerOfPatientID="",
                    NumberOfPatientRelatedStudies="", NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances="")
    status, results, _ = find(node.address, ds, "PATIENT")
    assert status == 0x0000
    by_id = {r.PatientID: r for r in results}
    assert sorted(by_id) == ["P%5_", "P001", "P002", "P003"]  # P004 is soft-deleted
    p3 = by_id["P003"]
    assert (p3.NumberOfPatientRelatedStudies, p3.NumberOfPatientRelatedSeries, p3.NumberOfPatientRelatedInstances) == (1, 1, 3)
    assert (p3.PatientBirthDate, p3.PatientSex, p3.IssuerOfPatientID) == ("19901231", "F", "HOSP-B")
    assert by_id["P%5_"].IssuerOfPatientID == ""


PATIENT_CASES = [
    (dict(PatientName="*MINJUN"), ["P001"]),
    (dict(PatientSex="F"), ["P002", "P003"]),
    (dict(PatientID="P00?"), ["P001", "P002", "P003"]),
    (dict(PatientID="P%5_"), ["P%5_"]),
    (dict(PatientBirthDate="-19791231"), ["P002"]),
    (dict(PatientName="PARK*"), []),  # soft-deleted
]


def test_patient_level_matching(node: Node) -> None:
    for keys, expected in PATIENT_CASES:
        status, results, _ = find(node.address, identifier("PATIENT", **{"PatientID": "", **keys}), "PATIENT")
        assert (status, values(results, "PatientID")) == (0x0000, expected), keys


def test_series_level_matching_and_counts(node: Node) -> None:
    base = dict(StudyInstanceUID="1.2.826.0.1.1", SeriesInstanceUID="", Modality="", SeriesNumber="", NumberOfSeriesRelatedInstances="")
    status, results, _ = find(node.address, identifier("SERIES", **base))
    assert status == 0x0000
    assert [(r.SeriesNumber, r.Modality, r.NumberOfSeriesRelatedInstances) for r in sorted(results, key=lambda r: r.SeriesNumber)] == [
        (1, "CT", 3), (2, "CT", 2), (3, "SR", 1)
    ]
    for keys, expected in [
        (dict(Modality="SR"), ["1.2.826.0.1.1.3"]),
        (dict(SeriesNumber="2"), ["1.2.826.0.1.1.2"]),
        (dict(SeriesDescription="*MPR"), ["1.2.826.0.1.1.2"]),
        (dict(SeriesInstanceUID=["1.2.826.0.1.1.1", "1.2.826.0.1.1.3"]), ["1.2.826.0.1.1.1", "1.2.826.0.1.1.3"]),
    ]:
        _, results, _ = find(node.address, identifier("SERIES", **{**base, **keys}))
        assert values(results, "SeriesInstanceUID") == expected, keys
    # Patient Root needs the patient's unique key too.
    status, results, _ = find(node.address, identifier("SERIES", PatientID="P003", **{**base, "StudyInstanceUID": "1.2.826.0.1.4"}), "PATIENT")
    assert status == 0x0000 and values(results, "SeriesInstanceUID") == ["1.2.826.0.1.4.1"]  # the deleted series is not listed


def test_image_level_matching(node: Node) -> None:
    base = dict(StudyInstanceUID="1.2.826.0.1.4", SeriesInstanceUID="1.2.826.0.1.4.1", SOPInstanceUID="", SOPClassUID="", InstanceNumber="")
    status, results, _ = find(node.address, identifier("IMAGE", **base))
    assert status == 0x0000
    assert values(results, "InstanceNumber") == ["1", "2", "3"]  # number 9 is soft-deleted
    _, results, _ = find(node.address, identifier("IMAGE", **{**base, "InstanceNumber": "3"}))
    assert values(results, "SOPInstanceUID") == ["1.2.826.0.1.4.1.3"]
    _, results, _ = find(node.address, identifier("IMAGE", **{**base, "SOPInstanceUID": ["1.2.826.0.1.4.1.1", "1.2.826.0.1.4.1.9"]}))
    assert values(results, "SOPInstanceUID") == ["1.2.826.0.1.4.1.1"]


def test_korean_names_are_matched_and_answered_in_utf8(node: Node) -> None:
    ds = identifier("STUDY", charset="ISO_IR 192", PatientName="김*", StudyInstanceUID="", StudyDescription="", ReferringPhysicianName="")
    status, [match], _ = find(node.address, ds)
    assert status == 0x0000
    assert match.SpecificCharacterSet == "ISO_IR 192"
    assert (str(match.PatientName), match.StudyDescription, str(match.ReferringPhysicianName)) == ("김^민준", "CT 흉부", "이^서연")


def test_korean_query_in_iso_2022_ir_149_is_decoded(node: Node) -> None:
    ds = identifier("PATIENT", charset=["", "ISO 2022 IR 149"], PatientName="김^민준", PatientID="")
    status, results, _ = find(node.address, ds, "PATIENT")
    assert status == 0x0000 and values(results, "PatientID") == ["P002"]


def test_latin1_query_is_decoded(node: Node) -> None:
    ds = identifier("STUDY", charset="ISO_IR 100", PatientName="Lee^Seoyeon", StudyInstanceUID="")
    status, results, _ = find(node.address, ds)
    assert status == 0x0000 and values(results, "StudyInstanceUID") == ["1.2.826.0.1.4"]


def test_patient_name_matches_accent_insensitively(node: Node) -> None:
    """Accents fold away in the stored name and in the query (person_names.search_form), as Orthanc matches PN."""
    now = dt.datetime.now(dt.UTC)
    entity = {"source_partner": "b", "source_priority": 0, "created_at": now, "updated_at": now}
    subject_id = new_id()
    with node.engine.begin() as conn:
        conn.execute(insert(Subject.__table__).values(id=subject_id, issuer="", patient_id="P-ZOLA", patient_name="ÉMILE^ZOLA", patient_name_search=search_form("ÉMILE^ZOLA"), **entity))
        conn.execute(insert(Study.__table__).values(id=new_id(), study_instance_uid="1.2.826.0.1.90", subject_id=subject_id, study_date=dt.date(2024, 3, 1), **entity))
    for charset, pattern in (("ISO_IR 192", "emile*"), ("ISO_IR 192", "Emile^Zola"), ("ISO_IR 100", "Émile*"), ("ISO_IR 192", "*^zolà")):
        status, results, _ = find(node.address, identifier("STUDY", charset=charset, PatientName=pattern, StudyInstanceUID=""))
        assert (status, values(results, "StudyInstanceUID")) == (0x0000, ["1.2.826.0.1.90"]), (charset, pattern)
        assert [str(r.PatientName) for r in results] == ["ÉMILE^ZOLA"]  # answered as stored


def test_combined_date_time_range_when_negotiated(node: Node) -> None:
    """C.2.2.2.5.1: 20240115 0800 to 20240131 0000 is one interval; without negotiation date and time match apart."""
    ds = identifier("STUDY", StudyDate="20240115-20240131", StudyTime="0900-0000", StudyInstanceUID="")
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = FIND["STUDY"]
    item.service_class_application_information = b"\x00\x01"
    status, results, _ = find(node.address, ds, ext_neg=[item])
    assert status == 0x0000 and values(results, "StudyInstanceUID") == ["1.2.826.0.1.4"]  # 2024-01-15 08:30 is before 09:00
    status, results, _ = find(node.address, ds)
    assert status == 0x0000 and values(results, "StudyInstanceUID") == []  # time 0900-0000 is an empty range on its own


REFUSED = [
    ("PATIENT", dict(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.826.0.1.1", SeriesInstanceUID=""), 0xA900),  # no PatientID
    ("STUDY", dict(QueryRetrieveLevel="SERIES", SeriesInstanceUID=""), 0xA900),  # no StudyInstanceUID
    ("STUDY", dict(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1.2.826.0.1.1", SOPInstanceUID=""), 0xA900),
    ("STUDY", dict(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.826.0.1.*", SeriesInstanceUID=""), 0xA900),
    ("STUDY", dict(QueryRetrieveLevel="PATIENT", PatientID=""), 0xA900),  # no PATIENT level in Study Root
    ("STUDY", dict(QueryRetrieveLevel="FRAME", StudyInstanceUID=""), 0xA900),
    ("STUDY", dict(StudyInstanceUID=""), 0xA900),  # no level at all
    ("STUDY", dict(QueryRetrieveLevel="STUDY", StudyDate="2024-01-01"), 0xC001),  # malformed range
    ("STUDY", dict(QueryRetrieveLevel="STUDY", StudyDate="20241301"), 0xC001),
    ("STUDY", dict(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.abc"), 0xC001),
]


def test_identifiers_the_model_does_not_allow_are_refused_with_a_named_status(sqlite_node: Node) -> None:
    for model, keys, expected_status in REFUSED:
        ds = Dataset()
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
        status, results, final = find(sqlite_node.address, ds, model)
        assert (status, results) == (expected_status, []), keys
        assert final.get("ErrorComment"), keys


def test_every_level_answers_with_the_nodes_retrieve_ae_title_whether_asked_or_not(node: Node) -> None:
    """PS3.4 C.4.1.2.1: Retrieve AE Title tells a PACS where to send its C-MOVE; asked with another value, it is not matched."""
    queries = {
        "PATIENT": ("PATIENT", identifier("PATIENT", PatientID="P001")),
        "STUDY": ("STUDY", identifier("STUDY", StudyInstanceUID="1.2.826.0.1.1", RetrieveAETitle="SOMEONE_ELSE")),
        "SERIES": ("STUDY", identifier("SERIES", StudyInstanceUID="1.2.826.0.1.1", SeriesInstanceUID="")),
        "IMAGE": ("STUDY", identifier("IMAGE", StudyInstanceUID="1.2.826.0.1.1", SeriesInstanceUID="1.2.826.0.1.1.1", SOPInstanceUID="")),
    }
    for level, (model, ds) in queries.items():
        status, results, _ = find(node.address, ds, model)
        assert status == 0x0000 and results, level
        assert {r.RetrieveAETitle for r in results} == {NODE_AE}, level
