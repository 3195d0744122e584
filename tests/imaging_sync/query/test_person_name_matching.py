"""Person names match the same through REST search and C-FIND, for PatientName and ReferringPhysicianName alike.

One table of Unicode cases (accents, Hangul, decomposed input, ``=``-separated
component groups, ``^`` components, wildcards, a lone ``*``), one index built
by the sync's own page writer from partner items (so the search forms are the
ones the sync keeps), and four ways to ask: REST ``patient_name`` and
``referring_physician_name`` on ``GET /api/v1/studies``, C-FIND PatientName
and ReferringPhysicianName at STUDY level through a pynetdicom peer. Every
way must give each query the expected patients, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from sqlalchemy import Engine

from app.assembly import api_app, open_core
from devtools.index_state import stale_facts
from dicom.server import DicomServer, build_services
from imaging_sync import apikeys
from imaging_sync.config import DatabaseConfig, DicomConfig, Settings
from imaging_sync.core import Core
from imaging_sync.dto import StudyDTO
from imaging_sync.ids import new_id
from imaging_sync.partners.wire import ItemParser
from imaging_sync.sync.apply import PageWriter
from imaging_sync.vocabulary import Vocabulary
from storage import BucketRegistry, ObjectReader

# patient id -> the name it has, as its patient and as its study's referring physician
NAMES: dict[str, str | None] = {
    "P-ZOLA": "ÉMILE^ZOLA",
    "P-HONG3": "HONG^GILDONG=洪^吉洞=홍^길동",  # three component groups (PS3.5 §6.2)
    "P-HONG": "홍^길동",
    "P-JOSE": unicodedata.normalize("NFD", "JOSÉ^MARÍA"),  # stored decomposed, as some systems send it
    "P-KIM": "KIM^MINJUN",
    "P-STRASSE": "Straße^Anna",
    "P-ZOE": "Müller^Zoë",
    "P-NONAME": None,
}
EVERYONE = set(NAMES)

# query -> the patients it finds, through either attribute and either edge
CASES: dict[str, set[str]] = {
    "émile*": {"P-ZOLA"},  # accents fold away, in the pattern and in the data
    "EMILE*": {"P-ZOLA"},
    unicodedata.normalize("NFD", "Émile^Zola"): {"P-ZOLA"},  # decomposed input
    "*^zolà": {"P-ZOLA"},  # an accent the data does not have
    "émile^zola^": {"P-ZOLA"},  # an empty trailing component is no component (PS3.5 §6.2.1.1)
    "ÉMILE^ZOLA^^ ": {"P-ZOLA"},
    "émile": set(),  # no wildcard: the whole name or a whole group, not a part of it
    "홍*": {"P-HONG3", "P-HONG"},  # a pattern without "=" matches any one group
    "*길동": {"P-HONG3", "P-HONG"},
    "홍^길동": {"P-HONG3", "P-HONG"},  # the last group, or the whole name
    "洪^吉洞": {"P-HONG3"},  # a middle group
    "hong^gildong": {"P-HONG3"},  # the first group
    "HONG^GILDONG=洪^吉洞=홍^길동": {"P-HONG3"},  # with "=": the whole name, group by group
    "hong^gildong=*": {"P-HONG3"},
    "hong^gildong=洪*": {"P-HONG3"},
    "jose^maria": {"P-JOSE"},
    unicodedata.normalize("NFD", "josé*"): {"P-JOSE"},
    "kim^min?un": {"P-KIM"},  # ? is exactly one character
    "kim^min?": set(),
    "STRASSE^ANNA": {"P-STRASSE"},  # case folding, not lower-casing: ß is ss
    "straße*": {"P-STRASSE"},
    "muller^zoe": {"P-ZOE"},
    "MÜLLER^ZOË": {"P-ZOE"},
    "ｍｕｌｌｅｒ*": {"P-ZOE"},  # full-width Latin
    "*": EVERYONE,  # universal matching (C.2.2.2.3): a study without the name too
    "%*": set(),  # SQL metacharacters are literal
    "k_m*": set(),
}
PEER = "PN_SCU"


def study_item(n: int, patient_id: str, name: str | None) -> dict[str, Any]:
    uid = f"1.2.826.0.1.3680043.10.555.{n}"
    return {
        "id": f"s-{n}", "updated_at": "2026-12-01T10:00:00Z", "study_instance_uid": uid, "study_date": f"2024-01-{n + 1:02d}",
        "referring_physician_name": name,
        "subject": {"id": f"p-{n}", "patient_id": patient_id, "name": name},
        "series": [{"id": f"e-{n}", "series_instance_uid": f"{uid}.1", "modality": "CT",
                    "instances": [{"id": f"i-{n}", "sop_instance_uid": f"{uid}.1.1", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                                   "location": f"s3://pn-bucket/{n}.dcm"}]}],
    }


@pytest.fixture
def core(db_url: str, engine: Engine) -> Iterator[Core]:
    """The index the sync writes from partner items (the engine fixture migrated the database)."""
    parser = ItemParser("b", Vocabulary({}), None, {"pn-bucket"})
    items = [parser.parse_item(json.dumps(study_item(n, pid, name)).encode()) for n, (pid, name) in enumerate(NAMES.items())]
    assert all(isinstance(i, StudyDTO) for i in items), items
    with engine.begin() as conn:
        PageWriter("b", {"b": 0}, events=False).apply(conn, items, new_id(), dt.datetime.now(dt.UTC))
    assert stale_facts(engine) == []  # the referring physician's search form among them
    core = open_core(Settings(database=DatabaseConfig(url=db_url)), configure_logs=False)
    yield core
    core.close()


@pytest.fixture
def rest(core: Core) -> Iterator[tuple[TestClient[Any], dict[str, str]]]:
    with core.engine.begin() as conn:
        _, token = apikeys.create_key(conn, "pn viewer", "viewer")
    with TestClient(api_app(core, BucketRegistry(core.settings.storage))) as client:
        yield client, {"Authorization": f"Bearer {token}"}


@pytest.fixture
def dicom_port(core: Core) -> Iterator[int]:
    config = DicomConfig(ae_title="ISYNC_PN", host="127.0.0.1", port=0).with_local_peers({PEER: ["find"]})
    server = DicomServer(config, build_services(config, core.engine, ObjectReader(BucketRegistry(core.settings.storage))))
    port = server.start()
    yield port
    server.stop()


@pytest.fixture(params=["newest studies first", "patients first"])
def name_plan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways a REST name search can go (catalog.studies.NAME_SCAN_LIMIT)."""
    from imaging_sync.catalog import studies

    monkeypatch.setattr(studies, "NAME_SCAN_LIMIT", 10**6 if request.param == "newest studies first" else 0)


def rest_answer(rest: tuple[TestClient[Any], dict[str, str]], parameter: str, value: str) -> set[str]:
    client, auth = rest
    response = client.get("/api/v1/studies", params={parameter: value, "limit": 100}, headers=auth)
    assert response.status_code == 200, (parameter, value, response.text)
    return {item["subject"]["patient_id"] for item in response.json()["items"]}


def c_find_answer(port: int, keyword: str, value: str) -> set[str]:
    ae = AE(ae_title=PEER)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = ""
    setattr(ds, keyword, value)
    assoc = ae.associate("127.0.0.1", port, ae_title="ISYNC_PN")
    assert assoc.is_established
    found, final = set(), None
    try:
        for status, identifier in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
            if status.Status in (0xFF00, 0xFF01):
                found.add(str(identifier.PatientID))
            else:
                final = int(status.Status)
    finally:
        assoc.release()
    assert final == 0x0000, (keyword, value, final)
    return found


def test_every_stored_person_name_matches_the_same_through_rest_search_and_c_find(
    rest: tuple[TestClient[Any], dict[str, str]], dicom_port: int, name_plan: None
) -> None:
    answers = {
        query: {
            "REST patient_name": rest_answer(rest, "patient_name", query),
            "REST referring_physician_name": rest_answer(rest, "referring_physician_name", query),
            "C-FIND PatientName": c_find_answer(dicom_port, "PatientName", query),
            "C-FIND ReferringPhysicianName": c_find_answer(dicom_port, "ReferringPhysicianName", query),
        }
        for query in CASES
    }
    wrong = {query: ways for query, ways in answers.items() if any(found != CASES[query] for found in ways.values())}
    assert wrong == {}


def test_a_name_that_is_no_person_name_is_refused_alike_by_both_edges(rest: tuple[TestClient[Any], dict[str, str]], dicom_port: int) -> None:
    """Four component groups: a 400 naming the parameter, a C001 naming the attribute (PS3.5 §6.2: three at most)."""
    client, auth = rest
    for parameter, keyword, tag in (("patient_name", "PatientName", 0x00100010), ("referring_physician_name", "ReferringPhysicianName", 0x00080090)):
        response = client.get("/api/v1/studies", params={parameter: "A=B=C=D"}, headers=auth)
        assert response.status_code == 400 and response.json()["error"]["details"]["field"] == parameter, response.text
        ae = AE(ae_title=PEER)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="ISYNC_PN")
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        setattr(ds, keyword, "A=B=C=D")
        try:
            statuses = [status for status, _ in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind)]
        finally:
            assoc.release()
        assert [(int(s.Status), s.get("OffendingElement")) for s in statuses] == [(0xC001, tag)]
