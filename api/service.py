"""The REST API as a service of the single-process mode (``imaging-sync serve`` with no subcommand).

Registered under the entry-point group ``imaging_sync.services``; it serves
the app over the process's own Core from a thread, on ``api.host``/``api.port``.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from imaging_sync.bootstrap import Core

if TYPE_CHECKING:
    import uvicorn

START_TIMEOUT_SECONDS = 15.0


class ApiService:
    name = "api"
    order = 50

    def __init__(self, core: Core) -> None:
        self.core = core
        self._server: object | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import uvicorn

        from api.app import create_app

        api = self.core.settings.api
        config = uvicorn.Config(
            create_app(self.core), host=api.host, port=api.port, proxy_headers=False, server_header=False, access_log=False, log_config=None
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, name="api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the REST API did not start on {api.host}:{api.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def describe(self) -> str:
        host, port = self.core.settings.api.host, self.port
        return f"REST API on http://{host}:{port}/api/v1 (docs /api/v1/docs)"

    @property
    def port(self) -> int:
        """The port actually listened on (``api.port = 0`` picks a free one)."""
        for server in getattr(self._server, "servers", None) or []:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.core.settings.api.port


def api_service(core: Core) -> ApiService:
    """Entry point ``imaging_sync.services: api``."""
    return ApiService(core)
