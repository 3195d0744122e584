"""Reading objects through the registry: streamed in bounded chunks, by range, with honest errors."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator

import pytest

import storage.registry
from devtools.storage import EmbeddedStorage, embedded_storage
from imaging_sync.config import BucketConfig, StorageConfig
from imaging_sync.errors import BucketNotAllowedError, ObjectNotFoundError, StorageError, ValidationError
from storage import BucketRegistry, ObjectReader
from storage.reader import DEFAULT_CHUNK_SIZE

BIG = os.urandom(5 * 1024 * 1024 + 12345)
SMALL = os.urandom(64 * 1024)


@pytest.fixture(scope="module")
def s3() -> Iterator[EmbeddedStorage]:
    with embedded_storage(["us-east-2", "eu-central-1"]) as storage:
        storage.put(storage.buckets[0].name, "big/5mb.dcm", BIG, content_type="application/dicom")
        storage.put(storage.buckets[1].name, "small/1.dcm", SMALL)
        yield storage


@pytest.fixture
def reader(s3: EmbeddedStorage, monkeypatch: pytest.MonkeyPatch) -> ObjectReader:
    s3.export_environ(monkeypatch.setenv)
    return ObjectReader(BucketRegistry(s3.config))


def test_a_5_mb_object_streams_in_bounded_chunks_matching_the_bytes(s3: EmbeddedStorage, reader: ObjectReader) -> None:
    digest, sizes = hashlib.sha256(), []
    with reader.open_object(s3.buckets[0].name, "big/5mb.dcm") as stream:
        assert stream.info.size == len(BIG)
        assert stream.info.content_type == "application/dicom"
        for chunk in stream:
            sizes.append(len(chunk))
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(BIG).digest()
    assert max(sizes) <= DEFAULT_CHUNK_SIZE
    assert len(sizes) >= 6  # 5 MiB + a bit, never the whole object at once


def test_chunk_size_is_configurable(s3: EmbeddedStorage, reader: ObjectReader) -> None:
    small_chunks = ObjectReader(BucketRegistry(s3.config), chunk_size=10_000)
    with small_chunks.open_object(s3.buckets[1].name, "small/1.dcm") as stream:
        chunks = list(stream)
    assert b"".join(chunks) == SMALL
    assert max(map(len, chunks)) <= 10_000 and len(chunks) == 7


def test_leaving_a_stream_early_closes_it(s3: EmbeddedStorage, reader: ObjectReader) -> None:
    with reader.open_object(s3.buckets[0].name, "big/5mb.dcm") as stream:
        first = next(iter(stream))
    assert first == BIG[: len(first)]
    with pytest.raises(StorageError, match="already closed"):
        next(iter(stream))


def test_head_gives_size_etag_and_content_type(s3: EmbeddedStorage, reader: ObjectReader) -> None:
    info = reader.head(s3.buckets[1].name, "small/1.dcm")
    assert info.size == len(SMALL)
    assert info.etag == hashlib.md5(SMALL).hexdigest()  # single-part upload: ETag is the MD5
    assert info.content_type == "application/octet-stream"


@pytest.mark.parametrize(("start", "end"), [(0, 1), (0, 132), (128, 132), (1_000_000, 3_000_001), (len(BIG) - 10, len(BIG) + 500)])
def test_read_range_is_like_slicing(s3: EmbeddedStorage, reader: ObjectReader, start: int, end: int) -> None:
    assert reader.read_range(s3.buckets[0].name, "big/5mb.dcm", start, end) == BIG[start:end]


@pytest.mark.parametrize(("start", "end"), [(-1, 5), (5, 5), (9, 3), (len(BIG) + 1, len(BIG) + 9)])
def test_bad_ranges_are_request_errors(s3: EmbeddedStorage, reader: ObjectReader, start: int, end: int) -> None:
    with pytest.raises(ValidationError):
        reader.read_range(s3.buckets[0].name, "big/5mb.dcm", start, end)


def test_a_missing_object_is_object_not_found_everywhere(s3: EmbeddedStorage, reader: ObjectReader) -> None:
    bucket = s3.buckets[0].name
    with pytest.raises(ObjectNotFoundError, match=f"s3://{bucket}/gone/1.dcm"):
        reader.head(bucket, "gone/1.dcm")
    with pytest.raises(ObjectNotFoundError):
        reader.open_object(bucket, "gone/1.dcm")
    with pytest.raises(ObjectNotFoundError):
        reader.read_range(bucket, "gone/1.dcm", 0, 10)


def test_unregistered_bucket_is_never_read(s3: EmbeddedStorage, reader: ObjectReader) -> None:
    s3.server.create_bucket("open-but-unregistered", "us-east-1")
    s3.server.admin_client().put_object(Bucket="open-but-unregistered", Key="x", Body=b"secret")
    with pytest.raises(BucketNotAllowedError, match="open-but-unregistered"):
        reader.open_object("open-but-unregistered", "x")
    with pytest.raises(BucketNotAllowedError):
        reader.head("open-but-unregistered", "x")


def test_access_denied_names_bucket_and_key_but_no_credentials(s3: EmbeddedStorage, reader: ObjectReader) -> None:
    bucket = s3.buckets[1]
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket.name}/locked/*"}],
    }
    s3.admin_client(bucket.name).put_bucket_policy(Bucket=bucket.name, Policy=json.dumps(policy))
    s3.put(bucket.name, "locked/1.dcm", b"x")
    try:
        with pytest.raises(StorageError) as caught:
            reader.open_object(bucket.name, "locked/1.dcm")
    finally:
        s3.admin_client(bucket.name).delete_bucket_policy(Bucket=bucket.name)
    message = str(caught.value)
    assert f"s3://{bucket.name}/locked/1.dcm" in message and "access denied" in message
    assert not isinstance(caught.value, ObjectNotFoundError)
    assert bucket.secret_access_key not in message and bucket.access_key_id not in message


def test_unreachable_endpoint_is_a_storage_error_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage.registry, "RETRIES", {"mode": "standard", "total_max_attempts": 1})  # no backoff wait
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = StorageConfig(
        buckets={"dead-bucket": BucketConfig(endpoint_url=dead, auth="keys", access_key_id_env="A", secret_access_key_env="S")}
    )
    reader = ObjectReader(BucketRegistry(config, environ={"A": "AKIADEAD", "S": "very-secret-value"}))
    with pytest.raises(StorageError) as caught:
        reader.head("dead-bucket", "a/b.dcm")
    message = str(caught.value)
    assert "s3://dead-bucket/a/b.dcm" in message and "unreachable" in message
    assert "very-secret-value" not in message and "AKIADEAD" not in message
