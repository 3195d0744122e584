"""S3-compatible servers for the benchmarks, each in its own process so its CPU can be read from ``/proc/<pid>/stat``.

``open_s3(kind, regions)`` starts the server ``kind`` (a key of :data:`S3_SERVERS`), creates one bucket per
region through the S3 API and yields a :class:`BenchS3`: its buckets, a ``StorageConfig`` pointing at it, the
environment variables that config names, ``put`` for fixtures, the server's pid and its request counts.

``moto``: the project's embedded S3 (``storage.embedded.EmbeddedS3``: moto's WSGI app in
waitress, behind the presigned-URL gate), started here by running this file as a script in a
child process. ``s3rver``: the npm package of that name (:class:`S3rverProcess`, installed beside this file).
To add another server (MinIO, ...), write a class with the methods of
:class:`S3Server` (``start`` returns the endpoint URL; ``credentials`` the access key pair a bucket must use if
the server accepts only fixed keys) and register it in :data:`S3_SERVERS`; ``--s3 NAME`` then selects it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import boto3
from botocore.config import Config

from devtools.storage import FixtureBucket, make_buckets
from imaging_sync.config import BucketConfig, StorageConfig

_ADMIN_KEY = "bench-admin"  # moto accepts any key for its own API (the gate checks presigned URLs only)


class S3Server(Protocol):
    label: str

    def start(self, buckets: Sequence[FixtureBucket], env: Mapping[str, str]) -> str: ...  # the endpoint URL

    @property
    def pid(self) -> int | None: ...  # None: not a separate process, its CPU cannot be read apart

    def requests(self) -> dict[str, int] | None: ...  # requests served so far by HTTP method, if the server can tell

    def credentials(self, bucket: FixtureBucket) -> tuple[str, str]: ...  # (access key id, secret) the node uses

    def admin_credentials(self) -> tuple[str, str]: ...  # for creating buckets and uploading fixtures

    def stop(self) -> None: ...


class MotoProcess:
    """The project's embedded S3 (moto + presigned gate) in a child process running this file."""

    label = "moto (storage.embedded, own process)"

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None

    def start(self, buckets: Sequence[FixtureBucket], env: Mapping[str, str]) -> str:
        secrets = {b.access_key_id: b.secret_access_key for b in buckets}
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "moto"], env={**env, "BENCH_S3_SECRETS": json.dumps(secrets)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"moto server did not start: {line!r}")
        return line

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def requests(self) -> dict[str, int] | None:
        if self._proc is None or self._proc.stdin is None or self._proc.stdout is None:
            return None
        self._proc.stdin.write("count\n")
        self._proc.stdin.flush()
        return {str(k): int(v) for k, v in json.loads(self._proc.stdout.readline()).items()}

    def credentials(self, bucket: FixtureBucket) -> tuple[str, str]:
        return bucket.access_key_id, bucket.secret_access_key

    def admin_credentials(self) -> tuple[str, str]:
        return _ADMIN_KEY, _ADMIN_KEY

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # EOF: the child stops its server and exits
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


S3RVER = Path(os.environ.get("S3RVER", Path(__file__).parent / ".s3rver" / "node_modules" / ".bin" / "s3rver"))


class S3rverProcess:
    """s3rver (npm, Node.js; fixed credentials S3RVER/S3RVER), files in a temporary folder: a faster S3 stand-in than moto.

    Install it beside this file, from the npm registry: ``npm install --prefix bench/.s3rver s3rver@3.7.1``
    (or point ``S3RVER`` at its executable). It verifies SigV4 signatures, serves path-style buckets and
    answers GetObject with an MD5 ETag; it keeps no request counts.
    """

    label = "s3rver 3.7.1 (npm, own process)"

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    def start(self, buckets: Sequence[FixtureBucket], env: Mapping[str, str]) -> str:
        import socket
        import tempfile
        import time

        if not S3RVER.exists():
            raise RuntimeError(f"s3rver not found at {S3RVER}: npm install --prefix bench/.s3rver s3rver@3.7.1")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._dir = tempfile.mkdtemp(prefix="s3rver-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
        self._proc = subprocess.Popen(
            [str(S3RVER), "-d", self._dir, "-a", "127.0.0.1", "-p", str(port), "--silent", "--no-vhost-buckets"],
            env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}"
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("s3rver did not start within 30 s")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def requests(self) -> dict[str, int] | None:
        return None

    def credentials(self, bucket: FixtureBucket) -> tuple[str, str]:
        return "S3RVER", "S3RVER"

    def admin_credentials(self) -> tuple[str, str]:
        return "S3RVER", "S3RVER"

    def stop(self) -> None:
        import shutil

        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


S3_SERVERS: dict[str, type[S3Server]] = {"moto": MotoProcess, "s3rver": S3rverProcess}


@dataclass
class BenchS3:
    server: S3Server
    buckets: list[FixtureBucket]
    config: StorageConfig
    environ: dict[str, str]
    _clients: dict[str, Any] = field(default_factory=dict)

    def client(self, region: str) -> Any:
        if region not in self._clients:
            key, secret = self.server.admin_credentials()
            endpoint = next(iter(self.config.buckets.values())).endpoint_url
            self._clients[region] = boto3.client(
                "s3", region_name=region, endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            )
        return self._clients[region]

    def put(self, bucket: str, key: str, data: bytes) -> None:
        region = next(b.region for b in self.buckets if b.name == bucket)
        self.client(region).put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/octet-stream")


@contextmanager
def open_s3(kind: str, regions: Sequence[str], env: Mapping[str, str]) -> Iterator[BenchS3]:
    """Start the S3 server ``kind`` with one bucket per region, each bucket with its own access keys (where the server allows)."""
    server = S3_SERVERS[kind]()
    buckets = make_buckets(regions, prefix="bench")
    endpoint = server.start(buckets, env)
    try:
        config = StorageConfig(buckets={
            b.name: BucketConfig(region=b.region, endpoint_url=endpoint, auth="keys", access_key_id_env=b.access_key_id_env,
                                 secret_access_key_env=b.secret_access_key_env, addressing_style="path")
            for b in buckets
        })
        environ: dict[str, str] = {}
        for b in buckets:
            environ[b.access_key_id_env], environ[b.secret_access_key_env] = server.credentials(b)
        s3 = BenchS3(server=server, buckets=buckets, config=config, environ=environ)
        for b in buckets:
            kwargs: dict[str, Any] = {"Bucket": b.name}
            if b.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": b.region}
            s3.client(b.region).create_bucket(**kwargs)
        yield s3
    finally:
        server.stop()


def _serve_moto() -> None:
    """Child process: EmbeddedS3 on a free port; print its URL; answer ``count`` on stdin with request counts; stop at EOF."""
    import threading

    from storage.embedded import EmbeddedS3
    from storage.presigned_gate import WsgiApp

    counts: dict[str, int] = {}
    lock = threading.Lock()

    def counting(app: WsgiApp) -> WsgiApp:
        def counted(environ: dict[str, Any], start_response: Any) -> Any:
            with lock:
                counts[environ["REQUEST_METHOD"]] = counts.get(environ["REQUEST_METHOD"], 0) + 1
            return app(environ, start_response)

        return counted

    secrets = json.loads(os.environ.get("BENCH_S3_SECRETS", "{}")) or None
    with EmbeddedS3(secrets=secrets, middleware=counting) as server:
        print(server.endpoint_url, flush=True)
        for line in sys.stdin:
            if line.strip() == "count":
                with lock:
                    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["moto"]:
        _serve_moto()
    else:
        sys.exit("usage: s3_servers.py moto  (run by open_s3)")
