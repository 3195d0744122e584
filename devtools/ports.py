"""A free TCP port on 127.0.0.1 for a test server, chosen outside the kernel's ephemeral range.

A port from ``bind(0)`` is an ephemeral one. Between choosing it and the
server's own bind, the kernel may give the same number to an outgoing
connection as its local port (a C-STORE's, PostgreSQL's, a browser's), and
the server's bind fails with EADDRINUSE (seen in CI: the C-MOVE destination of
tests/dicom/test_retrieve.py). A port below the ephemeral range is never handed
out that way, so the only race left is another test choosing the same number
in the same instant, which the bind check below makes rare.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000  # below: well-known and registered services' habits


def _ephemeral_low() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing uses now (TCP, or UDP with ``kind=SOCK_DGRAM``), below the ephemeral range (an ephemeral one only if that range leaves no room)."""
    low = _ephemeral_low()
    if low - _LOWEST >= 1000:
        for _ in range(200):
            port = random.randrange(_LOWEST, low)
            with socket.socket(socket.AF_INET, kind) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


__all__ = ["free_port"]
