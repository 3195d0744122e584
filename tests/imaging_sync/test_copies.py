"""Which copy of an instance is read or signed: one rule (imaging_sync.copies), the same answer through the presign endpoint and C-MOVE.

The fixture: one instance that four partners keep. ``d`` (priority 20) keeps
it in a bucket outside the storage registry; ``b`` (priority 10) in a
registered bucket, but the object is gone; ``c`` (priority 0) and ``a`` (no
longer configured) each have a readable copy. Each copy's file says whose it
is (StudyDescription), so the bytes a viewer downloads and the bytes a
Storage SCP receives name the copy used: ``c``'s, through both edges, on
SQLite and PostgreSQL (real moto S3, real pynetdicom peers).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove
from sqlalchemy import Engine, select

from app.assembly import api_app, open_core
from devtools.dicom_files import InstanceSpec, dicom_file
from devtools.factories import TEST_API_KEY_ENV
from devtools.storage import EmbeddedStorage, embedded_storage
from dicom.server import DicomServer, build_services
from imaging_sync import apikeys
from imaging_sync.config import DatabaseConfig, DicomConfig, DicomDestination, PartnerConfig, Settings
from imaging_sync.copies import CopyChooser, Location
from imaging_sync.core import Core
from imaging_sync.db.models import AuditEntry, Instance
from imaging_sync.dto import StudyDTO
from imaging_sync.errors import ObjectNotFoundError, StorageError
from imaging_sync.ids import new_id
from imaging_sync.partners.wire import ItemParser
from imaging_sync.sync.apply import PageWriter
from imaging_sync.vocabulary import Vocabulary
from storage import ObjectReader

STUDY_UID = "1.2.826.0.1.3680043.10.556.1"
SOP_UID = f"{STUDY_UID}.1.1"
ROGUE_BUCKET = "rogue-bucket-not-registered"
KEY = "studies/556/1.dcm"
PRIORITIES = {"d": 20, "b": 10, "c": 0}  # "a" is no longer configured


@pytest.fixture(scope="module")
def s3() -> Iterator[EmbeddedStorage]:
    with embedded_storage(("eu-west-1", "ap-northeast-2", "us-east-2")) as storage:
        yield storage


def bucket_of(s3: EmbeddedStorage, partner: str) -> str:
    return ROGUE_BUCKET if partner == "d" else s3.buckets["bca".index(partner)].name


def copy_of(partner: str) -> bytes:
    """The instance's file as ``partner`` keeps it: the same instance, a description naming the copy."""
    return dicom_file(InstanceSpec(sop_instance_uid=SOP_UID, series_instance_uid=f"{STUDY_UID}.1", study_instance_uid=STUDY_UID,
                                   patient_id="P-COPIES", study_description=f"copy of {partner}"))


def whose(data: bytes) -> str:
    return str(dcmread(io.BytesIO(data)).StudyDescription).removeprefix("copy of ")


def settings_for(db_url: str, s3: EmbeddedStorage) -> Settings:
    partners = {
        name: PartnerConfig(name=name, base_url="http://127.0.0.1:9", api_key_env=TEST_API_KEY_ENV, default_bucket=bucket_of(s3, name), priority=priority)
        for name, priority in PRIORITIES.items()
    }
    return Settings(database=DatabaseConfig(url=db_url), storage=s3.config, partners=partners)


def item(partner: str, bucket: str) -> bytes:
    return json.dumps({
        "id": f"{partner}-study", "updated_at": "2026-12-01T10:00:00Z", "study_instance_uid": STUDY_UID, "study_date": "2024-05-01",
        "subject": {"id": f"{partner}-patient", "patient_id": "P-COPIES", "name": "COPY^TEST"},
        "series": [{"id": f"{partner}-series", "series_instance_uid": f"{STUDY_UID}.1", "modality": "OT",
                    "instances": [{"id": f"{partner}-instance", "sop_instance_uid": SOP_UID, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7",
                                   "transfer_syntax_uid": "1.2.840.10008.1.2.1", "location": f"s3://{bucket}/{KEY}"}]}],
    }).encode()


@pytest.fixture
def core(db_url: str, engine: Engine, s3: EmbeddedStorage, monkeypatch: pytest.MonkeyPatch) -> Iterator[Core]:
    """Each partner's sync wrote its location (``a`` while it was still configured); only ``c`` and ``a`` uploaded the file."""
    s3.export_environ(monkeypatch.setenv)
    now = dt.datetime.now(dt.UTC)
    for partner in ("d", "b", "c", "a"):
        bucket = bucket_of(s3, partner)
        study = ItemParser(partner, Vocabulary({}), bucket, {bucket}).parse_item(item(partner, bucket))
        assert isinstance(study, StudyDTO), study
        with engine.begin() as conn:
            PageWriter(partner, {**PRIORITIES, "a": 0}, events=False).apply(conn, [study], new_id(), now)
        if partner in ("c", "a"):
            s3.put(bucket, KEY, copy_of(partner))
    core = open_core(settings_for(db_url, s3), configure_logs=False)
    yield core
    core.close()


@pytest.fixture
def storage_scp() -> Iterator[tuple[int, list[bytes]]]:
    """A pynetdicom Storage SCP (the C-MOVE destination) keeping what it receives, as received."""
    received: list[bytes] = []
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            received.append(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="COPY_STORE")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield server.server_address[1], received
    server.shutdown()


def presigned_copy(core: Core, s3: EmbeddedStorage, instance_id: Any) -> tuple[bytes, dict[str, Any]]:
    with core.engine.begin() as conn:
        _, token = apikeys.create_key(conn, "copies viewer", "viewer")
    with TestClient(api_app(core, s3.registry())) as client:
        response = client.get(f"/api/v1/instances/{instance_id}/url", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    with core.engine.connect() as conn:
        detail = conn.execute(select(AuditEntry.detail).where(AuditEntry.action == "issue_url")).scalar_one()
    return httpx.get(response.json()["url"], timeout=10).content, detail


def moved_copy(core: Core, s3: EmbeddedStorage, scp_port: int, received: list[bytes]) -> bytes:
    config = DicomConfig(
        ae_title="ISYNC_COPIES", host="127.0.0.1", port=0, network_timeout_seconds=10,
        destinations={"COPY_STORE": DicomDestination(host="127.0.0.1", port=scp_port)},
    ).with_local_peers({"COPY_SCU": ["move"]})
    server = DicomServer(config, build_services(config, core.engine, ObjectReader(s3.registry()), partner_priority=core.settings.priorities()))
    port = server.start()
    try:
        ae = AE(ae_title="COPY_SCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        assoc = ae.associate("127.0.0.1", port, ae_title="ISYNC_COPIES")
        assert assoc.is_established
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = STUDY_UID, f"{STUDY_UID}.1", SOP_UID
        try:
            final = [int(status.Status) for status, _ in assoc.send_c_move(ds, "COPY_STORE", StudyRootQueryRetrieveInformationModelMove)][-1]
        finally:
            assoc.release()
    finally:
        server.stop()
    assert final == 0x0000 and len(received) == 1, (hex(final), len(received))
    return received[0]


def test_the_presign_endpoint_and_c_move_use_the_same_copy(core: Core, s3: EmbeddedStorage, storage_scp: tuple[int, list[bytes]]) -> None:
    with core.engine.connect() as conn:
        instance_id = conn.execute(select(Instance.id).where(Instance.sop_instance_uid == SOP_UID)).scalar_one()
    signed, audited = presigned_copy(core, s3, instance_id)
    moved = moved_copy(core, s3, *storage_scp)
    # d's bucket is not registered, b's object is gone; of the two readable copies the configured partner's comes first.
    assert (whose(signed), whose(moved)) == ("c", "c")
    assert (audited["partner"], audited["skipped"]) == ("c", ["d", "b"])


# -- the rule itself ------------------------------------------------------------------------------------------


def test_configured_partners_come_by_priority_then_name_and_unconfigured_ones_after_them() -> None:
    chooser = CopyChooser({"low": -5, "b": 10, "c": 10, "zero": 0}, {"bucket"})
    copies = [Location(p, "bucket", "k") for p in ("gone", "low", "zero", "c", "b", "also-gone")]
    assert [loc.partner for loc in chooser.ranked(copies)] == ["b", "c", "zero", "low", "also-gone", "gone"]
    assert chooser.ranked([Location("b", "elsewhere", "k")]) == [] and chooser.best([Location("b", "elsewhere", "k")]) is None


def test_a_copy_whose_object_is_gone_or_whose_storage_fails_gives_way_to_the_next() -> None:
    chooser = CopyChooser({"b": 10, "c": 5, "e": 1}, {"bucket"})
    failures: dict[str, StorageError] = {"b": ObjectNotFoundError("gone"), "c": StorageError("endpoint down")}

    def attempt(location: Location) -> str:
        if location.partner in failures:
            raise failures[location.partner]
        return f"read {location.partner}"

    copies = [Location(p, "bucket", "k") for p in ("e", "c", "b")] + [Location("d", "other", "k")]
    found = chooser.first_available(copies, attempt)
    assert (found.value, found.location, [(s.partner, s.kind) for s in found.skipped]) == (
        "read e", Location("e", "bucket", "k"), [("d", "bucket_refused"), ("b", "object_missing"), ("c", "storage")],
    )
    none_left = chooser.first_available(copies[1:], attempt)
    assert (none_left.value, none_left.location, none_left.failure) == (None, None, failures["c"])
    only_missing = chooser.first_available([Location("b", "bucket", "k")], attempt)
    assert (only_missing.location, only_missing.failure, only_missing.skipped_partners) == (None, None, ["b"])
