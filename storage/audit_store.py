"""Objects of the audit log kept outside the database: seal copies and archived months, in a registered bucket.

The point of both is that the database's owner cannot rewrite them: each
object is written once, under S3 Object Lock in COMPLIANCE mode until
``retain_until`` where the bucket has object lock enabled (checked once; a
bucket without it still gets the objects, and ``imaging-sync doctor`` says
so). Only a bucket of the registry is ever written (``BucketRegistry``
refuses any other), and every upload is read back and compared before it
counts (:meth:`put` returns only then).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import tempfile
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from imaging_sync.audit_archive import file_sha256
from imaging_sync.errors import StorageError
from storage.boto_errors import storage_error
from storage.registry import BucketRegistry

log = logging.getLogger(__name__)


class AuditObjectStore:
    """Write-once objects under ``prefix`` in ``bucket``, locked for ``retention_years`` where the store can."""

    def __init__(self, registry: BucketRegistry, bucket: str, prefix: str, *, retention_years: int) -> None:
        if bucket not in registry:
            raise StorageError(f"audit bucket {bucket!r} is not a registered bucket ([storage.buckets])")
        self.bucket, self.prefix, self.retention_years = bucket, prefix, retention_years
        self._client: Any = registry.client(bucket)
        self._object_lock: bool | None = None

    @property
    def object_lock(self) -> bool:
        """Whether the bucket has Object Lock enabled (asked once)."""
        if self._object_lock is None:
            try:
                answer = self._client.get_object_lock_configuration(Bucket=self.bucket)
                self._object_lock = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("ObjectLockConfigurationNotFoundError", "NotImplemented"):
                    raise storage_error(exc, action="read the object lock of", bucket=self.bucket) from None
                self._object_lock = False
            except BotoCoreError as exc:
                raise storage_error(exc, action="read the object lock of", bucket=self.bucket) from None
        return self._object_lock

    def retain_until(self, now: dt.datetime | None = None) -> dt.datetime:
        now = now or dt.datetime.now(dt.UTC)
        return now.replace(year=now.year + self.retention_years) if not (now.month == 2 and now.day == 29) else now + dt.timedelta(days=365 * self.retention_years)

    def put(self, name: str, body: bytes, *, content_type: str = "application/json") -> str:
        """Write ``prefix + name`` once (locked where the bucket can), read it back, compare; its key."""
        key = self.prefix + name
        extra: dict[str, Any] = {}
        if self.object_lock:
            extra = {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": self.retain_until()}
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type,
                                    ChecksumAlgorithm="SHA256", **extra)
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, action="write", bucket=self.bucket, key=key) from None
        if hashlib.sha256(self.get(name)).digest() != hashlib.sha256(body).digest():
            raise StorageError(f"{self.bucket}/{key}: the object read back differs from what was written")
        return key

    def put_file(self, name: str, path: str, *, content_type: str = "application/octet-stream") -> str:
        """Upload a file (multipart when large) once, locked where the bucket can; download it again and compare.

        Returns the SHA-256 (hex) the object and the file share: once it returns, the file *is* what the bucket holds.
        """
        key = self.prefix + name
        extra: dict[str, Any] = {"ContentType": content_type, "ChecksumAlgorithm": "SHA256"}
        if self.object_lock:
            extra |= {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": self.retain_until()}
        try:
            self._client.upload_file(path, self.bucket, key, ExtraArgs=extra)
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, action="write", bucket=self.bucket, key=key) from None
        with tempfile.NamedTemporaryFile() as copy:
            self.download(name, copy.name)
            held, written = file_sha256(copy.name), file_sha256(path)
            if held != written:
                raise StorageError(f"{self.bucket}/{key}: the object read back differs from what was written")
        return written

    def download(self, name: str, path: str) -> None:
        """The object's bytes into ``path`` (streamed: an archived month does not fit in memory)."""
        key = self.prefix + name
        try:
            self._client.download_file(self.bucket, key, path)
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, action="read", bucket=self.bucket, key=key) from None

    def get(self, name: str) -> bytes:
        key = self.prefix + name
        try:
            return bytes(self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, action="read", bucket=self.bucket, key=key) from None

    def names(self, under: str = "") -> list[str]:
        """Names (without the prefix) of the objects under ``prefix + under``, sorted."""
        found: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + under):
                found.extend(item["Key"][len(self.prefix):] for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise storage_error(exc, action="list", bucket=self.bucket, key=self.prefix + under) from None
        return sorted(found)


__all__ = ["AuditObjectStore"]
