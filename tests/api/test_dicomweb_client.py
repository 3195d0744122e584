"""The DICOMweb edge read by a client nobody on this team wrote: the Imaging Data Commons' ``dicomweb-client``
(PyPI), over real HTTP to the app under uvicorn on 127.0.0.1, as `imaging-sync serve` runs it."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pytest
from api_fixtures import IndexBuilder, Located, make_settings
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from requests.exceptions import HTTPError

from api.service import ApiService
from app.assembly import api_app, open_core
from devtools.storage import EmbeddedStorage
from imaging_sync import apikeys
from storage import BucketRegistry


@dataclass
class Live:
    url: str
    viewer: str
    auditor: str
    index: IndexBuilder

    def client(self, key: str | None = None) -> DICOMwebClient:
        return DICOMwebClient(url=f"{self.url}/dicomweb", headers={"Authorization": f"Bearer {key or self.viewer}"})


@pytest.fixture
def live(sqlite_url: str, s3: EmbeddedStorage, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    s3.export_environ(monkeypatch.setenv)
    core = open_core(make_settings(sqlite_url, s3.config, [b.name for b in s3.buckets], host="127.0.0.1", port=0), configure_logs=False)
    with core.engine.begin() as conn:
        viewer = apikeys.create_key(conn, "viewer app", "viewer")[1]
        auditor = apikeys.create_key(conn, "auditor", "auditor")[1]
    service = ApiService(api_app(core, BucketRegistry(core.settings.storage)), core.settings.api)
    try:
        service.start()
        yield Live(f"http://127.0.0.1:{service.port}", viewer, auditor, IndexBuilder(core.engine))
    finally:
        service.stop()
        core.close()


@pytest.fixture
def studies(live: Live) -> dict[str, Any]:
    """Twelve patients with a study each, one series and two instances; P3 is Korean, P0 has three name groups."""
    made: dict[str, Any] = {}
    for i in range(12):
        name = {0: "HONG^GILDONG=洪^吉洞=홍^길동", 3: "김^민준"}.get(i, f"PATIENT{i:02d}^TEST")
        subject = live.index.subject(f"P{i}", name)
        study = live.index.study(subject, date=dt.date(2024, 1 + i % 3, 10), accession=f"A{i}")
        series = live.index.series(study, "MR" if i % 2 else "CT")
        for n in range(2):
            live.index.instance(series, number=n + 1)
        made[f"P{i}"] = study
    return made


def ids(matches: list[dict[str, Any]]) -> set[str]:
    return {m["00100020"]["Value"][0] for m in matches}


def test_search_for_studies_with_each_filter_kind(live: Live, studies: dict[str, Any]) -> None:
    client = live.client()
    assert len(client.search_for_studies()) == 12
    assert ids(client.search_for_studies(search_filters={"PatientID": "P3"})) == {"P3"}
    assert ids(client.search_for_studies(search_filters={"PatientName": "김*"})) == {"P3"}
    assert ids(client.search_for_studies(search_filters={"00100010": "*길동"})) == {"P0"}
    assert ids(client.search_for_studies(search_filters={"StudyDate": "20240201-20240228"})) == {"P1", "P4", "P7", "P10"}
    assert ids(client.search_for_studies(search_filters={"ModalitiesInStudy": "MR", "StudyDate": "20240201-"})) == {"P1", "P5", "P7", "P11"}
    assert ids(client.search_for_studies(search_filters={"PatientName": "gildong"}, fuzzymatching=True)) == {"P0"}
    [hong] = client.search_for_studies(search_filters={"PatientID": "P0"}, fields=["StudyDescription", "PatientBirthDate"])
    assert hong["00100010"]["Value"] == [{"Alphabetic": "HONG^GILDONG", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"}]
    assert "00081030" in hong


def test_paging_with_limit_and_offset_and_get_remaining(live: Live, studies: dict[str, Any]) -> None:
    client = live.client()
    first = client.search_for_studies(limit=5)
    second = client.search_for_studies(limit=5, offset=5)
    assert len(first) == len(second) == 5 and not ids(first) & ids(second)
    everything = client.search_for_studies(limit=5, get_remaining=True)
    assert ids(everything) == {f"P{i}" for i in range(12)} and len(everything) == 12


def test_search_for_series_and_instances(live: Live, studies: dict[str, Any]) -> None:
    client = live.client()
    [study] = client.search_for_studies(search_filters={"PatientID": "P5"})
    study_uid = study["0020000D"]["Value"][0]
    [series] = client.search_for_series(study_instance_uid=study_uid)
    assert series["00080060"]["Value"] == ["MR"] and series["00201209"]["Value"] == [2]
    series_uid = series["0020000E"]["Value"][0]
    instances = client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=series_uid)
    assert sorted(i["00200013"]["Value"][0] for i in instances) == [1, 2]
    assert len(client.search_for_instances(study_instance_uid=study_uid)) == 2
    assert len(client.search_for_series(search_filters={"Modality": "CT"})) == 6
    assert len(client.search_for_instances(search_filters={"PatientID": "P5"})) == 2
    # RetrieveURL is built from the Host the request names. dicomweb-client 0.60 sends its own `Host`
    # without the port (web.py: headers['Host'] = self.host), so its RetrieveURL has none either.
    assert series["00081190"]["Value"] == [f"http://127.0.0.1/dicomweb/studies/{study_uid}/series/{series_uid}"]


def test_an_unknown_study_and_a_refused_key_are_http_errors(live: Live, studies: dict[str, Any]) -> None:
    with pytest.raises(HTTPError) as unknown:
        live.client().search_for_series(study_instance_uid="1.2.3.4.5.999")
    assert unknown.value.response.status_code == 404
    with pytest.raises(HTTPError) as refused:
        live.client(live.auditor).search_for_studies()
    assert refused.value.response.status_code == 403


@pytest.fixture
def files(live: Live, s3: EmbeddedStorage) -> dict[str, Any]:
    """One study of two series in partner b's bucket: native multi-frame 16-bit, and RLE Lossless multi-frame."""
    from dicomweb_fixtures import FileSpec, dicom_bytes
    from pydicom.uid import RLELossless
    from sqlalchemy import select

    from imaging_sync.db.models import Instance, Series, Study

    bucket = s3.buckets[0].name
    subject = live.index.subject("P-FILES", "김^민준")
    study_id = live.index.study(subject)
    made: dict[str, Any] = {}
    for number, (name, spec) in enumerate({"native": FileSpec(frames=4), "rle": FileSpec(transfer_syntax=RLELossless, frames=2)}.items(), start=1):
        series_id = live.index.series(study_id, number=number)
        key = f"client/{name}.dcm"
        instance_id = live.index.instance(series_id, locations=[Located("b", bucket, key)])
        with live.index.engine.connect() as conn:
            study_uid = conn.execute(select(Study.study_instance_uid).where(Study.id == study_id)).scalar_one()
            series_uid = conn.execute(select(Series.series_instance_uid).where(Series.id == series_id)).scalar_one()
            sop = conn.execute(select(Instance.sop_instance_uid).where(Instance.id == instance_id)).scalar_one()
        data, frames = dicom_bytes(spec, study=study_uid, series=series_uid, sop=sop, seed=number)
        s3.put(bucket, key, data)
        made[name] = {"study": study_uid, "series": series_uid, "sop": sop, "data": data, "frames": frames}
    return made


def bulkless(attributes: dict[str, Any]) -> dict[str, Any]:
    return {tag: value for tag, value in attributes.items() if "BulkDataURI" not in value and "InlineBinary" not in value and tag != "7FE00010"}


def test_metadata_equals_pydicoms_json_of_each_file(live: Live, files: dict[str, Any]) -> None:
    client = live.client()
    native = files["native"]
    study = client.retrieve_study_metadata(native["study"])
    assert sorted(m["00080018"]["Value"][0] for m in study) == sorted(f["sop"] for f in files.values())
    for file in files.values():
        [metadata] = client.retrieve_series_metadata(file["study"], file["series"])
        original = dcmread(BytesIO(file["data"])).to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _: "bulk")
        assert bulkless(metadata) == json.loads(json.dumps(bulkless(original)))
        assert metadata["00100010"]["Value"] == [{"Alphabetic": "HONG^GILDONG", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"}]
    assert client.retrieve_instance_metadata(native["study"], native["series"], native["sop"])["00080018"]["Value"] == [native["sop"]]


def test_frames_are_the_original_pixels(live: Live, files: dict[str, Any]) -> None:
    client = live.client()
    native = files["native"]
    got = client.retrieve_instance_frames(native["study"], native["series"], native["sop"], frame_numbers=[1, 2, 3, 4], media_types=("application/octet-stream",))
    assert got == native["frames"]
    rle = files["rle"]
    decoded = client.retrieve_instance_frames(rle["study"], rle["series"], rle["sop"], frame_numbers=[2, 1], media_types=("application/octet-stream",))
    assert decoded == [rle["frames"][1], rle["frames"][0]]
    stored = client.retrieve_instance_frames(rle["study"], rle["series"], rle["sop"], frame_numbers=[1], media_types=(("application/octet-stream", "*"),))
    from pydicom.encaps import generate_frames

    assert stored == list(generate_frames(dcmread(BytesIO(rle["data"])).PixelData, number_of_frames=2))[:1]


def test_instances_series_and_study_retrieved_whole(live: Live, files: dict[str, Any]) -> None:
    client = live.client()
    native = files["native"]
    instance = client.retrieve_instance(native["study"], native["series"], native["sop"])
    assert instance.SOPInstanceUID == native["sop"] and instance.PixelData == b"".join(native["frames"])
    [series] = client.retrieve_series(native["study"], native["series"])
    assert series.SOPInstanceUID == native["sop"]
    study = client.retrieve_study(native["study"])
    assert sorted(ds.SOPInstanceUID for ds in study) == sorted(f["sop"] for f in files.values())
