"""Partner simulator: serves the Partner Export API v1 (``reference-v1``) over real HTTP.

Tests start it in a background thread and sync against it exactly as against a
partner; benchmarks point it at 100,000 generated studies; the demo runs it in
the foreground (``python -m devtools.simulator``). The wire format
is the Partner Export API v1 contract (``partner-api.md``): listing ordered by
``(updated_at, id)``, inclusive ``updated_since``, opaque expiring page
tokens, 401/403/410/429/5xx with JSON bodies.

Three pieces, each usable on its own:

* :class:`PartnerDataset` (in :mod:`devtools.sim_dataset`) -
  generated base studies (never materialised) plus an overlay of changes made
  by tests, and the DICOM-vocabulary truth a correct sync must reach
  (:meth:`PartnerDataset.expected_state`).
* :class:`Faults` (in :mod:`devtools.sim_faults`) - failures to
  inject into the next requests (5xx, 429, delays, dropped connections,
  expired tokens, a request parked on a gate).
* :class:`PartnerSimulator` (here) - the HTTP server that ties them together.

Names other code imports from this module (``PartnerDataset``, ``Faults``,
``PageGate``, ``RecordedRequest``, ``parse_rfc3339``, ...) are re-exported here.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec

from devtools.datagen import DatasetSpec
from devtools.sim_dataset import PartnerDataset, SortKey, parse_rfc3339
from devtools.sim_faults import (
    Endpoint,
    Faults,
    PageGate,
    RecordedRequest,
    RequestLog,
    _Shot,
)

__all__ = [
    "Endpoint",
    "Faults",
    "PageGate",
    "PartnerDataset",
    "PartnerSimulator",
    "RecordedRequest",
    "RequestLog",
    "SimulatorConfig",
    "main",
    "parse_rfc3339",
]

logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100
_JSON_HEADERS = (("Content-Type", "application/json"),)
_SHUTDOWN_POLL_SECONDS = 0.02  # how soon stop() returns; serve_forever polls this often


# --- the HTTP API (no sockets here: the handler below is a thin adapter) ---------------


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated partner authenticates (contract: Transport and authentication)."""

    api_key: str = "sim-key"
    auth_header: str = "X-API-Key"
    auth_scheme: str | None = None  # e.g. "Bearer": header value is "Bearer <key>"
    revoked_keys: frozenset[str] = frozenset()

    def headers(self, key: str | None = None) -> dict[str, str]:
        """Request headers carrying ``key`` (default: the valid one) the way this partner wants."""
        value = self.api_key if key is None else key
        return {self.auth_header: f"{self.auth_scheme} {value}" if self.auth_scheme else value}


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = _JSON_HEADERS
    drop: bool = False


class _HttpError(Exception):
    """An error answer: becomes ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _json(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    return _Response(status, msgspec.json.encode(payload), _JSON_HEADERS + headers)


_TokenFields = tuple[int, int | None, int, str, int]  # epoch, since_us, after-key


class _Headers(Protocol):
    """What the API reads of a request's headers: one by name. http.server hands over an
    ``email.message.Message``, whose ``get`` ignores case as HTTP header names do (a dict's would not)."""

    def get(self, name: str, /) -> str | None: ...


def _encode_token(epoch: int, since_us: int | None, after: SortKey) -> str:
    raw = msgspec.json.encode((epoch, since_us, *after))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_token(token: str) -> tuple[int, int | None, SortKey]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        epoch, since_us, after_us, after_id, after_seq = msgspec.json.decode(raw, type=_TokenFields)
    except (binascii.Error, ValueError, msgspec.MsgspecError):
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, 'Argument "page_token" is not a valid page token.'
        ) from None
    return epoch, since_us, (after_us, after_id, after_seq)


def _page_size(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE_SIZE
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_PAGE_SIZE:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST,
            f'Argument "page_size" must be an integer between 1 and {MAX_PAGE_SIZE}.',
        )
    return int(value)


def _updated_since(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, 'Argument "updated_since" must be an RFC 3339 timestamp.'
        ) from None


_STUDIES_PATH = "/v1/studies"
_HEALTH_PATH = "/v1/health"


def _route(path: str) -> tuple[Endpoint, str]:
    """``(endpoint, study id)`` of a request path; 404 for anything else."""
    if path == _STUDIES_PATH:
        return "listing", ""
    if path == _HEALTH_PATH:
        return "health", ""
    prefix = _STUDIES_PATH + "/"
    tail = path[len(prefix):] if path.startswith(prefix) else ""
    if tail and "/" not in tail:
        return "study", unquote(tail)
    raise _HttpError(HTTPStatus.NOT_FOUND, f"no such resource: {path}")


class _PartnerApi:
    """Request -> response for the Partner Export API v1, with auth and faults.

    Order of checks: route, authentication, then (listing only) the page
    gate, then a queued fault, then the real answer.
    """

    def __init__(
        self,
        dataset: PartnerDataset,
        config: SimulatorConfig,
        faults: Faults,
        requests: RequestLog,
        stopping: threading.Event,
    ):
        self.dataset = dataset
        self.config = config
        self.faults = faults
        self.requests = requests
        self._stopping = stopping

    def handle(self, method: str, target: str, headers: _Headers) -> _Response:
        """Answer one request and record it; never raises."""
        arrived = time.monotonic()
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            response = self._answer(method, parts.path, query, headers)
        except _HttpError as error:
            response = _json(error.status, {"error": error.message}, error.headers)
        except Exception:
            logger.exception("simulator failed on %s %s", method, parts.path)
            failure = {"error": "simulator bug; see its log"}
            response = _json(HTTPStatus.INTERNAL_SERVER_ERROR, failure)
        status = None if response.drop else response.status
        self.requests.append(RecordedRequest(method, parts.path, query, status, arrived))
        return response

    def _answer(
        self, method: str, path: str, query: dict[str, str], headers: _Headers
    ) -> _Response:
        endpoint, study_id = _route(path)
        if method != "GET":
            raise _HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "the Partner Export API is read-only",
                (("Allow", "GET"),),
            )
        self._authenticate(headers)
        if endpoint == "listing":
            gate = self.faults._count_listing()
            if gate is not None:
                gate._park()
        shot = self.faults._take(endpoint)
        fault = self._fire(shot) if shot is not None else None
        if fault is not None:
            return fault
        if endpoint == "listing":
            return self._list(query)
        if endpoint == "study":
            return self._one(study_id)
        return _json(HTTPStatus.OK, {"status": "ok"})

    def _authenticate(self, headers: _Headers) -> None:
        """401 for a missing or wrong key, 403 for a revoked one (contract: authentication)."""
        config = self.config
        value = headers.get(config.auth_header)
        if value is None:
            raise self._unauthorized(f"missing {config.auth_header} header")
        key = value
        if config.auth_scheme:
            scheme, _, key = value.partition(" ")
            if scheme.lower() != config.auth_scheme.lower():  # schemes are case-insensitive
                raise self._unauthorized(f"expected {config.auth_scheme} credentials")
        if key in config.revoked_keys:
            raise _HttpError(HTTPStatus.FORBIDDEN, "API key revoked")
        if not hmac.compare_digest(key.encode(), config.api_key.encode()):
            raise self._unauthorized("invalid API key")

    def _unauthorized(self, message: str) -> _HttpError:
        scheme = self.config.auth_scheme
        challenge = (("WWW-Authenticate", f'{scheme} realm="partner"'),) if scheme else ()
        return _HttpError(HTTPStatus.UNAUTHORIZED, message, challenge)

    def _fire(self, shot: _Shot) -> _Response | None:
        """Apply one queued fault; ``None`` means "now answer normally" (a delay)."""
        if shot.kind == "delay":
            self._stopping.wait(shot.seconds)
            return None
        if shot.kind == "drop":
            return _Response(0, drop=True)
        if shot.kind == "rate_limit":
            headers = () if shot.retry_after is None else (("Retry-After", shot.retry_after),)
            return _json(HTTPStatus.TOO_MANY_REQUESTS, {"error": "rate limited"}, headers)
        return _json(shot.status, {"error": "injected server error"})

    def _list(self, query: dict[str, str]) -> _Response:
        """``GET /v1/studies``: one page, ordered by ``(updated_at, id)``."""
        page_size = _page_size(query.get("page_size"))
        since_us = _updated_since(query.get("updated_since"))
        epoch = self.faults.token_epoch
        after = None
        if "page_token" in query:
            token_epoch, token_since, after = _decode_token(query["page_token"])
            if token_epoch != epoch:
                raise _HttpError(
                    HTTPStatus.GONE, "page_token expired; restart the listing from your bookmark"
                )
            if "updated_since" in query and since_us != token_since:
                raise _HttpError(
                    HTTPStatus.BAD_REQUEST,
                    "page_token belongs to a listing with another updated_since",
                )
            since_us = token_since
        items, last = self.dataset.page(since_us, after, page_size)
        next_token = None if last is None else _encode_token(epoch, since_us, last)
        return _json(HTTPStatus.OK, {"items": items, "next_page_token": next_token})

    def _one(self, study_id: str) -> _Response:
        """``GET /v1/studies/{id}``: the current item, deleted form included; 404 if never had."""
        item = self.dataset.item(study_id)
        if item is None:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no study {study_id!r}")
        return _json(HTTPStatus.OK, item)


# --- the HTTP server -------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Thin adapter from http.server to :class:`_PartnerApi`."""

    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
    # Headers and body go out in two writes; with Nagle on, a keep-alive
    # client's delayed ACK would add ~40 ms to every response.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self.close_connection = True  # the body is not read, so the stream cannot be reused
        self._dispatch()

    do_PUT = do_PATCH = do_DELETE = do_POST

    def _dispatch(self) -> None:
        response = self.server.api.handle(self.command, self.path, self.headers)
        if response.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the per-request stderr line; ``sim.requests`` records requests instead."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: _PartnerApi):
        self.api = api
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on a
        # machine without DNS; the simulator only needs the bound port.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port  # an AF_INET address: the host is a str already

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut idle keep-alive connections, so their handler threads end with the server."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away (timeout, SIGKILL): not the simulator's problem
        super().handle_error(request, client_address)


class PartnerSimulator:
    """A partner serving the Partner Export API v1 over real HTTP on loopback.

    Use as a context manager (or ``start``/``stop``). ``dataset``, ``faults``
    and ``requests`` may be used from the test thread while clients talk to
    ``base_url``.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        config: SimulatorConfig = SimulatorConfig(),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.dataset = PartnerDataset(spec)
        self.config = config
        self.faults = Faults()
        self.requests = RequestLog()
        self._address = (host, port)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return f"http://{self._server.server_name}:{self._server.server_port}"  # the bound address (server_bind)

    @property
    def headers(self) -> dict[str, str]:
        """Headers carrying the valid key, for clients in tests."""
        return self.config.headers()

    def start(self) -> PartnerSimulator:
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        api = _PartnerApi(self.dataset, self.config, self.faults, self.requests, self._stopping)
        self._stopping.clear()
        self._server = _Server(self._address, api)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_SECONDS},
            name=f"partner-sim-{self.dataset.spec.partner}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: release parked and delayed requests, close connections."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        self.faults._release_gates()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> PartnerSimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- command line ----------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.simulator",
        description="Serve the Partner Export API v1 from generated studies.",
    )
    parser.add_argument("--partner", default="demo", help="partner name, the prefix of every id")
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--series", type=int, default=2, help="series per study")
    parser.add_argument("--instances", type=int, default=5, help="instances per series")
    parser.add_argument("--subjects", type=int, default=None, help="default: studies // 2 + 1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bucket", default="", help='default bucket; default: "{partner}-dicom"')
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--api-key-env", default="SIM_API_KEY", help="environment variable holding the key"
    )
    parser.add_argument("--auth-header", default="X-API-Key")
    parser.add_argument("--auth-scheme", default=None, help='e.g. "Bearer"')
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the simulator in the foreground until SIGTERM or SIGINT.

    Prints one line, ``listening on <base_url>``, once requests can be served.
    The key comes from the environment (never the command line, where other
    users could read it); unset means ``sim-key``.
    """
    parser, args = _parse_args(argv)
    try:
        spec = DatasetSpec(
            partner=args.partner,
            studies=args.studies,
            series_per_study=args.series,
            instances_per_series=args.instances,
            subjects=args.subjects,
            seed=args.seed,
            bucket=args.bucket,
        )
    except ValueError as error:
        parser.error(str(error))
    config = SimulatorConfig(
        api_key=os.environ.get(args.api_key_env) or "sim-key",
        auth_header=args.auth_header,
        auth_scheme=args.auth_scheme,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with PartnerSimulator(spec, config, host=args.host, port=args.port) as simulator:
        print(f"listening on {simulator.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
