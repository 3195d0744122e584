"""Whole-object GETs through ``storage.fetch``: exact bytes, bounded memory, honest errors, pooled connections.

Two real servers on 127.0.0.1: the embedded S3 (moto) for content, and
:class:`FakeS3`, a few lines of ``http.server`` that answer one key as a test
tells them to (a body cut short, a connection reset, a wrong ETag or CRC32, an
error status) — and that check every request's SigV4 signature with
botocore's own code before answering, so each test here also proves the
``Authorization`` header our signer wrote.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import boto3.session
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from counting_http import CountingHandler, CountingServer

from devtools.storage import EmbeddedStorage, embedded_storage
from imaging_sync.config import BucketConfig, StorageConfig
from imaging_sync.errors import BucketNotAllowedError, ObjectChangedError, ObjectCorruptError, ObjectNotFoundError, StorageError, ValidationError
from storage import BucketRegistry, ObjectReader
from storage.fetch import ObjectFetcher
from storage.reader import DEFAULT_CHUNK_SIZE

REPO = Path(__file__).resolve().parents[2]
SMALL = os.urandom(64 * 1024)
MULTI_MIB = os.urandom(3 * 1024 * 1024 + 4321)
KEYS = ["plain/1.dcm", "with space/a b.dcm", "ünïcødé/患者 1.dcm", "plus+sign/a+b.dcm", "odd/%41&=?#;,'(1)*!~.dcm"]


# -- the embedded S3 (moto) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[EmbeddedStorage]:
    with embedded_storage(["eu-west-1"]) as storage:
        yield storage


@pytest.fixture
def reader(s3: EmbeddedStorage, monkeypatch: pytest.MonkeyPatch) -> ObjectReader:
    s3.export_environ(monkeypatch.setenv)
    return ObjectReader(BucketRegistry(s3.config))


def read_all(reader: ObjectReader, bucket: str, key: str) -> tuple[bytes, list[int]]:
    with reader.open_object(bucket, key) as stream:
        chunks = list(stream)
    return b"".join(chunks), [len(c) for c in chunks]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("data", [SMALL, MULTI_MIB], ids=["64KiB", "3MiB"])
def test_content_arrives_byte_identical_whatever_the_key(s3: EmbeddedStorage, reader: ObjectReader, key: str, data: bytes) -> None:
    bucket = s3.buckets[0].name
    s3.put(bucket, key, data, content_type="application/dicom")
    with reader.open_object(bucket, key) as stream:
        assert (stream.info.size, stream.info.etag, stream.info.content_type) == (len(data), hashlib.md5(data).hexdigest(), "application/dicom")
        chunks = list(stream)
    assert b"".join(chunks) == data
    assert max(map(len, chunks)) <= DEFAULT_CHUNK_SIZE


def test_an_object_stored_without_a_checksum_is_read_and_checked_by_its_etag(s3: EmbeddedStorage, reader: ObjectReader) -> None:
    bucket = s3.buckets[0].name
    # boto3 adds a CRC32 to every upload unless told not to; an older uploader did not.
    client = boto3.session.Session().client(
        "s3", region_name="eu-west-1", endpoint_url=s3.endpoint_url, aws_access_key_id="x", aws_secret_access_key="x",
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"),
    )
    client.put_object(Bucket=bucket, Key="no-checksum/1.dcm", Body=MULTI_MIB)
    assert "ChecksumCRC32" not in client.get_object(Bucket=bucket, Key="no-checksum/1.dcm", ChecksumMode="ENABLED")
    assert read_all(reader, bucket, "no-checksum/1.dcm")[0] == MULTI_MIB


def test_an_object_gone_since_indexing_is_object_not_found_at_open(s3: EmbeddedStorage, reader: ObjectReader) -> None:
    bucket = s3.buckets[0].name
    s3.put(bucket, "gone/1.dcm", b"soon gone")
    s3.admin_client(bucket).delete_object(Bucket=bucket, Key="gone/1.dcm")
    with pytest.raises(ObjectNotFoundError, match=f"open s3://{bucket}/gone/1.dcm: no such object"):
        reader.open_object(bucket, "gone/1.dcm")


def test_eight_threads_fetch_at_once_each_getting_its_own_bytes(s3: EmbeddedStorage, reader: ObjectReader) -> None:
    bucket = s3.buckets[0].name
    objects = {f"parallel/{i}.dcm": os.urandom(256 * 1024 + i) for i in range(24)}
    for key, data in objects.items():
        s3.put(bucket, key, data)
    got: dict[str, bytes] = {}
    barrier = threading.Barrier(8)

    def fetch(keys: list[str]) -> None:
        barrier.wait()
        for key in keys:
            got[key] = read_all(reader, bucket, key)[0]

    keys = list(objects)
    threads = [threading.Thread(target=fetch, args=(keys[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == objects


_STREAM_TO_FILE = """
import json, sys, tracemalloc
from imaging_sync.config import BucketConfig, StorageConfig
from storage import BucketRegistry, ObjectReader

args = json.loads(sys.argv[1])
bucket = BucketConfig(region=args["region"], endpoint_url=args["endpoint"], auth="keys", addressing_style="path",
                      access_key_id_env=args["ak_env"], secret_access_key_env=args["sk_env"])
reader = ObjectReader(BucketRegistry(StorageConfig(buckets={args["bucket"]: bucket})))

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

with reader.open_object(args["bucket"], args["warm_key"]) as stream:  # imports, endpoint, pool: not the object's cost
    b"".join(stream)
before = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from here
    peak_reset = True
except OSError:
    peak_reset = False
tracemalloc.start()
size = 0
with open(args["out"], "wb") as out, reader.open_object(args["bucket"], args["key"]) as stream:
    for chunk in stream:
        out.write(chunk)
        size += len(chunk)
traced_peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"size": size, "traced_peak": traced_peak, "rss_growth": status("VmHWM") - before if peak_reset else None}))
"""


@pytest.mark.slow
def test_a_200_mb_object_streams_to_a_file_with_memory_far_below_its_size(s3: EmbeddedStorage, tmp_path: Path) -> None:
    """In a child process, so neither moto (in this one) nor the test's own copy of the data is counted."""
    bucket = s3.buckets[0]
    big = os.urandom(200 * 1024 * 1024)
    digest = hashlib.sha256(big).hexdigest()
    s3.put(bucket.name, "big/200mb.dcm", big)
    del big
    s3.put(bucket.name, "big/warm.dcm", SMALL)
    out = tmp_path / "spool.dcm"
    args = {"region": bucket.region, "endpoint": s3.endpoint_url, "bucket": bucket.name, "key": "big/200mb.dcm", "warm_key": "big/warm.dcm",
            "ak_env": bucket.access_key_id_env, "sk_env": bucket.secret_access_key_env, "out": str(out)}
    done = subprocess.run([sys.executable, "-c", _STREAM_TO_FILE, json.dumps(args)], cwd=REPO, env={**os.environ, **s3.environ},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    assert measured["size"] == 200 * 1024 * 1024
    with out.open("rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest
    assert measured["traced_peak"] < 8 * 1024 * 1024, measured  # a few 1 MiB chunks at most, never the object
    if measured["rss_growth"] is not None:
        assert measured["rss_growth"] < 48 * 1024 * 1024, measured


# -- FakeS3: a server that misbehaves on request -----------------------------------------------------

ACCESS_KEY, SECRET_KEY, TOKEN = "AKIAFAKES3TESTKEY001", "fake/secret+key=value", "FwoGZXIvYXdzEXAMPLE/session+token=="
BUCKET = "fake-s3-bucket"
Reply = Callable[["FakeHandler"], None]


class FakeS3(CountingServer):
    """HTTP/1.1 keep-alive on 127.0.0.1; ``replies[key]`` answers GET /fake-s3-bucket/<key>."""

    def __init__(self) -> None:
        super().__init__(FakeHandler)
        self.replies: dict[str, Reply] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeHandler(CountingHandler):
    server: FakeS3

    def do_GET(self) -> None:
        key = unquote(self.path.removeprefix(f"/{BUCKET}/"))
        self.server.requests.append((key, dict(self.headers.items())))
        if not self._signature_is_botocores():
            self.send(403, error_document("SignatureDoesNotMatch"))
        else:
            self.server.replies[key](self)

    def _signature_is_botocores(self) -> bool:
        """What S3 does with the Authorization header, with botocore's SigV4 code (as storage.presigned_gate does for URLs)."""
        auth = self.headers.get("Authorization", "")
        fields = dict(part.strip().split("=", 1) for part in auth.removeprefix("AWS4-HMAC-SHA256 ").split(","))
        access_key, _, region, service, _ = fields["Credential"].split("/")
        if access_key != ACCESS_KEY:
            return False
        names = fields["SignedHeaders"].split(";")
        request = AWSRequest(method="GET", url=f"http://{self.headers['Host']}{self.path}",
                             headers={n: self.headers[n] for n in names if n != "host"})
        request.context["timestamp"] = self.headers["x-amz-date"]
        signer = S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), service, region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        return bool(fields["Signature"] == expected and signer.signed_headers(signer.headers_to_sign(request)) == fields["SignedHeaders"])

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, length: int | None = None, cut: int | None = None,
             reset: bool = False) -> None:
        """Status, headers, ``Content-Length: length`` (default: the body's), then the body or its first ``cut`` bytes."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()
        if reset:  # RST instead of FIN: the peer's next read fails with ECONNRESET
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        if cut is not None or reset:
            self.close_connection = True


def error_document(code: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>m</Message><RequestId>1</RequestId></Error>'.encode()


def object_headers(data: bytes, *, etag: str | None = None, crc32: str | None = None, **more: str) -> dict[str, str]:
    headers = {"ETag": f'"{hashlib.md5(data).hexdigest() if etag is None else etag}"', "Content-Type": "application/dicom", **more}
    if crc32 is not None:
        headers["x-amz-checksum-crc32"] = crc32
    return headers


def crc32_of(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@pytest.fixture
def fake() -> Iterator[FakeS3]:
    server = FakeS3()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


ENV = {"FAKE_AK": ACCESS_KEY, "FAKE_SK": SECRET_KEY, "FAKE_TOKEN": TOKEN}


@pytest.fixture
def fake_reader(fake: FakeS3) -> ObjectReader:
    """Temporary credentials (a session token), as an assumed role has; retries without the real backoff."""
    config = StorageConfig(buckets={BUCKET: BucketConfig(
        region="eu-west-1", endpoint_url=fake.url, auth="keys", addressing_style="path",
        access_key_id_env="FAKE_AK", secret_access_key_env="FAKE_SK", session_token_env="FAKE_TOKEN",
    )})
    registry = BucketRegistry(config, environ=ENV)
    return ObjectReader(registry, fetcher=ObjectFetcher(registry, backoff_seconds=0.001))


def test_the_request_is_signed_in_its_headers_with_the_session_token_and_asks_for_the_checksum(fake: FakeS3, fake_reader: ObjectReader) -> None:
    key = "ünï code/a+b c.dcm"
    fake.replies[key] = lambda h: h.send(200, SMALL, object_headers(SMALL, crc32=crc32_of(SMALL)))
    assert read_all(fake_reader, BUCKET, key)[0] == SMALL  # FakeS3 refuses a signature botocore would not compute
    (asked, headers), = fake.requests
    assert asked == key
    assert headers["x-amz-security-token"] == TOKEN and headers["x-amz-checksum-mode"] == "ENABLED"
    assert "X-Amz-Signature" not in headers and "x-amz-security-token" in headers["Authorization"]


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_connection_lost_mid_body_is_a_storage_error(fake: FakeS3, fake_reader: ObjectReader, reset: bool) -> None:
    data = os.urandom(3 * 1024 * 1024)
    fake.replies["cut.dcm"] = lambda h: h.send(200, data, object_headers(data), cut=1024 * 1024 + 7, reset=reset)
    stream = fake_reader.open_object(BUCKET, "cut.dcm")  # the headers were complete: the open succeeds
    assert stream.info.size == len(data)
    with pytest.raises(StorageError, match=f"read s3://{BUCKET}/cut.dcm: ") as caught:
        for _ in stream:
            pass
    assert not isinstance(caught.value, ObjectNotFoundError)
    assert "arrived short" in str(caught.value) or "connection lost" in str(caught.value)


def test_a_body_not_matching_its_etag_fails_at_the_end_after_its_bytes(fake: FakeS3, fake_reader: ObjectReader) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    wrong = hashlib.md5(b"other content").hexdigest()
    fake.replies["bad-etag.dcm"] = lambda h: h.send(200, data, object_headers(data, etag=wrong))
    seen = 0
    with pytest.raises(ObjectCorruptError, match=f"read s3://{BUCKET}/bad-etag.dcm: content does not match its ETag"):
        with fake_reader.open_object(BUCKET, "bad-etag.dcm") as stream:
            for chunk in stream:
                seen += len(chunk)
    assert seen == len(data), "the chunks went out before the check: the caller discards what it wrote"


def test_a_body_not_matching_its_crc32_is_a_corrupt_object(fake: FakeS3, fake_reader: ObjectReader) -> None:
    data = os.urandom(100_000)
    fake.replies["bad-crc.dcm"] = lambda h: h.send(200, data, object_headers(data, crc32=crc32_of(b"other")))
    with pytest.raises(ObjectCorruptError, match="content does not match its CRC32 checksum") as caught:
        read_all(fake_reader, BUCKET, "bad-crc.dcm")
    assert caught.value.kind == "object_corrupt"  # what the C-MOVE's audit entry and log line name, never the key


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(object_headers(SMALL, etag="0123456789abcdef0123456789abcdef", **{"x-amz-server-side-encryption": "aws:kms"}), id="sse-kms"),
        pytest.param(object_headers(SMALL, etag="0123456789abcdef0123456789abcdef-12"), id="multipart"),
        pytest.param(object_headers(SMALL, etag="0123456789abcdef0123456789abcdef-3", crc32="AAAAAA==-3"), id="multipart-composite-crc32"),
        pytest.param(object_headers(SMALL, etag="0123456789abcdef0123456789abcdef", crc32=crc32_of(SMALL)), id="crc32-checked-etag-not-hashed"),
    ],
)
def test_etags_and_checksums_that_are_not_of_the_content_are_not_checked(fake: FakeS3, fake_reader: ObjectReader, headers: dict[str, str]) -> None:
    fake.replies["not-md5.dcm"] = lambda h: h.send(200, SMALL, headers)
    assert read_all(fake_reader, BUCKET, "not-md5.dcm")[0] == SMALL


@pytest.mark.parametrize(
    ("status", "code", "error", "message", "attempts"),
    [
        (404, "NoSuchKey", ObjectNotFoundError, "no such object", 1),
        (403, "AccessDenied", StorageError, "access denied by the storage service (AccessDenied)", 1),
        (403, None, StorageError, "access denied by the storage service (403)", 1),
        (400, "ExpiredToken", StorageError, "access denied by the storage service (ExpiredToken)", 1),
        (404, "NoSuchBucket", StorageError, "the bucket does not exist at its endpoint (NoSuchBucket)", 1),
        (500, "InternalError", StorageError, "the storage service answered InternalError", 3),
        (503, "SlowDown", StorageError, "the storage service answered SlowDown", 3),
    ],
)
def test_error_statuses_become_our_errors_and_only_transient_ones_are_retried(
    fake: FakeS3, fake_reader: ObjectReader, status: int, code: str | None, error: type[StorageError], message: str, attempts: int
) -> None:
    fake.replies["e.dcm"] = lambda h: h.send(status, error_document(code) if code else b"", {"Content-Type": "application/xml"})
    with pytest.raises(StorageError) as caught:
        fake_reader.open_object(BUCKET, "e.dcm")
    assert type(caught.value) is error and str(caught.value) == f"open s3://{BUCKET}/e.dcm: {message}"
    assert caught.value.kind == ("object_missing" if error is ObjectNotFoundError else "storage")  # what copies.py falls back on
    assert len(fake.requests) == attempts


def test_a_transient_failure_is_retried_then_the_object_is_read(fake: FakeS3, fake_reader: ObjectReader) -> None:
    answers: Iterator[Reply] = iter([lambda h: h.send(503, error_document("SlowDown")), lambda h: h.send(200, SMALL, object_headers(SMALL))])
    fake.replies["flaky.dcm"] = lambda h: next(answers)(h)
    assert read_all(fake_reader, BUCKET, "flaky.dcm")[0] == SMALL
    assert len(fake.requests) == 2


def test_errors_and_logs_carry_no_signature_token_or_secret(fake: FakeS3, fake_reader: ObjectReader, caplog: pytest.LogCaptureFixture) -> None:
    # Resolved first: botocore's own presign that finds the endpoint logs its canonical request at DEBUG (once per bucket).
    fake_reader.registry.endpoint(BUCKET)
    caplog.set_level(logging.DEBUG)  # urllib3's and botocore's own lines of our GETs included, even where an earlier
    for library in ("urllib3", "botocore", "storage"):  # test's configure_logging quieted their loggers
        caplog.set_level(logging.DEBUG, logger=library)
    fake.replies["denied.dcm"] = lambda h: h.send(403, error_document("AccessDenied"))
    fake.replies["flaky.dcm"] = lambda h: h.send(503, error_document("SlowDown"))
    fake.replies["cut.dcm"] = lambda h: h.send(200, SMALL, object_headers(SMALL), cut=100, reset=True)
    messages = []
    for key in ("denied.dcm", "flaky.dcm", "cut.dcm"):
        with pytest.raises(StorageError) as caught:
            read_all(fake_reader, BUCKET, key)
        messages.append(str(caught.value))
    text = "\n".join(messages + [record.getMessage() for record in caplog.records])
    assert "urllib3" in {record.name.split(".")[0] for record in caplog.records}, "the debug lines were captured"
    for secret in (SECRET_KEY, TOKEN, "Signature=", "X-Amz-Signature", "Authorization", ACCESS_KEY):
        assert secret not in text


def test_an_unregistered_bucket_is_refused_before_any_request(fake: FakeS3, fake_reader: ObjectReader) -> None:
    with pytest.raises(BucketNotAllowedError, match="'not-registered'"):
        fake_reader.open_object("not-registered", "a.dcm")
    assert fake.requests == []


def test_an_unreachable_endpoint_is_a_storage_error_after_the_retries() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = StorageConfig(buckets={"dead-bucket": BucketConfig(endpoint_url=dead, auth="keys", access_key_id_env="FAKE_AK", secret_access_key_env="FAKE_SK")})
    registry = BucketRegistry(config, environ=ENV)
    reader = ObjectReader(registry, fetcher=ObjectFetcher(registry, backoff_seconds=0.001))
    with pytest.raises(StorageError, match="open s3://dead-bucket/a.dcm: storage endpoint unreachable or connection lost") as caught:
        reader.open_object("dead-bucket", "a.dcm")
    assert SECRET_KEY not in str(caught.value)


def test_connections_are_kept_alive_and_one_left_early_is_closed_not_reused(fake: FakeS3, fake_reader: ObjectReader) -> None:
    data = os.urandom(3 * 1024 * 1024)
    fake.replies["a.dcm"] = lambda h: h.send(200, data, object_headers(data))
    for _ in range(5):
        assert read_all(fake_reader, BUCKET, "a.dcm")[0] == data
    assert fake.connections == 1, "five GETs, one connection: each went back to the pool"
    with fake_reader.open_object(BUCKET, "a.dcm") as stream:
        next(iter(stream))  # one chunk of three, then leave
    assert read_all(fake_reader, BUCKET, "a.dcm")[0] == data
    assert fake.connections == 2, "the half-read connection was closed; the next GET opened a fresh one"


# -- ranged reads read whole (ObjectFetcher.read, on storage.http1): a frame, a header ------------------------------


def ranged(data: bytes, start: int, end: int, **more: str) -> Reply:
    """S3's answer to ``Range: bytes=start-(end-1)``: 206, the slice, its Content-Range."""
    return lambda h: h.send(206, data[start:end], object_headers(data, **{"Content-Range": f"bytes {start}-{end - 1}/{len(data)}", **more}))


def test_a_range_is_one_signed_get_with_its_conditions_and_the_connection_is_kept(fake: FakeS3, fake_reader: ObjectReader) -> None:
    data = os.urandom(200_000)
    fake.replies["f.dcm"] = ranged(data, 1000, 66536)
    for _ in range(5):
        assert fake_reader.read_range(BUCKET, "f.dcm", 1000, 66536, if_match="abc") == data[1000:66536]
    assert fake.connections == 1, "five ranged GETs, one connection"
    headers = {name.lower(): value for name, value in fake.requests[0][1].items()}
    assert headers["range"] == "bytes=1000-66535" and headers["if-match"] == '"abc"'
    assert headers["x-amz-security-token"] == TOKEN and "if-match" in headers["authorization"]  # FakeS3 checked the signature


@pytest.mark.parametrize(
    ("status", "code", "error", "attempts"),
    [
        (404, "NoSuchKey", ObjectNotFoundError, 1),
        (412, "PreconditionFailed", ObjectChangedError, 1),
        (416, "InvalidRange", ValidationError, 1),
        (403, "AccessDenied", StorageError, 1),
        (503, "SlowDown", StorageError, 3),
    ],
)
def test_a_range_answered_with_an_error_is_our_error_and_only_a_transient_one_is_retried(
    fake: FakeS3, fake_reader: ObjectReader, status: int, code: str, error: type[Exception], attempts: int
) -> None:
    fake.replies["e.dcm"] = lambda h: h.send(status, error_document(code), {"Content-Type": "application/xml"})
    with pytest.raises(error) as caught:
        fake_reader.read_range(BUCKET, "e.dcm", 0, 10, if_match="abc")
    assert type(caught.value) is error
    assert len(fake.requests) == attempts


def test_a_range_cut_short_or_reset_is_retried_and_then_read(fake: FakeS3, fake_reader: ObjectReader) -> None:
    data = os.urandom(100_000)
    answers: Iterator[Reply] = iter([
        lambda h: h.send(206, data[:50_000], {"Content-Range": f"bytes 0-49999/{len(data)}"}, cut=20_000, reset=True),
        lambda h: h.send(206, data[:50_000], {"Content-Range": f"bytes 0-49999/{len(data)}"}, cut=10),
        ranged(data, 0, 50_000),
    ])
    fake.replies["flaky.dcm"] = lambda h: next(answers)(h)
    assert fake_reader.read_range(BUCKET, "flaky.dcm", 0, 50_000) == data[:50_000]
    assert len(fake.requests) == 3


def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error(fake: FakeS3, fake_reader: ObjectReader) -> None:
    data = os.urandom(5000)

    def answer_then_hang_up(h: FakeHandler) -> None:
        ranged(data, 0, 100)(h)
        h.close_connection = True  # closed after the answer, without saying so: the client keeps it as idle

    fake.replies["idle.dcm"] = answer_then_hang_up
    assert fake_reader.read_range(BUCKET, "idle.dcm", 0, 100) == data[:100]
    fake.wait_closed(1)  # the server has hung up (its FIN sent) before the next GET takes the idle connection
    assert fake_reader.read_range(BUCKET, "idle.dcm", 0, 100) == data[:100]
    assert len(fake.requests) == 2 and fake.connections == 2


def test_a_range_answered_with_more_than_asked_is_refused(fake: FakeS3, fake_reader: ObjectReader) -> None:
    data = os.urandom(300_000)
    fake.replies["big.dcm"] = lambda h: h.send(206, data, {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"})
    with pytest.raises(StorageError, match="larger than"):
        fake_reader.read_range(BUCKET, "big.dcm", 0, 100)


def test_a_range_answered_whole_by_a_server_that_ignores_range_is_sliced(fake: FakeS3, fake_reader: ObjectReader) -> None:
    data = os.urandom(1000)
    fake.replies["whole.dcm"] = lambda h: h.send(200, data, object_headers(data))
    assert fake_reader.read_range(BUCKET, "whole.dcm", 10, 20) == data[10:20]
