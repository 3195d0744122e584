"""The REST API as a service of the single-process mode (``imaging-sync serve`` with no subcommand).

It serves an app the process assembly built (``app.assembly.all_in_one``) with
uvicorn in a thread of this process, on ``api.host``/``api.port``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn
from litestar import Litestar

from imaging_sync.config import ApiConfig

START_TIMEOUT_SECONDS = 15.0


def server_options(config: ApiConfig) -> dict[str, Any]:
    """uvicorn's options that are our decisions, the same for ``serve api``'s workers and for the single process."""
    return {
        # Client addresses are decided by api.trusted_proxies alone, not by uvicorn's own X-Forwarded-For handling.
        "proxy_headers": False,
        "server_header": False,
        # The audit log records every request; an access log would put patient ids and names (query strings) in plain logs.
        "access_log": False,
        "log_config": None,  # logging is configured by the process assembly
        "timeout_keep_alive": config.keep_alive_seconds,
    }


class ApiService:
    name = "api"

    def __init__(self, app: Litestar, config: ApiConfig) -> None:
        self.app = app
        self.config = config
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(self.app, host=self.config.host, port=self.config.port, **server_options(self.config))
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, name="api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the REST API did not start on {self.config.host}:{self.config.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def describe(self) -> str:
        return f"REST API on http://{self.config.host}:{self.port}/api/v1 (docs /api/v1/docs)"

    @property
    def port(self) -> int:
        """The port actually listened on (``api.port = 0`` picks a free one)."""
        for server in getattr(self._server, "servers", None) or []:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port
