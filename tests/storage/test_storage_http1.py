"""storage.http1: the small-answer HTTP/1.1 client, against real servers on 127.0.0.1 (plain and TLS)."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from counting_http import CountingHandler, CountingServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from storage.http1 import Http1Pool, TransportError

Answer = Callable[["Handler"], None]


class Server(CountingServer):
    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(Handler)
        self.answer = answer
        self.tls = tls
        self.paths: list[str] = []

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, address


class Handler(CountingHandler):
    server: Server

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.server.answer(self)


def plain(body: bytes) -> Answer:
    def answer(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("ETag", '"e"')
        h.end_headers()
        h.wfile.write(body)

    return answer


def hang_up(h: Handler, first: bytes) -> None:
    """Send ``first`` (maybe nothing), then end the connection."""
    h.wfile.write(first)
    h.wfile.flush()
    h.connection.shutdown(socket.SHUT_RDWR)
    h.close_connection = True


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(answer: Answer, tls: ssl.SSLContext | None = None) -> Server:
        server = Server(answer, tls)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def origin(server: Server, scheme: str = "http", host: str = "127.0.0.1") -> str:
    return f"{scheme}://{host}:{server.server_address[1]}"


def pool_for(url: str, **kw: Any) -> Http1Pool:
    return Http1Pool(url, connect_timeout=2, read_timeout=kw.pop("read_timeout", 2), max_idle=4, **kw)


def test_answers_come_whole_on_one_kept_connection(serve: Callable[..., Server]) -> None:
    server = serve(plain(b"x" * 70_000))
    pool = pool_for(origin(server))
    for n in range(3):
        answer = pool.get(f"/b/k{n}?a=1", {"range": "bytes=0-9"}, max_body=100_000)
        assert (answer.status, answer.headers["etag"], answer.body) == (200, '"e"', b"x" * 70_000)
    assert server.connections == 1 and server.paths == ["/b/k0?a=1", "/b/k1?a=1", "/b/k2?a=1"]
    pool.close()  # the idle connection: the next GET opens another
    pool.get("/b/k3", {}, max_body=100_000)
    assert server.connections == 2


def test_a_chunked_answer_is_read_whole(serve: Callable[..., Server]) -> None:
    def chunked(h: Handler) -> None:
        h.send_response(206)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for piece in (b"abc", b"defgh"):
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    server = serve(chunked)
    pool = pool_for(origin(server))
    assert pool.get("/c", {}, max_body=100).body == b"abcdefgh"
    assert pool.get("/c", {}, max_body=100).body == b"abcdefgh"
    assert server.connections == 1


def test_connection_close_is_honoured(serve: Callable[..., Server]) -> None:
    def closing(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "2")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(b"ok")

    server = serve(closing)
    pool = pool_for(origin(server))
    assert [pool.get("/", {}, max_body=10).body for _ in range(2)] == [b"ok", b"ok"]
    assert server.connections == 2


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (lambda h: hang_up(h, b""), "closed without an answer"),
        (lambda h: hang_up(h, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), "closed before the whole answer"),
        (lambda h: hang_up(h, b"SMTP ready\r\n\r\n"), "not valid HTTP"),
        (lambda h: time.sleep(1.5), "timed out"),
        (plain(b"y" * 5000), "larger than the 1000 bytes"),
    ],
    ids=["no answer", "cut", "not http", "too slow", "too large"],
)
def test_no_whole_answer_is_a_transport_error_saying_why(serve: Callable[..., Server], answer: Answer, reason: str) -> None:
    server = serve(answer)
    with pytest.raises(TransportError, match=reason):
        pool_for(origin(server), read_timeout=0.5).get("/", {}, max_body=1000)


def test_nothing_listening_is_a_transport_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransportError, match="cannot connect"):
        pool_for(f"http://127.0.0.1:{port}").get("/", {}, max_body=10)


def test_a_header_with_a_line_break_is_never_sent(serve: Callable[..., Server]) -> None:
    server = serve(plain(b"ok"))
    with pytest.raises(ValueError, match="line break"):
        pool_for(origin(server)).get("/", {"x-amz-meta": "a\r\nHost: evil"}, max_body=10)
    assert server.paths == []


# -- TLS: production S3 is HTTPS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """A test CA and a server certificate it signed for the name localhost only: (the CA bundle file, the server's context)."""
    folder = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imaging-sync test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])).issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    bundle = folder / "ca.pem"
    bundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return bundle, context


def test_tls_with_the_buckets_ca_bundle_verifies_and_keeps_the_connection(serve: Callable[..., Server], certificates: tuple[Path, ssl.SSLContext]) -> None:
    bundle, context = certificates
    server = serve(plain(b"secure"), tls=context)
    pool = pool_for(origin(server, "https", "localhost"), ca_bundle=str(bundle))
    assert [pool.get("/", {}, max_body=100).body for _ in range(3)] == [b"secure"] * 3
    assert server.connections == 1


@pytest.mark.parametrize(
    ("host", "bundle"),
    [("localhost", "default"), ("127.0.0.1", "ours")],
    ids=["a certificate the default bundle does not trust", "a name the certificate does not hold"],
)
def test_tls_refuses_a_certificate_it_cannot_trust(serve: Callable[..., Server], certificates: tuple[Path, ssl.SSLContext], host: str, bundle: str) -> None:
    ours, context = certificates
    server = serve(plain(b"secret"), tls=context)
    pool = pool_for(origin(server, "https", host), ca_bundle=True if bundle == "default" else str(ours))
    with pytest.raises(TransportError, match="TLS handshake failed"):
        pool.get("/", {}, max_body=100)
    assert server.paths == [], "no request went out over an unverified connection"
