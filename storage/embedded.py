"""An S3 endpoint on 127.0.0.1 for local use, the demo and tests: moto's server, behind S3's presigned-URL rules.

Turned on by ``[storage] embedded = true``; it listens on
``storage.embedded_port`` (0 = any free port) and the registry reaches it
like any S3-compatible store, through each bucket's ``endpoint_url``
(:meth:`EmbeddedS3.storage_config` rewrites them). Nothing else changes: the
same registry, presigner and reader run against it as against AWS.

It serves moto's own WSGI application — the one ``ThreadedMotoServer`` runs —
in werkzeug's threaded server, but not through ``ThreadedMotoServer`` itself,
because that class cannot wrap the application (needed for
:class:`~storage.presigned_gate.PresignedGetGate`: moto 5.2 ignores presigned
signatures, expiry and response overrides), hangs in ``start()`` when the
port is taken (werkzeug's ``make_server`` calls ``sys.exit`` in its thread),
and never closes its listening socket on ``stop()``.

moto keeps its data per process, in memory: two embedded servers in one
process see the same buckets, and everything is gone when the process ends.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3.session
import msgspec
from botocore.config import Config
from botocore.exceptions import ClientError

from imaging_sync.config import StorageConfig
from imaging_sync.errors import StorageError
from imaging_sync.extras import require_extra
from storage.presigned_gate import PresignedGetGate
from storage.registry import new_botocore_session

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler

HOST = "127.0.0.1"  # local use only: never listen on other interfaces
# moto accepts any credentials for its own API; these create the buckets.
_ADMIN_KEY = "embedded-admin"

log = logging.getLogger(__name__)


@functools.cache
def request_handler_class() -> type[WSGIRequestHandler]:
    """werkzeug's request handler without its access log on stderr (built on first use: werkzeug is the demo extra's)."""
    from werkzeug.serving import WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            return None

    return QuietHandler


class EmbeddedS3:
    """moto's S3 on 127.0.0.1; a context manager that starts it and shuts it down cleanly.

    ``secrets`` (access key id -> secret access key) makes presigned URLs
    signature-checked like on S3; without it any key is accepted, as moto does.
    ``buckets`` (name -> region) are created on start.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        buckets: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        self._port = port
        self._buckets = dict(buckets or {})
        self._secrets = secrets
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
        return f"http://{HOST}:{self._server.server_address[1]}"

    def start(self) -> str:
        """Bind (failing here if the port is taken), serve in a daemon thread, create the buckets."""
        if self._server is not None:
            return self.endpoint_url
        require_extra("demo", key="storage.embedded", purpose="the embedded S3")
        # Imported here, not at the top: the base install (production) has neither package.
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        app = PresignedGetGate(DomainDispatcherApplication(create_backend_app), secrets=self._secrets)
        # Bind here: werkzeug's make_server answers a taken port with sys.exit(1).
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, self._port))
            listener.listen(128)
            self._server = make_server(
                HOST, self._port, app, threaded=True, request_handler=request_handler_class(), fd=listener.fileno()
            )
        except OSError as exc:
            raise StorageError(f"embedded S3 cannot listen on {HOST}:{self._port}: {exc.strerror}") from None
        finally:
            listener.close()  # the server holds its own duplicate of the socket
        # A short poll interval so stop() returns promptly (shutdown waits for the next poll).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="embedded-s3", daemon=True
        )
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
        """Stop serving, wait for the thread, close the listening socket. Safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self._admin_clients.clear()
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=10)

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
