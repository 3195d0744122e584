"""A month of the audit log archived to S3 (moto), checked against its seals, dropped, restored and verified (PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uuid6
from sqlalchemy import Engine, text

from imaging_sync import audit, audit_archive, audit_seals
from imaging_sync.audit import AuditEvent
from imaging_sync.config import BucketConfig, DatabaseConfig, StorageConfig
from imaging_sync.db import partitions
from imaging_sync.db.engine import create_db_engine
from imaging_sync.errors import ConfigError, ValidationError
from storage.audit_store import AuditObjectStore
from storage.embedded import EmbeddedS3
from storage.registry import BucketRegistry

pytestmark = pytest.mark.postgres
OLD = dt.date(2025, 6, 1)


def _old_id(day: int, n: int) -> uuid.UUID:
    moment = dt.datetime(OLD.year, OLD.month, day, 12, tzinfo=dt.UTC) + dt.timedelta(seconds=n)
    return uuid.UUID(int=(int(moment.timestamp() * 1000) << 80) | (uuid6.uuid7().int & ((1 << 80) - 1)))


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_db_engine(DatabaseConfig(url=pg_url))
    with engine.begin() as conn:
        partitions.create_month(conn, OLD)  # as the migration does for the months its rows are in
    yield engine
    engine.dispose()


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[AuditObjectStore]:
    name = f"isync-archive-{uuid.uuid4().hex[:8]}"
    with EmbeddedS3() as server:
        server.admin_client("us-east-1").create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        monkeypatch.setenv("ARCHIVE_KEY_ID", "AKIAARCHIVE")
        monkeypatch.setenv("ARCHIVE_SECRET", "archive-secret")
        config = StorageConfig(buckets={name: BucketConfig(region="us-east-1", endpoint_url=server.endpoint_url, auth="keys",
                                                          access_key_id_env="ARCHIVE_KEY_ID", secret_access_key_env="ARCHIVE_SECRET",
                                                          addressing_style="path")})
        yield AuditObjectStore(BucketRegistry(config), name, "audit-archive/", retention_years=5)


def _old_month(engine: Engine, entries: int) -> list[uuid.UUID]:
    """Entries of OLD with a completion and a disclosure each, written as the writer would have then."""
    ids = [_old_id(1 + i % 27, i) for i in range(entries)]
    with engine.begin() as conn:
        for i, entry_id in enumerate(ids):
            at = dt.datetime.fromtimestamp((entry_id.int >> 80) / 1000, tz=dt.UTC)
            conn.execute(text("INSERT INTO audit_log (id, at, channel, actor, action, outcome, detail) VALUES (:id, :at, 'dicom', 'AE', 'c-move', 'started', :d)"),
                         {"id": entry_id, "at": at, "d": json.dumps({"n": i, "note": "한국어"})})
            conn.execute(text("INSERT INTO audit_completion (audit_id, at, outcome, status) VALUES (:id, :at, 'success', 0)"), {"id": entry_id, "at": at})
            conn.execute(text("INSERT INTO audit_disclosure (entity_id, audit_id, kind) VALUES (:e, :id, 'study')"), {"e": uuid6.uuid7(), "id": entry_id})
    return ids


def _seal_all(engine: Engine) -> None:
    """Seal until nothing is left: a write transaction elsewhere on the server may hold the horizon a moment."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        audit_seals.seal(engine)
        if audit_seals.verify(engine).unsealed == 0:
            return
        time.sleep(0.1)
    raise AssertionError("rows left unsealed")


def _count(engine: Engine, month: dt.date) -> int:
    low, high = partitions.uuid7_floor(month), partitions.uuid7_floor(partitions.next_month(month))
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM audit_log WHERE id >= :lo AND id < :hi"), {"lo": low, "hi": high}) or 0)


def test_a_month_is_archived_checked_dropped_restored_and_verified(engine: Engine, store: AuditObjectStore) -> None:
    _old_month(engine, 40)
    audit.record_now(engine, AuditEvent(channel="http", actor="k", action="read", outcome="success"))  # this month stays
    _seal_all(engine)

    result = audit_archive.archive_month(engine, store, OLD)
    assert result.rows == {"audit_log": 40, "audit_completion": 40, "audit_disclosure": 40}
    assert store.names(f"{OLD:%Y-%m}/") == ["2025-06/audit.jsonl.gz", "2025-06/manifest.json", "2025-06/seals.json"]
    head = store._client.head_object(Bucket=store.bucket, Key=f"audit-archive/{OLD:%Y-%m}/audit.jsonl.gz")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    manifest = json.loads(store.get(f"{OLD:%Y-%m}/manifest.json"))
    assert manifest["rows"] == result.rows and sorted(manifest["seals"]) == sorted(str(n) for n in result.seals)
    with engine.connect() as conn:
        assert OLD not in partitions.months_present(conn), "the month's partitions are gone"
        assert conn.scalar(text("SELECT count(*) FROM audit_archive")) == 1
    assert _count(engine, OLD) == 0
    report = audit_seals.verify(engine)
    assert report.ok, [p.describe() for p in report.problems]  # the chain steps over the archived month

    restored = audit_archive.restore_month(engine, store, OLD)
    assert restored.ok and restored.rows == 120, [p.describe() for p in restored.problems]
    assert _count(engine, OLD) == 40
    assert audit_seals.verify(engine).ok


def test_an_export_that_does_not_match_its_seals_is_never_restored(engine: Engine, store: AuditObjectStore, tmp_path: Path) -> None:
    _old_month(engine, 5)
    _seal_all(engine)
    audit_archive.archive_month(engine, store, OLD)
    seals = [audit_seals.Seal.from_json(x) for x in json.loads(store.get(f"{OLD:%Y-%m}/seals.json"))]
    assert seals
    # A copy with one row edited: the check that guards both archive and restore names it.
    path = f"{tmp_path}/export.jsonl.gz"
    store.download(f"{OLD:%Y-%m}/audit.jsonl.gz", path)
    lines = gzip.open(path, "rb").read().splitlines()
    edited = json.loads(lines[0])
    edited["values"]["actor"] = "someone-else"
    lines[0] = json.dumps(edited).encode()
    with gzip.open(path, "wb") as out:
        out.write(b"\n".join(lines) + b"\n")
    with pytest.raises(ValidationError, match="the export does not match its seals: .*audit_log seq .*row changed since it was sealed"):
        audit_archive.check_export(path, seals)


def test_a_month_kept_online_or_on_sqlite_is_refused(engine: Engine, sqlite_url: str) -> None:
    with engine.connect() as conn:
        this_month = dt.date.today().replace(day=1)
        with pytest.raises(ValidationError, match="--before: .* would archive months kept online"):
            audit_archive.archivable(conn, this_month, online_months=13)
        assert OLD in audit_archive.archivable(conn, dt.date(2025, 7, 1), online_months=13, today=dt.date(2026, 12, 3))
    sqlite = create_db_engine(DatabaseConfig(url=sqlite_url))
    try:
        with sqlite.connect() as conn, pytest.raises(ConfigError, match="needs PostgreSQL"):
            audit_archive.archivable(conn, OLD, online_months=13)
    finally:
        sqlite.dispose()


def test_objects_written_once_cannot_be_overwritten_under_object_lock(store: AuditObjectStore) -> None:
    store.put("probe.json", b"{}")
    versions = store._client.list_object_versions(Bucket=store.bucket, Prefix="audit-archive/probe.json")["Versions"]
    with pytest.raises(Exception, match="AccessDenied|locked|WORM|retention"):
        store._client.delete_object(Bucket=store.bucket, Key="audit-archive/probe.json", VersionId=versions[0]["VersionId"])
    assert store.get("probe.json") == b"{}"
