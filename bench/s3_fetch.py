"""CPU and wall time per object GET from S3: botocore's get_object against leaner HTTP paths, on the same objects.

Why: a C-MOVE/C-GET spends about 30 % of the node's CPU per moved instance in
botocore's per-request pipeline (parameter validation, serialisation,
endpoint rules, event hooks, signing). This compares, object for object:

- ``a botocore``        ``client.get_object`` and its StreamingBody, as ``ObjectReader.open_object`` did;
- ``b presign+urllib3`` a URL presigned by ``storage.presign.Presigner`` (our SigV4), GET on a pooled urllib3 connection;
- ``c header+urllib3``  SigV4 in the ``Authorization`` header (our code, checked equal to botocore's), pooled urllib3;
- ``d presign+httpx``   the presigned URL through httpx (already a dependency) — for scale;
- ``e header+botocore URLLib3Session`` c's request on botocore's own urllib3 transport (its proxies, CA bundle, TLS settings);
- ``chosen``            ``ObjectReader.open_object`` as it is now (``storage.fetch``: e, plus the CRC32/MD5 content check).

Candidates a-e check nothing over the body (botocore's ``get_object`` checks
S3's CRC32 when the object has one, as moto's objects uploaded by boto3 do);
the printed MD5 cost per MiB is what the ETag check adds where no CRC32 is sent.

Every candidate first fetches every object once and must return its exact
bytes (that is also the warm-up: connections open, endpoint resolved); then
``--rounds`` timed rounds, candidates in rotating order, each reading all
``--objects`` objects of a size in 1 MiB chunks and dropping them. Printed:
the median over rounds of the client process's CPU per GET
(``time.process_time``) and of wall time per GET. The S3 (moto behind the
presigned-URL gate, checking signatures) runs in a child process, so its CPU
is not counted; on a small machine it competes for cores, which shows in the
wall times, not the CPU ones. moto's server (werkzeug) closes the connection
after every response, so each GET here pays a TCP connect, on every path;
against S3, which keeps connections alive, all of them cost a little less.

    python bench/s3_fetch.py [--objects 200] [--sizes 65536 1048576] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from botocore.credentials import Credentials
from botocore.httpsession import URLLib3Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imaging_sync.config import BucketConfig, StorageConfig  # noqa: E402
from storage import BucketRegistry, ObjectReader, Presigner  # noqa: E402
from storage.registry import CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS  # noqa: E402
from storage.sigv4 import ALGORITHM, AMZ_DATE_FORMAT, UNSIGNED_PAYLOAD, signing_key, uri_encode_path  # noqa: E402

BUCKET = "bench-fetch"
REGION = "eu-west-1"
ACCESS_KEY, SECRET_KEY = "AKIABENCHFETCH000001", "bench/fetch+secret=example"
CHUNK = 1 << 20

Fetch = Callable[[str, Any], int]  # (key, hash or None) -> bytes read; timed runs drop the bytes, as a spool write would not keep them


def object_bytes(size: int, index: int) -> bytes:
    """The same pseudo-random content in the server process (which stores it) and here (which checks it)."""
    return random.Random(size * 1_000_003 + index).randbytes(size)


def object_key(size: int, index: int) -> str:
    return f"studies/1.2.826.0.1.3680043.8.498.{size}/series/1/{index:05d}.dcm"


def serve(spec: str) -> None:
    """Child process: the embedded S3 with the objects, its URL on stdout, until stdin closes."""
    from storage.embedded import EmbeddedS3

    wanted = json.loads(spec)
    with EmbeddedS3(buckets={BUCKET: REGION}, secrets={ACCESS_KEY: SECRET_KEY}) as server:
        client = server.admin_client(REGION)
        for size in wanted["sizes"]:
            for i in range(wanted["objects"]):
                client.put_object(Bucket=BUCKET, Key=object_key(size, i), Body=object_bytes(size, i))
        print(server.endpoint_url, flush=True)
        sys.stdin.read()


class HeaderSigner:
    """SigV4 in the Authorization header for a GET with UNSIGNED-PAYLOAD (candidate c; bench only)."""

    def __init__(self, *, host: str, prefix: str, region: str, access_key: str, secret_key: str, token: str | None) -> None:
        self._host, self._prefix, self._region = host, prefix, region
        self._access_key, self._secret_key, self._token = access_key, secret_key, token
        self._signed = "host;x-amz-content-sha256;x-amz-date" + (";x-amz-security-token" if token else "")

    def headers(self, key: str, now: datetime) -> tuple[str, dict[str, str]]:
        amz_date = now.strftime(AMZ_DATE_FORMAT)
        scope = f"{amz_date[:8]}/{self._region}/s3/aws4_request"
        path = f"{self._prefix}/{uri_encode_path(key)}"
        canonical_headers = f"host:{self._host}\nx-amz-content-sha256:{UNSIGNED_PAYLOAD}\nx-amz-date:{amz_date}\n"
        if self._token:
            canonical_headers += f"x-amz-security-token:{self._token}\n"
        canonical_request = f"GET\n{path}\n\n{canonical_headers}\n{self._signed}\n{UNSIGNED_PAYLOAD}"
        string_to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n" + hashlib.sha256(canonical_request.encode()).hexdigest()
        signature = hmac.digest(signing_key(self._secret_key, amz_date[:8], self._region, "s3"), string_to_sign.encode(), "sha256").hex()
        headers = {
            "x-amz-content-sha256": UNSIGNED_PAYLOAD,
            "x-amz-date": amz_date,
            "Authorization": f"{ALGORITHM} Credential={self._access_key}/{scope}, SignedHeaders={self._signed}, Signature={signature}",
        }
        if self._token:
            headers["x-amz-security-token"] = self._token
        return path, headers


def check_header_signer_against_botocore() -> bool:
    """Candidate c's signature equals botocore's S3SigV4Auth for the same request and instant (token included)."""
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    signer = HeaderSigner(host="127.0.0.1:9000", prefix="/bkt", region=REGION, access_key=ACCESS_KEY, secret_key=SECRET_KEY, token="tok/en+=")
    path, ours = signer.headers("a b/ü+1.dcm", when)
    # As the presigned-URL gate checks: botocore's canonical request and signature over the headers as sent.
    request = AWSRequest(method="GET", url=f"http://127.0.0.1:9000{path}", headers={k: v for k, v in ours.items() if k != "Authorization"})
    request.context["timestamp"] = ours["x-amz-date"]
    auth = S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, "tok/en+="), "s3", REGION)
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    return bool(ours["Authorization"].endswith(f"SignedHeaders={auth.signed_headers(auth.headers_to_sign(request))}, Signature={expected}"))


def candidates(registry: BucketRegistry, endpoint_url: str) -> dict[str, Fetch]:
    client = registry.client(BUCKET)
    presigner = Presigner(registry)
    endpoint = registry.endpoint(BUCKET)
    origin = f"{urlsplit(endpoint.base_url).scheme}://{urlsplit(endpoint.base_url).netloc}"
    parts = urlsplit(endpoint_url)
    pool = urllib3.HTTPConnectionPool(
        parts.hostname or "", parts.port, maxsize=8, timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS), retries=False
    )
    http = httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS))
    reader = ObjectReader(registry)

    def botocore_get(key: str, sink: Any = None) -> int:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
        n = 0
        while chunk := body.read(CHUNK):
            n += len(chunk)
            if sink is not None:
                sink.update(chunk)
        body.close()
        return n

    def urllib3_get(path: str, sink: Any, headers: dict[str, str] | None = None) -> int:
        response = pool.urlopen("GET", path, headers=headers, preload_content=False, decode_content=False, redirect=False)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        n = 0
        while chunk := response.read(CHUNK, decode_content=False):
            n += len(chunk)
            if sink is not None:
                sink.update(chunk)
        response.release_conn()
        return n

    def presigned_urllib3(key: str, sink: Any = None) -> int:
        url = presigner.presign_get(BUCKET, key, content_type=None).url
        return urllib3_get(url[len(origin):], sink)

    def header_urllib3(key: str, sink: Any = None) -> int:
        credentials = registry.credentials(BUCKET)
        prefix = urlsplit(endpoint.base_url).path.rstrip("/")
        signer = HeaderSigner(
            host=endpoint.host, prefix=prefix, region=endpoint.region,
            access_key=credentials.access_key, secret_key=credentials.secret_key, token=credentials.token,
        )
        path, headers = signer.headers(key, datetime.now(UTC))
        return urllib3_get(path, sink, headers)

    transport = URLLib3Session(timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS), max_pool_connections=8)

    def header_botocore_transport(key: str, sink: Any = None) -> int:
        credentials = registry.credentials(BUCKET)
        prefix = urlsplit(endpoint.base_url).path.rstrip("/")
        signer = HeaderSigner(
            host=endpoint.host, prefix=prefix, region=endpoint.region,
            access_key=credentials.access_key, secret_key=credentials.secret_key, token=credentials.token,
        )
        path, headers = signer.headers(key, datetime.now(UTC))
        response = transport.send(AWSPreparedRequest("GET", origin + path, headers, None, True)).raw
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        n = 0
        while chunk := response.read(CHUNK, decode_content=False):
            n += len(chunk)
            if sink is not None:
                sink.update(chunk)
        response.release_conn()
        return n

    def presigned_httpx(key: str, sink: Any = None) -> int:
        url = presigner.presign_get(BUCKET, key, content_type=None).url
        n = 0
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}")
            for chunk in response.iter_raw(CHUNK):
                n += len(chunk)
                if sink is not None:
                    sink.update(chunk)
        return n

    def chosen(key: str, sink: Any = None) -> int:
        n = 0
        with reader.open_object(BUCKET, key) as stream:
            for chunk in stream:
                n += len(chunk)
                if sink is not None:
                    sink.update(chunk)
        return n

    return {
        "a botocore get_object": botocore_get,
        "b presign+urllib3": presigned_urllib3,
        "c header+urllib3": header_urllib3,
        "d presign+httpx": presigned_httpx,
        "e header+botocore URLLib3Session": header_botocore_transport,
        "chosen: ObjectReader.open_object": chosen,
    }


def verify(name: str, fetch: Fetch, size: int, objects: int) -> None:
    """Each candidate returns the exact bytes of every object (also the warm-up)."""
    for i in range(objects):
        digest = hashlib.md5(usedforsecurity=False)
        got = fetch(object_key(size, i), digest)
        if got != size or digest.digest() != hashlib.md5(object_bytes(size, i), usedforsecurity=False).digest():
            raise SystemExit(f"{name}: wrong content for {object_key(size, i)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64 * 1024, 1 << 20])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    spec = json.dumps({"sizes": args.sizes, "objects": args.objects})
    child = subprocess.Popen([sys.executable, __file__, "--serve", spec], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        endpoint_url = child.stdout.readline().strip()
        if not endpoint_url:
            raise SystemExit("the S3 process did not start")
        config = StorageConfig(buckets={BUCKET: BucketConfig(
            region=REGION, endpoint_url=endpoint_url, auth="keys", access_key_id_env="BENCH_AK", secret_access_key_env="BENCH_SK", addressing_style="path",
        )})
        registry = BucketRegistry(config, environ={"BENCH_AK": ACCESS_KEY, "BENCH_SK": SECRET_KEY})
        fetches = candidates(registry, endpoint_url)
        same = check_header_signer_against_botocore()
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, urllib3 {version('urllib3')}, {platform.platform()}")
        print(f"objects per size: {args.objects}, median of {args.rounds} rounds; S3 = moto in a child process on {endpoint_url}")
        print(f"candidate c's Authorization header equal to botocore's: {'yes' if same else 'NO'}")
        md5_data = os.urandom(CHUNK)
        started = time.process_time()
        for _ in range(50):
            hashlib.md5(md5_data, usedforsecurity=False).digest()
        print(f"MD5 over the body (the chosen path's ETag check): {(time.process_time() - started) / 50 * 1e6:.0f} µs CPU per MiB")
        for size in args.sizes:
            for name, fetch in fetches.items():
                verify(name, fetch, size, args.objects)
            keys = [object_key(size, i) for i in range(args.objects)]
            cpu: dict[str, list[float]] = {name: [] for name in fetches}
            wall: dict[str, list[float]] = {name: [] for name in fetches}
            names = list(fetches)
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    fetch = fetches[name]
                    c0, w0 = time.process_time(), time.perf_counter()
                    for key in keys:
                        fetch(key, None)
                    cpu[name].append((time.process_time() - c0) / len(keys) * 1e6)
                    wall[name].append((time.perf_counter() - w0) / len(keys) * 1e3)
            base = statistics.median(cpu[names[0]])
            print(f"\n{size // 1024} KiB objects          CPU µs/GET   wall ms/GET   CPU vs a")
            for name in names:
                c, w = statistics.median(cpu[name]), statistics.median(wall[name])
                print(f"  {name:34s} {c:8.0f}     {w:8.3f}     {c / base:6.2f}")
        return 0 if same else 1
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
