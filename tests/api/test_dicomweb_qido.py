"""QIDO-RS (PS3.18 10.6) from outside: the six search resources, matching by keyword and by tag, includefield,
paging, the DICOM JSON answer, errors, negotiation, access and audit."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

import httpx
import pytest
from api_fixtures import IndexBuilder, Keys, RecordingLauncher, make_settings
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select

from api.app import create_app
from devtools.storage import EmbeddedStorage
from imaging_sync.core import Core
from imaging_sync.db.models import Series, Study

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # every instance the index builder writes
UID_KEYS = {"study": "0020000D", "series": "0020000E", "sop": "00080018"}


@pytest.fixture
def archive(index: IndexBuilder, core: Core) -> dict[str, Any]:
    """Four patients (one Korean, one with three name groups), their studies, series and instances."""
    made: dict[str, Any] = {"studies": {}, "series": {}, "uids": {}}
    people = [
        ("P1", "KIM^MINJI", dt.date(2024, 1, 10), "CT", 3),
        ("P2", "김^민준", dt.date(2024, 2, 20), "MR", 2),
        ("P3", "HONG^GILDONG=洪^吉洞=홍^길동", dt.date(2023, 12, 31), "CT", 1),
        ("P4", "LEE^SEOYEON", dt.date(2024, 1, 15), "US", 2),
    ]
    for i, (patient_id, name, date, modality, count) in enumerate(people):
        subject = index.subject(patient_id, name, birth_date=dt.date(1980, 1, i + 1), sex="F" if i % 2 else "M")
        study_id = index.study(subject, date=date, accession=f"ACC{i}", description=f"study {i}", referring="ÉMILE^ZOLA" if i == 0 else None)
        series_id = index.series(study_id, modality, number=1)
        for n in range(count):
            index.instance(series_id, number=n + 1)
        made["studies"][patient_id] = study_id
        made["series"][patient_id] = series_id
    second = index.series(made["studies"]["P1"], "SR", number=2)
    index.instance(second, number=1)
    made["series"]["P1-SR"] = second
    with core.engine.connect() as conn:
        for patient_id, study_id in made["studies"].items():
            made["uids"][patient_id] = conn.execute(select(Study.study_instance_uid).where(Study.id == study_id)).scalar_one()
        for name, series_id in made["series"].items():
            made["uids"][f"series {name}"] = conn.execute(select(Series.series_instance_uid).where(Series.id == series_id)).scalar_one()
    return made


def qido(client: TestClient[Litestar], keys: Keys, path: str, params: Any = None, **headers: str) -> Any:
    response = client.get(f"/dicomweb{path}", params=params, headers={**keys.headers("viewer"), **headers})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    return response.json()


def values(matches: list[dict[str, Any]], tag: str) -> list[Any]:
    return [m[tag]["Value"][0] if "Value" in m.get(tag, {}) else None for m in matches]


def patient_ids(matches: list[dict[str, Any]]) -> set[str]:
    return set(values(matches, "00100020"))


def test_study_search_answers_the_default_attributes_as_dicom_json(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    [match] = qido(client, keys, "/studies", {"PatientID": "P1"})
    assert match["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "KIM^MINJI"}]}
    assert match["00080020"] == {"vr": "DA", "Value": ["20240110"]}
    assert match["00080050"] == {"vr": "SH", "Value": ["ACC0"]}
    assert match["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert match["00201206"] == {"vr": "IS", "Value": [2]}  # series: a JSON number (F.2.3)
    assert match["00201208"] == {"vr": "IS", "Value": [4]}
    assert match["00080090"] == {"vr": "PN", "Value": [{"Alphabetic": "ÉMILE^ZOLA"}]}
    assert match["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert match["0020000D"]["Value"] == [archive["uids"]["P1"]]
    assert match["00081190"] == {"vr": "UR", "Value": [f"http://testserver.local/dicomweb/studies/{archive['uids']['P1']}"]}
    assert list(match) == sorted(match)  # in tag order


def test_person_names_keep_their_component_groups(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    [match] = qido(client, keys, "/studies", {"PatientID": "P3"})
    assert match["00100010"]["Value"] == [{"Alphabetic": "HONG^GILDONG", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"}]
    [korean] = qido(client, keys, "/studies", {"PatientID": "P2"})
    assert korean["00100010"]["Value"] == [{"Alphabetic": "김^민준"}]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientName": "kim*"}, {"P1"}),  # case-insensitive, the core's PN matching
        ({"00100010": "KIM*"}, {"P1"}),  # by tag
        ({"PatientName": "김*"}, {"P2"}),
        ({"PatientName": "홍^길동"}, {"P3"}),  # one component group of three
        ({"PatientName": "*"}, {"P1", "P2", "P3", "P4"}),
        ({"StudyDate": "20240101-20240131"}, {"P1", "P4"}),
        ({"StudyDate": "20240201-"}, {"P2"}),  # open ranges
        ({"StudyDate": "-20231231"}, {"P3"}),
        ({"ModalitiesInStudy": "MR"}, {"P2"}),
        ({"ModalitiesInStudy": "MR,US"}, {"P2", "P4"}),  # a comma list
        ({"ModalitiesInStudy": "SR"}, {"P1"}),  # any of the study's series
        ({"AccessionNumber": "ACC?"}, {"P1", "P2", "P3", "P4"}),
        ({"00080050": "ACC2"}, {"P3"}),
        ({"ReferringPhysicianName": "émile*"}, {"P1"}),  # accent-insensitive
        ({"PatientSex": "F"}, {"P2", "P4"}),
        ({"PatientName": "kim*", "StudyDate": "20240201-"}, set()),
    ],
)
def test_study_matching_follows_the_core(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any], params: dict[str, str], expected: set[str]) -> None:
    assert patient_ids(qido(client, keys, "/studies", params)) == expected


def test_uid_list_matching_with_commas(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    uids = f"{archive['uids']['P1']},{archive['uids']['P4']}"
    assert patient_ids(qido(client, keys, "/studies", {"StudyInstanceUID": uids})) == {"P1", "P4"}


def test_fuzzy_matching_widens_patient_names_to_word_beginnings(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    assert patient_ids(qido(client, keys, "/studies", {"PatientName": "gil hong"})) == set()
    assert patient_ids(qido(client, keys, "/studies", {"PatientName": "gil hong", "fuzzymatching": "true"})) == {"P3"}
    assert patient_ids(qido(client, keys, "/studies", {"PatientName": "min", "fuzzymatching": "true"})) == {"P1"}
    assert patient_ids(qido(client, keys, "/studies", {"PatientName": "민", "fuzzymatching": "true"})) == {"P2"}
    assert patient_ids(qido(client, keys, "/studies", {"PatientName": "k?m*", "fuzzymatching": "true"})) == {"P1"}  # not words: PS3.4 alone


def test_series_and_instance_searches_at_every_resource(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    study = archive["uids"]["P1"]
    series = qido(client, keys, f"/studies/{study}/series")
    assert sorted(values(series, "00080060")) == ["CT", "SR"]
    assert {values([s], "00201209")[0] for s in series} == {3, 1}
    ct = archive["uids"]["series P1"]
    assert [s["00081190"]["Value"][0] for s in series if s["0020000E"]["Value"] == [ct]] == [f"http://testserver.local/dicomweb/studies/{study}/series/{ct}"]
    assert len(qido(client, keys, "/series", {"Modality": "CT"})) == 2
    assert patient_ids(qido(client, keys, "/series", {"Modality": "CT", "PatientID": "P3", "includefield": "PatientID"})) == {"P3"}
    instances = qido(client, keys, f"/studies/{study}/series/{ct}/instances")
    assert sorted(values(instances, "00200013")) == [1, 2, 3]
    assert all(i["0020000E"]["Value"] == [ct] and i["0020000D"]["Value"] == [study] for i in instances)
    assert instances[0]["00081190"]["Value"][0].startswith(f"http://testserver.local/dicomweb/studies/{study}/series/{ct}/instances/")
    assert len(qido(client, keys, f"/studies/{study}/instances")) == 4
    assert len(qido(client, keys, "/instances", {"StudyInstanceUID": study, "InstanceNumber": "2"})) == 1


@pytest.mark.parametrize("include", ["PatientAge,00081030", "PatientAge%2C00081030", ["PatientAge", "00081030"]])
def test_includefield_as_a_list_encoded_or_repeated(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any], include: Any) -> None:
    if isinstance(include, str) and "%2C" in include:
        response = client.get(f"/dicomweb/studies?PatientID=P1&includefield={include}", headers=keys.headers("viewer"))
        [match] = response.json()
    else:
        [match] = qido(client, keys, "/studies", {"PatientID": "P1", "includefield": include})
    assert match["00081030"] == {"vr": "LO", "Value": ["study 0"]}
    assert match["00101010"] == {"vr": "AS"}  # known, not kept: present without a value


def test_includefield_all_adds_every_attribute_the_index_keeps(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    [match] = qido(client, keys, "/studies", {"PatientID": "P1", "includefield": "all"})
    assert match["00100030"] == {"vr": "DA", "Value": ["19800101"]}
    assert match["00080030"]["Value"] == ["101500"]
    [series] = qido(client, keys, "/series", {"PatientID": "P4", "includefield": "all"})
    assert series["00100010"]["Value"] == [{"Alphabetic": "LEE^SEOYEON"}]
    assert series["00180015"]["Value"] == ["HEAD"]


def test_a_lower_levels_attribute_in_includefield_is_answered_empty(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    """OHIF's study list asks ``includefield=00081030,00080060``: Modality is a series attribute."""
    [match] = qido(client, keys, "/studies", {"PatientID": "P1", "includefield": "00081030,00080060"})
    assert match["00080060"] == {"vr": "CS"}


def test_limit_and_offset_page_without_repeats_and_say_when_cut(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    seen: list[str] = []
    for offset in range(0, 6, 2):
        response = client.get("/dicomweb/instances", params={"limit": 2, "offset": offset, "SOPClassUID": CT_CLASS}, headers=keys.headers("viewer"))
        assert response.status_code == 200
        page = values(response.json(), UID_KEYS["sop"])
        seen.extend(page)
        if offset + 2 < 9:
            assert "offset=" in response.headers["warning"] and response.headers["warning"].startswith("299 ")
    last = client.get("/dicomweb/instances", params={"limit": 5, "offset": 6, "SOPClassUID": CT_CLASS}, headers=keys.headers("viewer"))
    seen.extend(values(last.json(), UID_KEYS["sop"]))
    assert "warning" not in last.headers
    assert len(seen) == len(set(seen)) == 9


def test_max_results_caps_an_answer(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any], app: Litestar, monkeypatch: pytest.MonkeyPatch) -> None:
    import msgspec

    services = app.state["services"]
    monkeypatch.setattr(services, "settings", msgspec.structs.replace(services.settings, dicomweb=msgspec.structs.replace(services.settings.dicomweb, max_results=3)))
    response = client.get("/dicomweb/instances", params={"limit": 100, "SOPClassUID": CT_CLASS}, headers=keys.headers("viewer"))
    assert len(response.json()) == 3
    assert "offset=3" in response.headers["warning"]


def test_an_attribute_the_index_does_not_keep_is_ignored_with_a_warning(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    response = client.get("/dicomweb/studies", params={"StudyID": "42", "PatientID": "P2"}, headers=keys.headers("viewer"))
    assert response.status_code == 200
    assert patient_ids(response.json()) == {"P2"}
    assert "StudyID" in response.headers["warning"]


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/studies", {"PatientNmae": "KIM*"}, "PatientNmae"),
        ("/studies", {"StudyDate": "2024-01-01"}, "StudyDate"),
        ("/studies", {"StudyInstanceUID": "1.2.abc"}, "StudyInstanceUID"),
        ("/studies", {"limit": "-1"}, "limit"),
        ("/studies", {"limit": "0"}, "limit"),
        ("/studies", {"offset": "x"}, "offset"),
        ("/studies", {"fuzzymatching": "maybe"}, "fuzzymatching"),
        ("/studies", {"includefield": "NoSuchAttribute"}, "includefield"),
        ("/studies", {"SeriesInstanceUID": "1.2.3"}, "SeriesInstanceUID"),
        ("/studies", {"99990010": "x"}, "99990010"),
        ("/studies/not-a-uid/series", {}, "StudyInstanceUID"),
        ("/studies", {"PatientID": ["P1", "P2"]}, "PatientID"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(client: TestClient[Litestar], keys: Keys, path: str, params: dict[str, Any], field: str) -> None:
    response = client.get(f"/dicomweb{path}", params=params, headers=keys.headers("viewer"))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"]["field"] == field


def test_an_unknown_study_or_series_is_a_404(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    assert client.get("/dicomweb/studies/1.2.3.999/series", headers=keys.headers("viewer")).status_code == 404
    assert client.get("/dicomweb/studies/1.2.3.999/instances", headers=keys.headers("viewer")).status_code == 404
    study = archive["uids"]["P1"]
    assert client.get(f"/dicomweb/studies/{study}/series/1.2.3.999/instances", headers=keys.headers("viewer")).status_code == 404
    other_series = archive["uids"]["series P2"]
    assert client.get(f"/dicomweb/studies/{study}/series/{other_series}/instances", headers=keys.headers("viewer")).status_code == 404
    # a study that exists but matches nothing is an empty answer, not a 404
    assert qido(client, keys, f"/studies/{study}/series", {"Modality": "MR"}) == []


@pytest.mark.parametrize("accept", ["application/dicom+json", "application/json", "*/*", "application/*", "application/dicom+json; q=0.9, text/html; q=0.1"])
def test_accepts_dicom_json(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any], accept: str) -> None:
    response = client.get("/dicomweb/studies", headers={**keys.headers("viewer"), "Accept": accept})
    assert response.status_code == 200
    assert len(response.json()) == 4


@pytest.mark.parametrize("accept", ['multipart/related; type="application/dicom+xml"', "text/html", "application/dicom+json; q=0"])
def test_an_accept_we_cannot_produce_is_a_406(client: TestClient[Litestar], keys: Keys, accept: str) -> None:
    response = client.get("/dicomweb/studies", headers={**keys.headers("viewer"), "Accept": accept})
    assert response.status_code == 406
    assert "application/dicom+json" in response.json()["error"]["message"]


def test_every_instance_of_the_archive_is_too_broad_a_search(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    response = client.get("/dicomweb/instances", params={"limit": 10}, headers=keys.headers("viewer"))
    assert response.status_code == 413
    assert "must match on an attribute" in response.json()["error"]["message"]
    assert client.get(f"/dicomweb/studies/{archive['uids']['P1']}/instances", headers=keys.headers("viewer")).status_code == 200


def test_a_revoked_viewer_key_no_longer_searches(core: Core, s3: EmbeddedStorage, keys: Keys, archive: dict[str, Any]) -> None:
    from imaging_sync import apikeys

    app = create_app(core, registry=s3.registry(), launcher=RecordingLauncher(), key_cache_seconds=0)
    with core.engine.begin() as conn:
        info, token = apikeys.create_key(conn, "ward viewer", "viewer")
    with TestClient(app) as fresh:
        headers = {"Authorization": f"Bearer {token}"}
        assert fresh.get("/dicomweb/studies", headers=headers).status_code == 200
        with core.engine.begin() as conn:
            apikeys.revoke_key(conn, str(info.id))
        refused = fresh.get("/dicomweb/studies", headers=headers)
        assert refused.status_code == 401 and "invalid_token" in refused.headers["www-authenticate"]


def test_only_a_viewer_key_searches(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    assert client.get("/dicomweb/studies").status_code == 401
    assert client.get("/dicomweb/studies", headers={"Authorization": "Bearer isk_nope_nope"}).status_code == 401
    assert client.get("/dicomweb/studies", headers=keys.headers("auditor")).status_code == 403
    assert client.get("/dicomweb/studies", headers=keys.headers("operator")).status_code == 403
    assert client.get("/dicomweb/studies", headers=keys.headers("viewer")).status_code == 200


def who_has_seen(client: TestClient[Litestar], keys: Keys, study: Any) -> list[dict[str, Any]]:
    """The auditor's question, asked of the audit log's own endpoint."""
    response = client.get("/api/v1/audit", params={"study": str(study)}, headers=keys.headers("auditor"))
    assert response.status_code == 200, response.text
    return [e for e in response.json()["items"] if (e["path"] or "").startswith("/dicomweb")]


def test_each_search_is_audited_with_the_patients_it_showed(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any]) -> None:
    response = client.get("/dicomweb/studies", params={"PatientName": "kim*"}, headers=keys.headers("viewer"))
    assert response.status_code == 200
    [entry] = who_has_seen(client, keys, archive["studies"]["P1"])
    assert (entry["action"], entry["resource_type"], entry["path"], entry["outcome"]) == ("search", "study", "/dicomweb/studies", "success")
    assert entry["query"] == {"PatientName": "kim*"}
    assert entry["detail"]["request_id"] == response.headers["x-request-id"]
    assert who_has_seen(client, keys, archive["studies"]["P2"]) == []
    series = archive["uids"]["P2"]
    assert client.get(f"/dicomweb/studies/{series}/instances", headers=keys.headers("viewer")).status_code == 200
    [instances] = who_has_seen(client, keys, archive["studies"]["P2"])
    assert instances["resource_type"] == "instance" and instances["resource_id"] == series


def test_forwarded_headers_shape_retrieve_urls_only_from_a_trusted_proxy(core: Core, s3: EmbeddedStorage, keys: Keys, db_url: str, archive: dict[str, Any]) -> None:
    settings = make_settings(db_url, s3.config, [b.name for b in s3.buckets], trusted_proxies=["10.0.0.0/8"])
    app = create_app(dataclasses.replace(core, settings=settings), registry=s3.registry(), launcher=RecordingLauncher())
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example", "X-Forwarded-Prefix": "/imaging"}

    async def retrieve_url(peer: str) -> str:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://10.0.0.5:8080") as http:
            response = await http.get("/dicomweb/studies", params={"PatientID": "P1"}, headers={**keys.headers("viewer"), **forwarded})
            assert response.status_code == 200, response.text
            return str(response.json()[0]["00081190"]["Value"][0])

    study = archive["uids"]["P1"]
    assert asyncio.run(retrieve_url("10.2.3.4")) == f"https://pacs.example/imaging/dicomweb/studies/{study}"
    assert asyncio.run(retrieve_url("198.51.100.7")) == f"http://10.0.0.5:8080/dicomweb/studies/{study}"  # anybody else's headers prove nothing


def test_soft_deleted_studies_are_not_found(client: TestClient[Litestar], keys: Keys, archive: dict[str, Any], index: IndexBuilder) -> None:
    index.delete(Study, archive["studies"]["P4"])
    assert patient_ids(qido(client, keys, "/studies")) == {"P1", "P2", "P3"}
    assert client.get(f"/dicomweb/studies/{archive['uids']['P4']}/series", headers=keys.headers("viewer")).status_code == 404
