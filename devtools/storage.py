"""Test helper: an embedded S3 with N buckets in different regions, each with its own credentials.

Used by the storage tests and available to other packages' tests (API,
DICOM) that need real objects behind real presigned URLs::

    with embedded_storage(["eu-west-1", "ap-northeast-2"]) as s3:
        registry = s3.registry()             # keys passed in; or, as in production:
        s3.export_environ(monkeypatch.setenv)  # then BucketRegistry(s3.config) reads them
        s3.put(s3.buckets[0].name, "a/b.dcm", data)

Every bucket gets ``auth = "keys"`` with its own access key read from its own
environment variables, and the server checks presigned signatures against
exactly those keys — a URL signed with the wrong bucket's key is refused.
Bucket names carry a random suffix because moto's data is per process.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from imaging_sync.config import BucketConfig, StorageConfig
from storage.embedded import EmbeddedS3
from storage.registry import BucketRegistry


@dataclass(frozen=True)
class FixtureBucket:
    name: str
    region: str
    access_key_id: str
    secret_access_key: str
    access_key_id_env: str
    secret_access_key_env: str


@dataclass(frozen=True)
class EmbeddedStorage:
    server: EmbeddedS3
    buckets: list[FixtureBucket]
    config: StorageConfig

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    @property
    def environ(self) -> dict[str, str]:
        """The environment variables the config names, with each bucket's keys."""
        env: dict[str, str] = {}
        for bucket in self.buckets:
            env[bucket.access_key_id_env] = bucket.access_key_id
            env[bucket.secret_access_key_env] = bucket.secret_access_key
        return env

    def export_environ(self, setenv: Callable[[str, str], object]) -> None:
        """Put the buckets' keys where production has them, the process environment (``monkeypatch.setenv``)."""
        for name, value in self.environ.items():
            setenv(name, value)

    def registry(self, environ: Mapping[str, str] | None = None) -> BucketRegistry:
        """A registry over the config; credentials from ``environ`` (default: :attr:`environ`)."""
        return BucketRegistry(self.config, environ=self.environ if environ is None else environ)

    def put(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        """Upload a fixture object through boto3, in the bucket's region."""
        region = next(b.region for b in self.buckets if b.name == bucket)
        self.server.admin_client(region).put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)

    def admin_client(self, bucket: str) -> Any:
        region = next(b.region for b in self.buckets if b.name == bucket)
        return self.server.admin_client(region)


def make_buckets(regions: Sequence[str], *, prefix: str = "isync") -> list[FixtureBucket]:
    """One bucket per region, each with its own made-up access key and its own env var names."""
    buckets = []
    for i, region in enumerate(regions):
        tag = secrets.token_hex(4)
        env = f"IMAGING_SYNC_TEST_S3_{i}_{tag.upper()}"
        buckets.append(
            FixtureBucket(
                name=f"{prefix}-{i}-{tag}",
                region=region,
                access_key_id=f"AKIATEST{i}{tag.upper()}",
                secret_access_key=secrets.token_urlsafe(30),
                access_key_id_env=f"{env}_ACCESS_KEY_ID",
                secret_access_key_env=f"{env}_SECRET_ACCESS_KEY",
            )
        )
    return buckets


@contextmanager
def embedded_storage(
    regions: Sequence[str] = ("eu-west-1", "ap-northeast-2"),
    *,
    presign_default_seconds: int = 300,
    presign_max_seconds: int = 3600,
    check_signatures: bool = True,
) -> Iterator[EmbeddedStorage]:
    """Start an embedded S3 with one bucket per region and yield it with a matching StorageConfig."""
    buckets = make_buckets(regions)
    keys = {b.access_key_id: b.secret_access_key for b in buckets} if check_signatures else None
    with EmbeddedS3(buckets={b.name: b.region for b in buckets}, secrets=keys) as server:
        config = StorageConfig(
            presign_default_seconds=presign_default_seconds,
            presign_max_seconds=presign_max_seconds,
            buckets={
                b.name: BucketConfig(
                    region=b.region,
                    endpoint_url=server.endpoint_url,
                    auth="keys",
                    access_key_id_env=b.access_key_id_env,
                    secret_access_key_env=b.secret_access_key_env,
                    addressing_style="path",
                )
                for b in buckets
            },
        )
        yield EmbeddedStorage(server=server, buckets=buckets, config=config)
