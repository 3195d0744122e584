"""WADO-RS from outside: metadata from the header cache, frames as single ranged GETs, bulk data, whole instances,
negotiation, a replaced object, a missing one; real DICOM files in the embedded S3, reached through a counting front."""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from api_fixtures import IndexBuilder, Keys, Located, RecordingLauncher
from dicomweb_fixtures import CountingFront, FileSpec, dicom_bytes
from litestar import Litestar
from litestar.testing import TestClient
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from sqlalchemy import select

from api.app import create_app
from devtools.storage import EmbeddedStorage
from imaging_sync.core import Core
from imaging_sync.db.models import Instance, Series, Study
from storage import BucketRegistry


@dataclass
class File:
    study: str
    series: str
    sop: str
    key: str
    data: bytes
    frames: list[bytes]

    @property
    def url(self) -> str:
        return f"/dicomweb/studies/{self.study}/series/{self.series}/instances/{self.sop}"


@dataclass
class Archive:
    client: TestClient[Litestar]
    front: CountingFront
    s3: EmbeddedStorage
    bucket: str
    files: dict[str, File]
    headers: dict[str, str]

    def get(self, path: str, accept: str | None = None, **params: Any) -> Any:
        headers = dict(self.headers) if accept is None else {**self.headers, "Accept": accept}
        return self.client.get(path, headers=headers, params=params)


SPECS = {
    "native": FileSpec(),
    "implicit": FileSpec(transfer_syntax=ImplicitVRLittleEndian, bits=8),
    "multiframe": FileSpec(frames=5, rows=24, columns=20),
    "rle": FileSpec(transfer_syntax=RLELossless, frames=3, rows=16, columns=16),
    "long header": FileSpec(private_bytes=100 * 1024),
}


@pytest.fixture
def archive(core: Core, s3: EmbeddedStorage, keys: Keys, index: IndexBuilder) -> Iterator[Archive]:
    """One study of five series, one file each (SPECS), in partner b's bucket; the app reaches S3 only through the front."""
    front = CountingFront(s3.endpoint_url).start()
    bucket = s3.buckets[0].name
    storage = msgspec.structs.replace(
        s3.config, buckets={name: msgspec.structs.replace(cfg, endpoint_url=front.url) for name, cfg in s3.config.buckets.items()}
    )
    settings = msgspec.structs.replace(core.settings, storage=storage)
    app = create_app(dataclasses.replace(core, settings=settings), registry=BucketRegistry(storage, environ=s3.environ), launcher=RecordingLauncher())
    subject = index.subject("P-WADO", "HONG^GILDONG=洪^吉洞=홍^길동")
    study_id = index.study(subject)
    files: dict[str, File] = {}
    with core.engine.connect() as conn:
        study_uid = conn.execute(select(Study.study_instance_uid).where(Study.id == study_id)).scalar_one()
    for number, (name, spec) in enumerate(SPECS.items(), start=1):
        series_id = index.series(study_id, number=number)
        key = f"wado/{name.replace(' ', '-')}/{number}.dcm"
        instance_id = index.instance(series_id, locations=[Located("b", bucket, key)])
        with core.engine.connect() as conn:
            series_uid = conn.execute(select(Series.series_instance_uid).where(Series.id == series_id)).scalar_one()
            sop = conn.execute(select(Instance.sop_instance_uid).where(Instance.id == instance_id)).scalar_one()
        data, frames = dicom_bytes(spec, study=study_uid, series=series_uid, sop=sop, seed=number)
        s3.put(bucket, key, data)
        files[name] = File(study_uid, series_uid, sop, key, data, frames)
    with TestClient(app) as client:
        yield Archive(client, front, s3, bucket, files, keys.headers("viewer"))
    front.stop()


def original_json(data: bytes) -> dict[str, Any]:
    """pydicom's own DICOM JSON of the file, without bulk data (and so without Pixel Data)."""
    from io import BytesIO

    ds = dcmread(BytesIO(data))
    full = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _: "bulk")
    return {tag: value for tag, value in full.items() if "BulkDataURI" not in value and tag != "7FE00010"}


def without_bulk(attributes: dict[str, Any]) -> dict[str, Any]:
    return {tag: value for tag, value in attributes.items() if "BulkDataURI" not in value}


def parts(response: Any) -> list[tuple[str, bytes]]:
    """The parts of a multipart/related answer: (Content-Type, bytes)."""
    raw = b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n" + response.content
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    return [(part.get_content_type() + "".join(f"; {k}={v}" for k, v in part.get_params()[1:]), part.get_payload(decode=True)) for part in message.iter_parts()]


@pytest.mark.parametrize("name", list(SPECS))
def test_instance_metadata_is_the_files_header_minus_bulk_data(archive: Archive, name: str) -> None:
    file = archive.files[name]
    response = archive.get(f"{file.url}/metadata")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    [metadata] = response.json()
    assert without_bulk(metadata) == original_json(file.data)
    assert metadata["00100010"]["Value"] == [{"Alphabetic": "HONG^GILDONG", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"}]


def test_a_second_metadata_request_reads_nothing_from_s3(archive: Archive) -> None:
    file = archive.files["multiframe"]
    assert archive.get(f"{file.url}/metadata").status_code == 200
    first = archive.front.gets(file.key)
    assert len(first) == 1 and first[0].range == "bytes=0-65535"  # one ranged GET of the first 64 KiB
    archive.front.seen.clear()
    assert archive.get(f"/dicomweb/studies/{file.study}/series/{file.series}/metadata").status_code == 200
    assert archive.front.seen == []


def test_a_header_longer_than_the_first_read_is_read_again_larger_and_its_bulk_data_is_served(archive: Archive) -> None:
    file = archive.files["long header"]
    [metadata] = archive.get(f"{file.url}/metadata").json()
    ranges = [s.range for s in archive.front.gets(file.key)]
    assert ranges[0] == "bytes=0-65535" and len(ranges) == 2 and ranges[1].startswith("bytes=0-")
    [private] = [v for v in metadata.values() if "BulkDataURI" in v]
    assert private["vr"] == "OB" and private["BulkDataURI"].startswith(f"http://testserver.local{file.url}/bulkdata/")
    archive.front.seen.clear()
    response = archive.get(private["BulkDataURI"].removeprefix("http://testserver.local"))
    assert response.status_code == 200
    [(content_type, value)] = parts(response)
    assert content_type.startswith("application/octet-stream") and value == bytes(range(256)) * 400
    assert len(archive.front.gets(file.key)) == 1
    assert archive.get(f"{file.url}/bulkdata/12345").status_code == 404


def test_series_and_study_metadata_list_every_instance(archive: Archive) -> None:
    file = archive.files["rle"]
    study = archive.get(f"/dicomweb/studies/{file.study}/metadata").json()
    assert sorted(m["00080018"]["Value"][0] for m in study) == sorted(f.sop for f in archive.files.values())


@pytest.mark.parametrize("name", ["native", "implicit", "multiframe"])
def test_native_frames_are_the_pixels_each_one_ranged_get(archive: Archive, name: str) -> None:
    file = archive.files[name]
    archive.get(f"{file.url}/metadata")
    archive.front.seen.clear()
    wanted = list(range(1, len(file.frames) + 1))[::-1]  # in the order asked, not the file's
    response = archive.get(f"{file.url}/frames/{','.join(map(str, wanted))}", accept='multipart/related; type="application/octet-stream"')
    assert response.status_code == 200, response.text
    got = parts(response)
    assert [data for _, data in got] == [file.frames[n - 1] for n in wanted]
    assert all(ct == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1" for ct, _ in got)
    gets = archive.front.gets(file.key)
    assert len(gets) == len(wanted) and all(g.range is not None for g in gets)


def test_compressed_frames_as_stored_when_the_client_takes_any_syntax(archive: Archive) -> None:
    file = archive.files["rle"]
    response = archive.get(f"{file.url}/frames/1,2,3", accept='multipart/related; type="application/octet-stream"; transfer-syntax=*')
    assert response.status_code == 200, response.text
    got = parts(response)
    assert all(ct == f"application/octet-stream; transfer-syntax={RLELossless}" for ct, _ in got)
    from pydicom.encaps import generate_frames

    ds = dcmread(__import__("io").BytesIO(file.data))
    assert [data for _, data in got] == list(generate_frames(ds.PixelData, number_of_frames=3))


def test_compressed_frames_decoded_for_a_client_that_wants_native_pixels(archive: Archive) -> None:
    file = archive.files["rle"]
    response = archive.get(f"{file.url}/frames/2", accept='multipart/related; type="application/octet-stream"')
    assert response.status_code == 200, response.text
    [(content_type, data)] = parts(response)
    assert content_type == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    assert data == file.frames[1]


@pytest.mark.parametrize(
    "accept",
    ['multipart/related; type="image/jpeg"', 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.50', "text/html"],
)
def test_frames_in_a_form_we_cannot_give_are_a_406(archive: Archive, accept: str) -> None:
    response = archive.get(f"{archive.files['native'].url}/frames/1", accept=accept)
    assert response.status_code == 406
    assert "application/octet-stream" in response.json()["error"]["message"]


@pytest.mark.parametrize("frames", ["0", "6", "1,x", "-1"])
def test_a_frame_that_does_not_exist_is_a_400_naming_frames(archive: Archive, frames: str) -> None:
    response = archive.get(f"{archive.files['multiframe'].url}/frames/{frames}")
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "frames"


def test_an_object_replaced_at_the_partner_is_read_again(archive: Archive) -> None:
    file = archive.files["native"]
    archive.get(f"{file.url}/metadata")
    replacement, frames = dicom_bytes(FileSpec(), study=file.study, series=file.series, sop=file.sop, seed=99)
    archive.s3.put(archive.bucket, file.key, replacement)  # a new ETag
    archive.front.seen.clear()
    response = archive.get(f"{file.url}/frames/1")
    assert response.status_code == 200
    assert parts(response)[0][1] == frames[0] != file.frames[0]
    statuses = [g.range for g in archive.front.gets(file.key)]
    assert statuses[0] is not None and len(statuses) == 3  # the stale frame (412), the header again, the frame


def test_a_missing_object_is_a_404_for_its_instance_and_the_rest_of_the_study_still_answers(archive: Archive) -> None:
    file = archive.files["implicit"]
    archive.s3.admin_client(archive.bucket).delete_object(Bucket=archive.bucket, Key=file.key)
    assert archive.get(f"{file.url}/metadata").status_code == 404
    assert archive.get(f"{file.url}/frames/1").status_code == 404
    response = archive.get(f"/dicomweb/studies/{file.study}/metadata")
    assert response.status_code == 200
    assert len(response.json()) == len(archive.files) - 1
    assert "1 of 5 instances left out" in response.headers["warning"]


def test_a_frame_without_a_kept_header_reads_it_first_and_a_failed_read_is_tried_again(archive: Archive) -> None:
    """No header kept: the frame request reads it (ranged GETs of the header), then the frame; a header whose read
    failed (the object was gone) is read again once the object is back."""
    file = archive.files["multiframe"]
    archive.s3.admin_client(archive.bucket).delete_object(Bucket=archive.bucket, Key=file.key)
    assert archive.get(f"{file.url}/frames/2").status_code == 404  # the failure is recorded
    archive.s3.put(archive.bucket, file.key, file.data)
    archive.front.seen.clear()
    response = archive.get(f"{file.url}/frames/2", accept='multipart/related; type="application/octet-stream"')
    assert response.status_code == 200, response.text
    assert parts(response)[0][1] == file.frames[1]
    assert len(archive.front.gets(file.key)) == 2  # the header's first read, then the frame
    archive.front.seen.clear()
    assert parts(archive.get(f"{file.url}/frames/3", accept='multipart/related; type="application/octet-stream"'))[0][1] == file.frames[2]
    assert len(archive.front.gets(file.key)) == 1  # kept now: the frame alone


def test_unknown_uids_are_404s_and_bad_ones_400s(archive: Archive) -> None:
    file = archive.files["native"]
    assert archive.get("/dicomweb/studies/1.2.3.999/metadata").status_code == 404
    assert archive.get(f"/dicomweb/studies/{file.study}/series/1.2.3.999/metadata").status_code == 404
    assert archive.get(f"/dicomweb/studies/{file.study}/series/{file.series}/instances/1.2.3.999/metadata").status_code == 404
    response = archive.get("/dicomweb/studies/1.2.x/metadata")
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "StudyInstanceUID"


@pytest.mark.parametrize("accept", [None, 'multipart/related; type="application/dicom"', 'multipart/related; type="application/dicom"; transfer-syntax=*'])
def test_a_series_and_a_study_retrieved_as_dicom_files_byte_for_byte(archive: Archive, accept: str | None) -> None:
    file = archive.files["multiframe"]
    response = archive.get(f"/dicomweb/studies/{file.study}/series/{file.series}", accept=accept)
    assert response.status_code == 200, response.text
    assert [data for _, data in parts(response)] == [file.data]
    study = archive.get(f"/dicomweb/studies/{file.study}", accept=accept)
    assert sorted(data for _, data in parts(study)) == sorted(f.data for f in archive.files.values())
    assert all(ct == "application/dicom" for ct, _ in parts(study))


def test_an_instance_in_another_syntax_is_refused_and_a_missing_file_is_a_404(archive: Archive) -> None:
    file = archive.files["native"]
    response = archive.get(file.url, accept=f'multipart/related; type="application/dicom"; transfer-syntax={RLELossless}')
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "transfer-syntax"
    archive.s3.admin_client(archive.bucket).delete_object(Bucket=archive.bucket, Key=file.key)
    assert archive.get(file.url).status_code == 404


def test_only_a_viewer_key_retrieves(archive: Archive, keys: Keys) -> None:
    file = archive.files["native"]
    assert archive.client.get(f"{file.url}/metadata").status_code == 401
    assert archive.client.get(f"{file.url}/metadata", headers=keys.headers("auditor")).status_code == 403
    assert archive.client.get(f"{file.url}/frames/1", headers=keys.headers("operator")).status_code == 403


def wado_uri(file: File, **extra: str) -> dict[str, str]:
    return {"requestType": "WADO", "studyUID": file.study, "seriesUID": file.series, "objectUID": file.sop, **extra}


def test_wado_uri_streams_the_file_as_stored(archive: Archive) -> None:
    file = archive.files["rle"]
    response = archive.get("/dicomweb/wado", **wado_uri(file, contentType="application/dicom"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert response.content == file.data
    assert response.headers["cache-control"] == "no-store"


def test_wado_uri_redirects_to_the_partners_bucket_when_configured(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    services = archive.client.app.state["services"]
    monkeypatch.setattr(services, "settings", msgspec.structs.replace(services.settings, dicomweb=msgspec.structs.replace(services.settings.dicomweb, redirect_objects=True)))
    file = archive.files["native"]
    response = archive.client.get("/dicomweb/wado", params=wado_uri(file, contentType="application/dicom"), headers=archive.headers, follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"].startswith(archive.front.url) and "X-Amz-Signature=" in response.headers["location"]
    assert httpx.get(response.headers["location"]).content == file.data  # the presigned URL itself serves the file


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"requestType": None}, 400, "requestType"),
        ({"requestType": "WADO-RS"}, 400, "requestType"),
        ({"objectUID": None}, 400, "objectUID"),
        ({"objectUID": "1.2.x"}, 400, "SOPInstanceUID"),
        ({"frobnicate": "1"}, 400, "frobnicate"),
        ({"transferSyntax": RLELossless, "contentType": "application/dicom"}, 400, "transferSyntax"),
        ({"contentType": "image/gif"}, 406, None),
        ({"contentType": "image/png", "windowCenter": "40"}, 400, "windowWidth"),
        ({"contentType": "image/png", "frameNumber": "0"}, 400, "frameNumber"),
        ({"objectUID": "1.2.3.999"}, 404, None),
    ],
)
def test_wado_uri_refuses_what_it_cannot_answer(archive: Archive, params: dict[str, str | None], status: int, field: str | None) -> None:
    query = {k: v for k, v in {**wado_uri(archive.files["native"]), **params}.items() if v is not None}
    response = archive.get("/dicomweb/wado", **query)
    assert response.status_code == status, response.text
    if field is not None:
        assert response.json()["error"]["details"]["field"] == field


def test_every_retrieval_is_audited_with_the_study_it_showed(archive: Archive, keys: Keys, core: Core) -> None:
    file = archive.files["native"]
    for path, params in ((f"{file.url}/metadata", {}), (f"{file.url}/frames/1", {}), (file.url, {}), ("/dicomweb/wado", wado_uri(file))):
        assert archive.get(path, **params).status_code == 200
    with core.engine.connect() as conn:
        study_id = conn.execute(select(Study.id).where(Study.study_instance_uid == file.study)).scalar_one()
    response = archive.client.get("/api/v1/audit", params={"study": str(study_id)}, headers=keys.headers("auditor"))
    entries = [e for e in response.json()["items"] if e["path"].startswith("/dicomweb")]
    assert sorted(e["path"] for e in entries) == sorted([f"{file.url}/metadata", f"{file.url}/frames/1", file.url, "/dicomweb/wado"])
    assert all(e["outcome"] == "success" and e["actor_role"] == "viewer" for e in entries)


def test_the_background_reader_fills_the_cache_so_a_first_request_reads_nothing(archive: Archive, core: Core) -> None:
    from imaging_sync.catalog.headers import progress

    headers = archive.client.app.state["services"].headers
    missing = archive.files["implicit"]
    archive.s3.admin_client(archive.bucket).delete_object(Bucket=archive.bucket, Key=missing.key)
    result = headers.fill("b", batch=2)  # three batches
    assert (result.read, result.failed) == (4, {"object_missing": 1})
    with core.engine.connect() as conn:
        assert [(p.partner, p.kept, p.failed, p.unread) for p in progress(conn)] == [("b", 4, {"object_missing": 1}, 0)]
    archive.front.seen.clear()
    file = archive.files["multiframe"]
    assert archive.get(f"/dicomweb/studies/{file.study}/series/{file.series}/metadata").status_code == 200
    assert archive.front.seen == []
    assert headers.fill("b").read == 0  # nothing left; the failure is not retried unless asked
    archive.s3.put(archive.bucket, missing.key, missing.data)  # the partner fixes its bucket
    assert (headers.fill("b", retry_failed=True).read, headers.fill("b").read) == (1, 0)


def png(response: Any) -> Any:
    from io import BytesIO

    import numpy as np
    from PIL import Image

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(BytesIO(response.content)))


def test_rendered_applies_the_window_asked_for_pixel_by_pixel(archive: Archive) -> None:
    import numpy as np

    file = archive.files["native"]
    stored = np.frombuffer(file.frames[0], dtype="<u2").reshape(32, 32).astype(np.float64)
    shown = png(archive.get(f"{file.url}/rendered", accept="image/png", window="2000,1000"))
    expected = np.clip(np.rint(((stored - 1999.5) / 999.0 + 0.5) * 255.0), 0, 255).astype(np.uint8)  # PS3.3 C.11.2.1.2.1
    assert shown.shape == (32, 32) and (shown == expected).all()
    default = png(archive.get(f"{file.url}/rendered", accept="image/png"))  # no window: the frame's own range
    assert default.min() == 0 and default.max() == 255


def test_rendered_frames_of_a_compressed_multiframe_instance_and_jpeg(archive: Archive) -> None:
    from io import BytesIO

    from PIL import Image

    file = archive.files["rle"]
    second = archive.get(f"{file.url}/frames/2/rendered", accept="image/png")
    third = archive.get(f"{file.url}/frames/3/rendered", accept="image/png")
    assert (png(second) != png(third)).any()
    jpeg = archive.get(f"{file.url}/rendered", quality="80")
    assert jpeg.headers["content-type"] == "image/jpeg" and Image.open(BytesIO(jpeg.content)).size == (16, 16)
    assert archive.get(f"{file.url}/frames/4/rendered").status_code == 400


def test_thumbnails_of_an_instance_a_series_and_a_study_fit_in_128_pixels(archive: Archive) -> None:
    file = archive.files["multiframe"]
    big = FileSpec(rows=300, columns=200)
    data, _ = dicom_bytes(big, study=file.study, series=file.series, sop=file.sop, seed=5)
    archive.s3.put(archive.bucket, file.key, data)  # a larger image in its place, before anything read its header
    for path in (f"{file.url}/thumbnail", f"/dicomweb/studies/{file.study}/series/{file.series}/thumbnail"):
        image = png(archive.get(path, accept="image/png"))
        assert image.shape == (128, 85)  # 300×200 scaled to fit 128×128, its aspect kept
    assert archive.get(f"/dicomweb/studies/{file.study}/thumbnail").headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize(
    ("params", "field"), [({"window": "40"}, "window"), ({"window": "40,0"}, "window"), ({"viewport": "10"}, "viewport"), ({"quality": "101"}, "quality"), ({"size": "1"}, "size")]
)
def test_a_bad_rendering_parameter_is_a_400_naming_it(archive: Archive, params: dict[str, str], field: str) -> None:
    response = archive.get(f"{archive.files['native'].url}/rendered", **params)
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == field


def test_a_rendered_image_in_a_type_we_do_not_make_is_a_406(archive: Archive) -> None:
    assert archive.get(f"{archive.files['native'].url}/rendered", accept="image/gif").status_code == 406


def test_bulk_data_keys_become_urls_without_touching_a_value_that_looks_like_one() -> None:
    import json

    from api.dicomweb.wado import with_bulk_urls

    attributes = {
        "00081030": {"vr": "LO", "Value": ['"BulkDataURI":"not/a/key']},  # a description quoting one: escaped in JSON
        "00091001": {"vr": "OB", "BulkDataURI": "1234"},
        "00400275": {"vr": "SQ", "Value": [{"00091002": {"vr": "OB", "BulkDataURI": "5678"}}]},
    }
    done = json.loads(with_bulk_urls(json.dumps(attributes, separators=(",", ":")), "https://x/i"))
    assert done["00081030"] == attributes["00081030"]
    assert done["00091001"]["BulkDataURI"] == "https://x/i/bulkdata/1234"
    assert done["00400275"]["Value"][0]["00091002"]["BulkDataURI"] == "https://x/i/bulkdata/5678"


def test_wado_uri_renders_an_image_by_default_and_as_asked(archive: Archive) -> None:
    """PS3.18 9.1.2.1.1: without contentType an image object comes as image/jpeg."""
    from io import BytesIO

    import numpy as np
    from PIL import Image

    file = archive.files["native"]
    default = archive.get("/dicomweb/wado", **wado_uri(file))
    assert default.status_code == 200 and default.headers["content-type"] == "image/jpeg"
    assert Image.open(BytesIO(default.content)).size == (32, 32)
    small = archive.get("/dicomweb/wado", **wado_uri(file, contentType="image/png", rows="16", columns="16", windowCenter="2000", windowWidth="1000"))
    shown = np.asarray(Image.open(BytesIO(small.content)))
    assert small.headers["content-type"] == "image/png" and shown.shape == (16, 16)
    second = archive.get("/dicomweb/wado", **wado_uri(archive.files["multiframe"], contentType="image/png", frameNumber="2"))
    first = archive.get("/dicomweb/wado", **wado_uri(archive.files["multiframe"], contentType="image/png"))
    assert second.status_code == first.status_code == 200 and second.content != first.content
