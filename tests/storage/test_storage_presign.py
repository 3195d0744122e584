"""Presigned URLs against a real S3 endpoint over HTTP: moto's server behind S3's presigned-URL rules.

Two buckets in different regions, each with its own access key read from its
own environment variables; objects uploaded with boto3 and fetched with
httpx exactly as a viewer would. The embedded server checks every signature
(with botocore's SigV4 code) against the key of the bucket it names.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from devtools.storage import EmbeddedStorage, embedded_storage
from imaging_sync.errors import BucketNotAllowedError, ValidationError
from storage import DICOM_CONTENT_TYPE, BucketRegistry, Presigner
from storage.disposition import attachment

DATA = os.urandom(300 * 1024)
KEY = "studies/1.2.3/환자 영상/instance+1=a.dcm"


@pytest.fixture(scope="module")
def s3() -> Iterator[EmbeddedStorage]:
    with embedded_storage(["eu-west-1", "ap-northeast-2"], presign_max_seconds=3600) as storage:
        for bucket in storage.buckets:
            storage.put(bucket.name, KEY, DATA + bucket.name.encode())
        yield storage


@pytest.fixture
def registry(s3: EmbeddedStorage, monkeypatch: pytest.MonkeyPatch) -> BucketRegistry:
    """Credentials come from the process environment, as in production."""
    s3.export_environ(monkeypatch.setenv)
    return BucketRegistry(s3.config)


@pytest.fixture
def presigner(registry: BucketRegistry) -> Presigner:
    return Presigner(registry)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_each_bucket_is_signed_with_its_own_key_and_region_and_serves_the_exact_bytes(
    s3: EmbeddedStorage, presigner: Presigner
) -> None:
    for bucket in s3.buckets:
        signed = presigner.presign_get(bucket.name, KEY)
        access_key, _, region, service, _ = query(signed.url)["X-Amz-Credential"].split("/")
        assert (access_key, region, service) == (bucket.access_key_id, bucket.region, "s3")
        response = httpx.get(signed.url)
        assert response.status_code == 200, response.text
        assert response.content == DATA + bucket.name.encode()


def test_response_headers_carry_the_requested_content_type_and_download_name(s3: EmbeddedStorage, presigner: Presigner) -> None:
    bucket = s3.buckets[1].name
    default = httpx.get(presigner.presign_get(bucket, KEY).url)
    assert default.headers["content-type"] == DICOM_CONTENT_TYPE
    assert "content-disposition" not in default.headers

    named = httpx.get(presigner.presign_get(bucket, KEY, filename='환자 "CT" 1.dcm').url)
    assert named.headers["content-type"] == DICOM_CONTENT_TYPE
    assert named.headers["content-disposition"] == (
        "attachment; filename=\"__ _CT_ 1.dcm\"; filename*=UTF-8''%ED%99%98%EC%9E%90%20%22CT%22%201.dcm"
    )

    stored = httpx.get(presigner.presign_get(bucket, KEY, content_type=None).url)
    assert stored.headers["content-type"] == "application/octet-stream"  # what was uploaded


def test_a_url_signed_with_another_buckets_key_is_refused(s3: EmbeddedStorage, presigner: Presigner) -> None:
    first, second = s3.buckets
    url = presigner.presign_get(first.name, KEY).url
    forged = url.replace(first.access_key_id, second.access_key_id)
    response = httpx.get(forged)
    assert response.status_code == 403
    assert "<Code>SignatureDoesNotMatch</Code>" in response.text


def test_changing_a_signed_override_breaks_the_signature(s3: EmbeddedStorage, presigner: Presigner) -> None:
    url = presigner.presign_get(s3.buckets[0].name, KEY).url
    response = httpx.get(url.replace("application%2Fdicom", "text%2Fhtml"))
    assert response.status_code == 403
    assert "<Code>SignatureDoesNotMatch</Code>" in response.text


def test_expired_url_is_refused(s3: EmbeddedStorage, registry: BucketRegistry) -> None:
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    signed = Presigner(registry, clock=lambda: an_hour_ago).presign_get(s3.buckets[0].name, KEY, expires_in=1)
    assert signed.expires_at == an_hour_ago.replace(microsecond=0) + timedelta(seconds=1)
    response = httpx.get(signed.url)
    assert response.status_code == 403
    assert "Request has expired" in response.text


def test_default_lifetime_and_expiry_time(s3: EmbeddedStorage, registry: BucketRegistry) -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    signed = Presigner(registry, clock=lambda: now).presign_get(s3.buckets[0].name, KEY)
    assert query(signed.url)["X-Amz-Expires"] == "300"
    assert query(signed.url)["X-Amz-Date"] == "20300102T030405Z"
    assert signed.expires_at == datetime(2030, 1, 2, 3, 9, 5, tzinfo=UTC)


def test_lifetime_over_the_maximum_is_refused_naming_the_limit(s3: EmbeddedStorage, presigner: Presigner) -> None:
    with pytest.raises(ValidationError) as caught:
        presigner.presign_get(s3.buckets[0].name, KEY, expires_in=3601)
    assert caught.value.path == "expires_in"
    assert "at most 3600 seconds (storage.presign_max_seconds)" in str(caught.value)
    assert caught.value.kind == "validation"
    for bad in (0, -5, True, 1.5):
        with pytest.raises(ValidationError):
            presigner.presign_get(s3.buckets[0].name, KEY, expires_in=bad)  # type: ignore[arg-type]
    assert query(presigner.presign_get(s3.buckets[0].name, KEY, expires_in=3600).url)["X-Amz-Expires"] == "3600"


def test_unregistered_bucket_is_never_signed(s3: EmbeddedStorage, presigner: Presigner) -> None:
    s3.server.create_bucket("not-in-the-registry", "eu-west-1")  # exists at the endpoint, still refused
    with pytest.raises(BucketNotAllowedError):
        presigner.presign_get("not-in-the-registry", KEY)
    with pytest.raises(BucketNotAllowedError):
        # all or nothing: one bad location and nothing is signed
        presigner.presign_many([(s3.buckets[0].name, KEY, None), ("not-in-the-registry", KEY, None)])


@pytest.mark.parametrize(
    ("key", "content_type", "path"),
    [("", "application/dicom", "key"), ("k" * 1025, "application/dicom", "key"), (KEY, "text/plain\r\nX-Evil: 1", "content_type")],
)
def test_bad_arguments_are_request_errors(s3: EmbeddedStorage, presigner: Presigner, key: str, content_type: str, path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        presigner.presign_get(s3.buckets[0].name, key, content_type=content_type)
    assert caught.value.path == path


def test_a_whole_series_is_signed_in_well_under_100_ms(s3: EmbeddedStorage, presigner: Presigner) -> None:
    locations = [(s3.buckets[i % 2].name, f"series/1.2.3/{i:04d}.dcm", f"{i:04d}.dcm") for i in range(500)]
    presigner.presign_many(locations[:2])  # endpoints resolved, clients built
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        urls = presigner.presign_many(locations)
        best = min(best, time.perf_counter() - started)
    assert len(urls) == 500 and len({u.url for u in urls}) == 500
    assert best < 0.1, f"500 URLs took {best * 1000:.1f} ms"


def test_batch_urls_fetch_their_own_objects(s3: EmbeddedStorage, presigner: Presigner) -> None:
    bucket = s3.buckets[0].name
    for i in range(3):
        s3.put(bucket, f"series/9/{i}.dcm", bytes([i]) * 1000)
    urls = presigner.presign_many([(bucket, f"series/9/{i}.dcm", f"{i}.dcm") for i in range(3)])
    with httpx.Client() as client:
        for i, signed in enumerate(urls):
            response = client.get(signed.url)
            assert response.content == bytes([i]) * 1000
            assert response.headers["content-disposition"] == f'attachment; filename="{i}.dcm"'


def test_concurrent_presigning_from_8_threads_is_deterministic_and_valid(s3: EmbeddedStorage, registry: BucketRegistry) -> None:
    now = datetime.now(UTC)
    presigner = Presigner(registry, clock=lambda: now)  # fresh registry: clients are built under contention
    locations = [(s3.buckets[i % 2].name, KEY, f"{i}.dcm") for i in range(200)]
    expected = [u.url for u in Presigner(s3.registry(), clock=lambda: now).presign_many(locations)]
    results: list[list[str]] = [[] for _ in range(8)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(slot: int) -> None:
        try:
            barrier.wait()
            for location in locations:
                results[slot].append(presigner.presign_get(*location[:2], filename=location[2]).url)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(result == expected for result in results)
    assert len({id(registry.client(b.name)) for b in s3.buckets}) == 2
    assert httpx.get(results[7][-1]).content == DATA + s3.buckets[1].name.encode()


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("1.dcm", 'attachment; filename="1.dcm"'),
        ("영상.dcm", "attachment; filename=\"__.dcm\"; filename*=UTF-8''%EC%98%81%EC%83%81.dcm"),
        ("a\r\nSet-Cookie: x=y.dcm", 'attachment; filename="aSet-Cookie: x=y.dcm"'),
        ("../../etc/passwd", 'attachment; filename=".._.._etc_passwd"'),
        ('say "hi" 100%.dcm', "attachment; filename=\"say _hi_ 100_.dcm\"; filename*=UTF-8''say%20%22hi%22%20100%25.dcm"),
        ("evil\u202egpj.exe", 'attachment; filename="evilgpj.exe"'),
    ],
)
def test_content_disposition_is_rfc6266_safe(filename: str, expected: str) -> None:
    assert attachment(filename) == expected


def test_empty_download_name_is_a_request_error() -> None:
    with pytest.raises(ValidationError):
        attachment(" \r\n ")
