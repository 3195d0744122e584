"""A keep-alive HTTP/1.1 server on 127.0.0.1 for the storage tests: it counts the connections it opens and closes.

The tests of ``storage.http1`` and ``storage.fetch`` assert how the client
uses connections (one kept for many GETs, a fresh one after a close); both
fakes build on this. Errors of connections cut on purpose and the request
log stay quiet.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[CountingHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.connections = 0  # opened
        self.closed = 0  # closed by this side, after the handler returned
        self._closing = threading.Condition()

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self._closing:
            self.closed += 1
            self._closing.notify_all()

    def wait_closed(self, count: int, timeout: float = 5.0) -> None:
        """Until this server has closed ``count`` connections (its FIN sent); AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._closing:
            while self.closed < count:
                left = deadline - time.monotonic()
                assert left > 0, f"the server closed {self.closed} of {count} connections in {timeout} s"
                self._closing.wait(left)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: the tests cut connections and refuse handshakes on purpose."""


class CountingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingServer

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no request log on the test's output."""
