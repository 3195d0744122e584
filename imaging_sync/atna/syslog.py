"""Syslog for audit messages: the RFC 5424 message, and its transports (UDP, TCP, TLS).

The message (RFC 5424 section 6; IHE ITI-20): ``<PRI>1 TIMESTAMP HOSTNAME
APP-NAME PROCID MSGID - BOM XML``, facility 10 (security/authorization),
severity notice (5) for a success and warning (4) for a failure, MSGID
``IHE+RFC-3881`` as the IHE ATNA profile names it, no structured data, the
XML as UTF-8 after a byte-order mark (RFC 5424 6.4).

Transports, each delivering a batch of messages in one call (:meth:`Transport.deliver`):

- :class:`UdpTransport` (RFC 5426): one datagram a message. Nothing tells us
  whether it arrived: lossy by nature, for receivers that offer nothing else.
- :class:`TcpTransport` (RFC 6587 3.4.1, octet counting: ``LEN SP MSG``) and
  :class:`TlsTransport` (RFC 5425, the same framing over TLS, the repository's
  certificate verified, our client certificate when configured). A batch is
  *accepted* when, after the last message, we close our half of the
  connection and the receiver closes its own: it has then read every byte
  we sent. Only then does the relay move on; anything less (refused, reset,
  a timeout before the receiver's close) raises :class:`DeliveryError`, and
  the relay sends the batch again later.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Protocol

from imaging_sync.config import AtnaConfig
from imaging_sync.errors import ConfigError

log = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10  # RFC 5424 table 1: security/authorization messages
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
MSGID = "IHE+RFC-3881"  # IHE ITI TF-2 3.20.7.3 (Record Audit Event)
BOM = b"\xef\xbb\xbf"
MAX_UDP_PAYLOAD = 65_507  # an IPv4 datagram's largest payload (RFC 5426 3.2)


class DeliveryError(Exception):
    """A batch was not accepted by the receiver: the relay keeps its position and tries again later."""


def _printable(value: str, limit: int) -> str:
    """A header field as RFC 5424 6.2 allows: printable US-ASCII, no spaces, at most ``limit`` characters; ``-`` when empty."""
    text = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return text or "-"


def format_message(xml: bytes, *, at: dt.datetime, hostname: str, app_name: str, procid: str = "-", failure: bool = False) -> bytes:
    """One RFC 5424 syslog message carrying an audit message's XML."""
    pri = FACILITY_AUTHPRIV * 8 + (SEVERITY_WARNING if failure else SEVERITY_NOTICE)
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    timestamp = at.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = f"<{pri}>1 {timestamp} {_printable(hostname, 255)} {_printable(app_name, 48)} {_printable(procid, 128)} {MSGID} -"
    return header.encode("ascii") + b" " + BOM + xml


def frame(message: bytes) -> bytes:
    """RFC 6587 3.4.1 octet counting (the framing RFC 5425 4.3 prescribes for TLS): ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


class Transport(Protocol):
    """Delivers a batch of syslog messages; raises :class:`DeliveryError` unless the receiver accepted all of them."""

    name: str

    def deliver(self, messages: Sequence[bytes]) -> None: ...


class UdpTransport:
    """RFC 5426: one datagram a message. Accepted means sent: UDP says nothing of arrival."""

    name = "udp"

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    def deliver(self, messages: Sequence[bytes]) -> None:
        if not messages:
            return
        try:
            family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(self.timeout)
                for message in messages:
                    if len(message) > MAX_UDP_PAYLOAD:  # cannot be sent whole; max_objects_per_message keeps messages far below
                        raise DeliveryError(f"a message of {len(message)} bytes does not fit in a UDP datagram")
                    sock.sendto(message, address)
        except OSError as exc:
            raise DeliveryError(f"udp {self.host}:{self.port}: {type(exc).__name__}: {exc.strerror or exc}") from None


class TcpTransport:
    """RFC 6587 octet-counted syslog over TCP; a batch is accepted when the receiver closes after reading it."""

    name = "tcp"

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    def _connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=self.timeout)

    def deliver(self, messages: Sequence[bytes]) -> None:
        if not messages:
            return
        try:
            with self._connect() as sock:
                sock.sendall(b"".join(frame(m) for m in messages))
                self._confirm(sock)
        except (OSError, ssl.SSLError) as exc:
            raise DeliveryError(f"{self.name} {self.host}:{self.port}: {type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}") from None

    def _confirm(self, sock: socket.socket) -> None:
        """Close our half and wait for the receiver to close its own: it has read everything before our end."""
        sock.shutdown(socket.SHUT_WR)
        _await_close(sock)


def _await_close(sock: socket.socket) -> None:
    while True:
        data = sock.recv(4096)  # syslog receivers send nothing; the timeout bounds the wait
        if not data:
            return


class TlsTransport(TcpTransport):
    """RFC 5425: the same framing over TLS 1.2 or newer, the repository's certificate checked against ``server_name``."""

    name = "tls"

    def __init__(self, host: str, port: int, context: ssl.SSLContext, *, server_name: str | None = None, timeout: float = 10.0) -> None:
        super().__init__(host, port, timeout=timeout)
        self.context = context
        self.server_name = server_name or host

    def _connect(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            return self.context.wrap_socket(raw, server_hostname=self.server_name)
        except BaseException:
            raw.close()
            raise

    def _confirm(self, sock: socket.socket) -> None:
        # close_notify first (RFC 5425 4.4), then the TCP half-close; the receiver's close is the acceptance.
        assert isinstance(sock, ssl.SSLSocket)
        try:
            raw = sock.unwrap()
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError):
            # The receiver answered our close_notify by closing (rsyslog does not send its own): all it read is in.
            return
        raw.shutdown(socket.SHUT_WR)
        _await_close(raw)


def tls_context(config: AtnaConfig) -> ssl.SSLContext:
    """The client context of RFC 5425 5: TLS 1.2 or newer, the server's certificate verified (``ca_file`` or the
    system's CAs) and its name checked, our certificate and key from ``cert_file``/``key_file`` when set."""
    try:
        context = ssl.create_default_context(cafile=config.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("audit.atna.ca_file", f"cannot read CA certificates from {config.ca_file}: {getattr(exc, 'strerror', None) or exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.cert_file and config.key_file:
        try:
            context.load_cert_chain(config.cert_file, config.key_file)
        except (OSError, ssl.SSLError) as exc:  # never the key's content: only which files and why
            raise ConfigError("audit.atna.cert_file", f"cannot load {config.cert_file} with key {config.key_file}: "
                                                      f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    return context


def transport_for(config: AtnaConfig) -> Transport:
    """The configured transport (``[audit.atna] transport``); reads the TLS files now, so a bad path fails at start."""
    port = config.effective_port
    if config.transport == "udp":
        return UdpTransport(config.host, port, timeout=config.timeout_seconds)
    if config.transport == "tcp":
        return TcpTransport(config.host, port, timeout=config.timeout_seconds)
    return TlsTransport(config.host, port, tls_context(config), server_name=config.server_name, timeout=config.timeout_seconds)


__all__ = ["DeliveryError", "TcpTransport", "TlsTransport", "Transport", "UdpTransport", "format_message", "frame", "tls_context", "transport_for"]
