"""A small HTTP/1.1 client for GETs whose answer is read whole: a frame, a header, a bulk data value.

Why not botocore's urllib3 transport, as :mod:`storage.fetch` uses for whole
objects: a DICOMweb viewer scrolling a series asks for one frame per request,
so a frame's cost is dominated by what each GET costs, not by its bytes.
Measured on 64 KiB ranged GETs from the embedded S3 (``bench/s3_fetch.py``):
urllib3 through botocore's ``URLLib3Session`` took 0.68-0.82 ms of the
fetching process's CPU per GET, this client 0.31-0.38 ms. The difference is
http.client's header parsing (the ``email`` package), urllib3's response
object and botocore's request wrappers; the parser here is httptools
(llhttp, the one uvicorn serves our own API with, so no new dependency).

What it does, and no more:

- one pool of keep-alive connections per origin (scheme, host, port), shared
  by every thread, at most ``max_idle`` idle ones kept;
- TLS with the CA bundle the bucket's botocore client trusts, the server's
  name checked;
- connect and read timeouts;
- a connection taken from the idle ones that the server has closed meanwhile
  (no byte of an answer came back) is replaced once: a GET may be sent again;
- Content-Length and chunked bodies (httptools), at most ``max_body`` bytes:
  a larger answer is refused, never buffered.

No proxies (neither does ``storage.fetch``'s transport), no redirects (S3
answers a wrong region with an error, not a redirect), no compression.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools
from botocore.httpsession import get_cert_path

RECEIVE_BYTES = 256 * 1024


class TransportError(Exception):
    """No whole answer: the connection could not be made, failed, timed out, or the answer broke the rules."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole HTTP answer: status, headers (names in lower case; a repeated one keeps its last value), body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Stale(Exception):
    """A reused connection answered nothing: the server closed it while it was idle."""


@dataclass(slots=True)
class _Parsed:
    """httptools' callbacks: they fill this in as bytes are fed."""

    max_body: int
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    complete: bool = False
    keep_alive: bool = False
    parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            raise TransportError(f"the answer is larger than the {self.max_body} bytes asked for")
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        # Asked here: once feed_data returns, llhttp has reset for the next message and says False.
        self.keep_alive = self.parser is not None and self.parser.should_keep_alive() and not self.parser.should_upgrade()


class Http1Pool:
    """Keep-alive connections to one origin (``http://host:port`` or ``https://host``); thread-safe."""

    def __init__(
        self,
        origin: str,
        *,
        ca_bundle: str | bool = True,
        connect_timeout: float,
        read_timeout: float,
        max_idle: int,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._host_header = parts.netloc.encode("idna")
        self._tls: ssl.SSLContext | None = None
        if parts.scheme == "https":
            # As botocore's URLLib3Session: the given bundle, True for its default one (certifi's), False for none.
            self._tls = ssl.create_default_context(cafile=get_cert_path(ca_bundle)) if ca_bundle is not False else _unverified()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_idle = max_idle
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def get(self, target: str, headers: Mapping[str, str], *, max_body: int) -> Answer:
        """GET ``target`` (a path, with its query if any) with ``headers`` (the Host header is added); TransportError
        when no whole answer came back. An error status is an answer like any other."""
        request = self._request(target, headers)
        reused = self._take()
        if reused is not None:
            try:
                return self._exchange(reused, request, max_body, reused=True)
            except _Stale:
                pass  # closed by the server while idle: once more, on a new connection
        return self._exchange(self._connect(), request, max_body, reused=False)

    def close(self) -> None:
        """Close the idle connections (those in use are closed when their answer is read)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def _request(self, target: str, headers: Mapping[str, str]) -> bytes:
        lines = [b"GET ", target.encode("ascii"), b" HTTP/1.1\r\nHost: ", self._host_header, b"\r\n"]
        for name, value in headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} holds a line break")
            lines += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        lines.append(b"\r\n")
        return b"".join(lines)

    def _take(self) -> socket.socket | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _give_back(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(sock)
                return
        sock.close()

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self._host, self._port), timeout=self._connect_timeout)
        except OSError as exc:
            raise TransportError(f"cannot connect ({type(exc).__name__})") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self._read_timeout)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self._host)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise TransportError(f"TLS handshake failed ({type(exc).__name__})") from exc
        return sock

    def _exchange(self, sock: socket.socket, request: bytes, max_body: int, *, reused: bool) -> Answer:
        """Send, read the whole answer, give the connection back if it may be used again; closed on any failure."""
        parsed = _Parsed(max_body)
        parser = parsed.parser = httptools.HttpResponseParser(parsed)
        received = 0
        try:
            sock.sendall(request)
            while not parsed.complete:
                data = sock.recv(RECEIVE_BYTES)
                if not data:
                    if received == 0 and reused:
                        raise _Stale()
                    raise TransportError("the connection closed before the whole answer" if received else "the connection closed without an answer")
                received += len(data)
                parser.feed_data(data)
        except _Stale:
            sock.close()
            raise
        except (ConnectionResetError, BrokenPipeError) as exc:
            sock.close()
            if received == 0 and reused:
                raise _Stale() from exc
            raise TransportError(f"connection lost ({type(exc).__name__})") from exc
        except TimeoutError as exc:
            sock.close()
            raise TransportError("timed out waiting for the answer") from exc
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise TransportError(f"connection failed ({type(exc).__name__})") from exc
        except httptools.HttpParserError as exc:
            sock.close()
            if isinstance(exc.__context__, TransportError):  # raised by a callback (the body too large): that is the reason
                raise exc.__context__ from None
            raise TransportError(f"the answer is not valid HTTP ({type(exc).__name__})") from exc
        answer = Answer(parser.get_status_code(), parsed.headers, b"".join(parsed.chunks))
        if parsed.keep_alive:
            self._give_back(sock)
        else:
            sock.close()
        return answer


def _unverified() -> ssl.SSLContext:
    """``verify = false`` in botocore's terms: TLS without checking the certificate (a test endpoint's choice, never ours)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


__all__ = ["Answer", "Http1Pool", "TransportError"]
