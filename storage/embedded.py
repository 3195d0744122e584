"""An S3 endpoint on 127.0.0.1 for local use, the demo and tests: moto's server, behind S3's presigned-URL rules.

Turned on by ``[storage] embedded = true``; it listens on
``storage.embedded_port`` (0 = any free port) and the registry reaches it
like any S3-compatible store, through each bucket's ``endpoint_url``
(:meth:`EmbeddedS3.storage_config` rewrites them). Nothing else changes: the
same registry, presigner and reader run against it as against AWS.

It serves moto's S3 WSGI application in waitress, not through moto's own
``ThreadedMotoServer``: that class cannot wrap the application (needed for
:class:`~storage.presigned_gate.PresignedGetGate`: moto 5.2 ignores presigned
signatures, expiry and response overrides), hangs in ``start()`` when the
port is taken (werkzeug's ``make_server`` calls ``sys.exit`` in its thread),
and never closes its listening socket on ``stop()``. Nor in werkzeug's
threaded server, which it runs: werkzeug answers every response with
``Connection: close``, so each GET cost a TCP connection and a new thread on
both sides; waitress keeps connections alive, as S3 does, and serves them
from a fixed pool of threads (a ranged GET: 0.9 ms of the server's CPU
against 1.2, and 0.5 ms of the client's against 0.7). Nor through moto's
``DomainDispatcherApplication`` for S3's requests: it picks one of its
hundred services per request, listing moto's package folder each time (a
third of moto's CPU per GET, measured with py-spy). :class:`S3First` sends
what is signed for S3 (or not signed) to moto's S3 application directly and
only the rest (STS, for the assumed-role tests) through the dispatcher.

moto keeps its data per process, in memory: two embedded servers in one
process see the same buckets, and everything is gone when the process ends.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3.session
import msgspec
from botocore.config import Config
from botocore.exceptions import ClientError

from imaging_sync.config import StorageConfig
from imaging_sync.errors import StorageError
from imaging_sync.extras import require_extra
from storage.presigned_gate import PresignedGetGate, WsgiApp
from storage.registry import new_botocore_session

if TYPE_CHECKING:
    from waitress.server import BaseWSGIServer

HOST = "127.0.0.1"  # local use only: never listen on other interfaces
THREADS = 8  # waitress's request threads: a DICOM node's or viewer's parallel GETs, the sync's HEADs
# moto accepts any credentials for its own API; these create the buckets.
_ADMIN_KEY = "embedded-admin"

log = logging.getLogger(__name__)


def wasyncore_close_all(server: BaseWSGIServer) -> None:
    """Close every channel of the server's loop (connections, the listening socket, its trigger)."""
    from waitress import wasyncore

    wasyncore.close_all(server._map)


class S3First:
    """moto's WSGI application for S3's requests, its service dispatcher for the others."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self._s3 = create_backend_app("s3")
        self._others = DomainDispatcherApplication(create_backend_app)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        app = self._s3 if signed_for(environ) in (None, "s3") else self._others
        return app(environ, start_response)


def signed_for(environ: Mapping[str, Any]) -> str | None:
    """The service a SigV4 request is signed for (its credential scope's fourth part), None when not signed so.

    The scope is ``AKID/date/region/service/aws4_request``, in the Authorization header or, for a presigned
    URL, the ``X-Amz-Credential`` parameter.
    """
    auth = environ.get("HTTP_AUTHORIZATION", "")
    found = _HEADER_SCOPE.search(auth) if auth else _QUERY_SCOPE.search(environ.get("QUERY_STRING", ""))
    return found.group(1).lower() if found else None


_HEADER_SCOPE = re.compile(r"Credential=[^/,]+/[^/,]+/[^/,]+/([^/,]+)/aws4_request")
_QUERY_SCOPE = re.compile(r"X-Amz-Credential=[^&/]+(?:/|%2F)[^&/%]+(?:/|%2F)[^&/%]+(?:/|%2F)([^&/%]+)(?:/|%2F)aws4_request", re.IGNORECASE)


class EmbeddedS3:
    """moto's S3 on 127.0.0.1; a context manager that starts it and shuts it down cleanly.

    ``secrets`` (access key id -> secret access key) makes presigned URLs
    signature-checked like on S3; without it any key is accepted, as moto does.
    ``buckets`` (name -> region) are created on start. ``middleware`` wraps the WSGI application.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        buckets: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        middleware: Callable[[WsgiApp], WsgiApp] | None = None,
    ) -> None:
        self._port = port
        self._buckets = dict(buckets or {})
        self._secrets = secrets
        self._middleware = middleware  # wraps the whole application: a benchmark's request counter
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._admin_clients: dict[str, Any] = {}

    @classmethod
    def for_config(cls, storage: StorageConfig, *, secrets: Mapping[str, str] | None = None) -> EmbeddedS3:
        """The embedded S3 a config asks for: its port, and every registry bucket in its region."""
        return cls(port=storage.embedded_port, buckets={name: b.region for name, b in storage.buckets.items()}, secrets=secrets)

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise StorageError("embedded S3 is not running")
        return f"http://{HOST}:{self._server.effective_port}"

    def start(self) -> str:
        """Bind (failing here if the port is taken), serve in a daemon thread, create the buckets."""
        if self._server is not None:
            return self.endpoint_url
        require_extra("demo", key="storage.embedded", purpose="the embedded S3")
        # Imported here, not at the top: the base install (production) has neither package.
        from waitress.server import create_server

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, self._port))
        except OSError as exc:
            listener.close()
            raise StorageError(f"embedded S3 cannot listen on {HOST}:{self._port}: {exc.strerror}") from None
        app: WsgiApp = PresignedGetGate(S3First(), secrets=self._secrets)
        if self._middleware is not None:
            app = self._middleware(app)
        server = create_server(app, sockets=[listener], threads=THREADS, ident="imaging-sync embedded S3")
        # "Task queue depth is N": every thread was busy for a moment, nothing lost; noise for a local store.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        self._server = server
        self._thread = threading.Thread(target=server.run, name="embedded-s3", daemon=True)
        self._thread.start()
        try:
            for name, region in self._buckets.items():
                self.create_bucket(name, region)
        except BaseException:
            self.stop()
            raise
        log.info("embedded S3 listening", extra={"endpoint": self.endpoint_url, "buckets": len(self._buckets)})
        return self.endpoint_url

    def stop(self) -> None:
        """Stop serving: close the listening socket and every connection, end the loop and its request threads.
        Safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self._admin_clients.clear()
        if server is not None:
            # In the loop's own thread (wasyncore is not thread-safe), woken by the trigger; with its map empty the loop returns.
            server.trigger.pull_trigger(lambda: wasyncore_close_all(server))
        if thread is not None:
            thread.join(timeout=10)
        if server is not None:
            server.task_dispatcher.shutdown()

    def create_bucket(self, name: str, region: str = "us-east-1") -> None:
        """Create ``name`` in ``region`` (S3 wants a LocationConstraint outside us-east-1); idempotent."""
        client = self.admin_client(region)
        kwargs: dict[str, Any] = {"Bucket": name}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            client.create_bucket(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise StorageError(f"embedded S3: cannot create bucket {name!r} in {region}") from exc

    def admin_client(self, region: str = "us-east-1") -> Any:
        """A boto3 client for setting up the embedded store (buckets, fixture objects); not for the service."""
        if region in self._admin_clients:
            return self._admin_clients[region]
        session = boto3.session.Session(botocore_session=new_botocore_session())
        client = self._admin_clients[region] = session.client(
            "s3",
            region_name=region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=_ADMIN_KEY,
            aws_secret_access_key=_ADMIN_KEY,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        return client

    def storage_config(self, base: StorageConfig) -> StorageConfig:
        """``base`` with every bucket pointed at this server (path-style: the host is an IP address)."""
        endpoint = self.endpoint_url
        buckets = {
            name: msgspec.structs.replace(cfg, endpoint_url=endpoint, addressing_style="path")
            for name, cfg in base.buckets.items()
        }
        return msgspec.structs.replace(base, buckets=buckets)

    def __enter__(self) -> EmbeddedS3:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
