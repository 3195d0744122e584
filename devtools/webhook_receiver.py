"""A local HTTP receiver for webhooks (outbox events, alerts): records what arrives.

Runs a ThreadingHTTPServer on 127.0.0.1 in a background thread; can be told
to fail the next N requests. Used by tests and the outbox benchmark.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookReceiver:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []  # {"headers", "body", "json"}
        self._lock = threading.Lock()
        self._fail_next = 0
        self._fail_status = 503
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver._record(dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/hook"  # the address it was bound to, its port chosen at bind

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._fail_next, self._fail_status = count, status

    def _record(self, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            if self._fail_next > 0:
                self._fail_next -= 1
                return self._fail_status
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            self.requests.append({"headers": headers, "body": body, "json": parsed})
            return 204

    def events(self) -> list[dict[str, Any]]:
        """Every outbox event received, in arrival order."""
        with self._lock:
            return [event for r in self.requests if r["json"] for event in r["json"].get("events", [])]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Wait until ``predicate(self)`` holds, checking every 10 ms, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.01)
        return bool(predicate(self))

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
