"""CPU and wall time per object GET from S3: botocore's get_object against leaner HTTP paths, on the same objects.

Why: a C-MOVE/C-GET spends about 30 % of the node's CPU per moved instance in
botocore's per-request pipeline (parameter validation, serialisation,
endpoint rules, event hooks, signing). This compares, object for object:

- ``a botocore``        ``client.get_object`` and its StreamingBody, as ``ObjectReader.open_object`` did;
- ``b presign+urllib3`` a URL presigned by ``storage.presign.Presigner`` (our SigV4), GET on a pooled urllib3 connection;
- ``c header+urllib3``  SigV4 in the ``Authorization`` header (``storage.sigv4.sign_get_headers``, checked against botocore in tests/storage), pooled urllib3;
- ``d presign+httpx``   the presigned URL through httpx (already a dependency) — for scale;
- ``e header+botocore URLLib3Session`` c's request on botocore's own urllib3 transport (its proxies, CA bundle, TLS settings);
- ``f header+pycurl``   c's request through libcurl (pycurl, when installed: not a dependency), one reused handle, body into memory;
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
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import urllib3
from botocore.awsrequest import AWSPreparedRequest
from botocore.httpsession import URLLib3Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imaging_sync.config import BucketConfig, StorageConfig  # noqa: E402
from storage import BucketRegistry, ObjectReader, Presigner  # noqa: E402
from storage.registry import CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS  # noqa: E402
from storage.sigv4 import sign_get_headers  # noqa: E402

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


def _count(chunks: Iterable[bytes], sink: Any) -> int:
    """Read every chunk, feeding ``sink`` (a hash) when verifying; the bytes read."""
    n = 0
    for chunk in chunks:
        n += len(chunk)
        if sink is not None:
            sink.update(chunk)
    return n


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
        n = _count(iter(lambda: body.read(CHUNK), b""), sink)
        body.close()
        return n

    def urllib3_read(response: Any, sink: Any) -> int:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        n = _count(iter(lambda: response.read(CHUNK, decode_content=False), b""), sink)
        response.release_conn()
        return n

    def urllib3_get(path: str, sink: Any, headers: dict[str, str] | None = None) -> int:
        return urllib3_read(pool.urlopen("GET", path, headers=headers, preload_content=False, decode_content=False, redirect=False), sink)

    def signed_headers(key: str) -> tuple[str, dict[str, str]]:
        """Candidates c and e: the project's own header signer (storage.sigv4; checked against botocore in tests/storage)."""
        return sign_get_headers(registry.signing_scope(BUCKET, registry.credentials(BUCKET)), signed_at=datetime.now(UTC), key=key)

    def presigned_urllib3(key: str, sink: Any = None) -> int:
        url = presigner.presign_get(BUCKET, key, content_type=None).url
        return urllib3_get(url[len(origin):], sink)

    def header_urllib3(key: str, sink: Any = None) -> int:
        path, headers = signed_headers(key)
        return urllib3_get(path, sink, headers)

    transport = URLLib3Session(timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS), max_pool_connections=8)

    def header_botocore_transport(key: str, sink: Any = None) -> int:
        path, headers = signed_headers(key)
        return urllib3_read(transport.send(AWSPreparedRequest("GET", origin + path, headers, None, True)).raw, sink)

    def presigned_httpx(key: str, sink: Any = None) -> int:
        url = presigner.presign_get(BUCKET, key, content_type=None).url
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}")
            return _count(response.iter_raw(CHUNK), sink)

    def chosen(key: str, sink: Any = None) -> int:
        with reader.open_object(BUCKET, key) as stream:
            return _count(stream, sink)

    try:  # a native HTTP client (libcurl), measured for comparison when installed: pip install pycurl
        import pycurl
    except ImportError:
        pycurl = None
    curl = pycurl.Curl() if pycurl is not None else None

    def header_pycurl(key: str, sink: Any = None) -> int:
        """libcurl through pycurl, one reused handle (its connection cache), the body into memory: C all the way."""
        assert curl is not None and pycurl is not None
        path, headers = signed_headers(key)
        body = io.BytesIO()
        curl.setopt(pycurl.URL, origin + path)
        curl.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in headers.items()])
        curl.setopt(pycurl.WRITEDATA, body)
        curl.perform()
        if curl.getinfo(pycurl.RESPONSE_CODE) != 200:
            raise RuntimeError(f"HTTP {curl.getinfo(pycurl.RESPONSE_CODE)}")
        data = body.getvalue()
        if sink is not None:
            sink.update(data)
        return len(data)

    return {
        "a botocore get_object": botocore_get,
        "b presign+urllib3": presigned_urllib3,
        "c header+urllib3": header_urllib3,
        "d presign+httpx": presigned_httpx,
        "e header+botocore URLLib3Session": header_botocore_transport,
        "chosen: ObjectReader.open_object": chosen,
        **({"f header+pycurl (libcurl)": header_pycurl} if curl is not None else {}),
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
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, urllib3 {version('urllib3')}, {platform.platform()}")
        print(f"objects per size: {args.objects}, median of {args.rounds} rounds; S3 = moto in a child process on {endpoint_url}")
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
        return 0
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
