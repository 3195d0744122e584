"""``imaging-sync serve api``: the REST API under uvicorn.

Registered through the entry-point group ``imaging_sync.serve`` (the core
never imports ``api``). Each worker process builds its own core from the same
configuration through the app factory ``api.app:app_from_environment``, so
``--workers N`` runs N independent processes behind one socket.
"""

from __future__ import annotations

import os

import click

from imaging_sync.bootstrap import bootstrap
from imaging_sync.config import CONFIG_ENV, load_settings

APP_FACTORY = "api.app:app_from_environment"


@click.command("api")
@click.option("--host", help="Address to listen on (default: api.host).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: api.port).")
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes (default: api.workers).")
@click.pass_context
def serve_api(ctx: click.Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the REST API (/api/v1, docs at /api/v1/docs, probes at /health and /ready)."""
    import uvicorn

    config_path = getattr(ctx.obj, "config_path", None)
    if config_path:
        os.environ[CONFIG_ENV] = config_path  # the workers read the same file
    settings = load_settings(config_path)  # a bad config fails here, naming the key (exit 2)
    core = bootstrap(settings)
    try:
        core.require_current_schema()  # exit 4 with the fix, rather than workers that are never ready
    finally:
        core.close()
    api = settings.api
    host, port, workers = host or api.host, api.port if port is None else port, workers or api.workers
    click.echo(f"imaging-sync API on http://{host}:{port}/api/v1 ({workers} worker{'s' if workers > 1 else ''}; docs at /api/v1/docs)", err=True)
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Client addresses are decided by api.trusted_proxies alone, not by uvicorn's own X-Forwarded-For handling.
        proxy_headers=False,
        server_header=False,
        # The audit log records every request; an access log would put patient ids and names (query strings) in plain logs.
        access_log=False,
        log_config=None,  # logging is configured by the core (bootstrap), in each worker
    )
