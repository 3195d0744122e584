"""The commands that run servers and workers: ``serve [api|dicom]``, ``worker``, ``beat``.

Each checks the config and the schema first (exit 2 / 4 like every command),
then runs the process :mod:`app.assembly` builds. Logs use the project's format
(``[logging] format = "json"`` gives JSON lines with the run id).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import msgspec

from app import assembly
from app.cli_support import CliContext, pass_ctx
from app.services import run_services
from imaging_sync.config import LoggingConfig, Settings
from imaging_sync.errors import ConfigError
from imaging_sync.heap import freeze_startup_objects
from imaging_sync.logs import configure_logging

LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)


@click.group(invoke_without_command=True)
@click.pass_context
def serve(click_ctx: click.Context) -> None:
    """Run a server (api, dicom); with no subcommand, the API, the DICOM node and the scheduler in one process."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx = click_ctx.find_object(CliContext)
    if ctx is None:  # as pass_ctx would: only the root command (cli) makes the context
        raise RuntimeError("serve runs under the imaging-sync command, which makes its CliContext")
    with assembly.open_process(ctx.settings, verbose=ctx.verbose) as process:
        services = assembly.all_in_one(process)
        click.echo(f"imaging-sync: starting {', '.join(s.name for s in services)} in one process")
        if process.embedded_s3:
            click.echo(f"  s3: embedded S3 on {process.embedded_s3} (buckets: {', '.join(sorted(process.settings.storage.buckets)) or 'none'})")
        freeze_startup_objects()
        run_services(services, echo=click.echo)


@serve.command("api")
@click.option("--host", help="Address to listen on (default: api.host).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: api.port).")
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes (default: api.workers).")
@pass_ctx
def serve_api(ctx: CliContext, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the REST API (/api/v1, docs at /api/v1/docs, probes at /health and /ready) with uvicorn.

    Each worker process builds its own parts from the same configuration
    (``app.assembly.api_app_from_environment``), so ``--workers N`` runs N
    independent processes behind one socket.
    """
    import uvicorn

    from api.service import server_options

    settings = ctx.settings  # a bad config fails here, naming the key (exit 2)
    with assembly.embedded_storage(settings) as (settings, _):
        core = assembly.open_core(settings, verbose=ctx.verbose)
        try:
            core.require_current_schema()  # exit 4 with the fix, rather than workers that are never ready
        finally:
            core.close()
        os.environ.update(assembly.api_worker_environment(settings, ctx.config_path))
        api = settings.api
        host, port, workers = host or api.host, api.port if port is None else port, workers or api.workers
        click.echo(f"imaging-sync API on http://{host}:{port}/api/v1 ({workers} worker{'s' if workers > 1 else ''}; docs at /api/v1/docs)", err=True)
        uvicorn.run(
            assembly.API_APP_FACTORY,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            **server_options(api),
        )


@serve.command("dicom")
@click.option("--port", type=int, default=None, help="Listen on this port instead of dicom.port.")
@click.option("--host", default=None, help="Listen on this address instead of dicom.host.")
@pass_ctx
def serve_dicom(ctx: CliContext, port: int | None, host: str | None) -> None:
    """DICOM Q/R SCP: C-ECHO, C-FIND, C-MOVE and C-GET (Patient and Study Root) over the index."""
    with assembly.open_process(ctx.settings, verbose=ctx.verbose) as process:
        config = process.settings.dicom
        if port is not None or host is not None:
            config = msgspec.structs.replace(config, port=config.port if port is None else port, host=host or config.host)
        server = assembly.dicom_server(process, config)
        click.echo(f"DICOM node {config.ae_title} on {config.host}:{config.port} (Ctrl-C to stop)", err=True)
        freeze_startup_objects()
        try:
            server.serve_forever()
        finally:
            server.stop()


# -- Celery ---------------------------------------------------------------------------------------


def _jobs_settings(ctx: CliContext, command: str) -> Settings:
    """The settings as every command reads them; refused when this deployment runs no broker."""
    settings = ctx.settings
    if settings.jobs.scheduler == "embedded" and (command == "beat" or not settings.broker_users()):
        raise ConfigError("jobs.scheduler", f'is "embedded": `imaging-sync serve` runs the schedules in-process, so `imaging-sync {command}` has nothing to do; '
                                            'set jobs.scheduler = "celery" to run Celery beat and workers')
    return settings


def _use_project_logging(settings: Settings, level: str) -> None:
    from celery.signals import setup_logging  # here: only worker and beat import Celery

    def configure(loglevel: Any = None, **_: Any) -> None:
        name = logging.getLevelName(loglevel) if isinstance(loglevel, int) else (loglevel or level)
        configure_logging(LoggingConfig(level=str(name).upper(), format=settings.logging.format))  # type: ignore[arg-type]

    setup_logging.connect(configure, weak=False)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", type=click.IntRange(1, 512), help="Worker processes or threads (default: one per CPU).")
@click.option("--pool", "-P", type=click.Choice(["prefork", "threads", "solo"]), default="prefork", show_default=True)
@click.option("--loglevel", "-l", type=LOG_LEVELS, default="INFO", show_default=True)
@click.option("--hostname", "-n", help="Node name (default celery@<host>).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def worker(ctx: CliContext, concurrency: int | None, pool: str, loglevel: str, hostname: str | None, celery_args: Sequence[str]) -> None:
    """Run a Celery worker for the scheduled jobs; further arguments go to `celery worker`."""
    settings = _jobs_settings(ctx, "worker")
    app = assembly.worker_app(settings)
    # Fail now, not on the first task: the database (schema current) and the outbox sinks' config.
    # Built and closed here; each worker process builds its own on its first task.
    app.open_runtime().close()
    _use_project_logging(settings, loglevel)
    argv = ["worker", f"--loglevel={loglevel.upper()}", f"--pool={pool}"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main([*argv, *celery_args])


@click.command()
@click.option("--loglevel", "-l", type=LOG_LEVELS, default="INFO", show_default=True)
@click.option("--schedule-file", "-s", default="./var/celerybeat-schedule", show_default=True,
              help="Where beat keeps each entry's last run time.")
@click.option("--max-interval", type=click.FloatRange(min=0.1), help="Longest sleep between checks, seconds (Celery's default 300).")
@pass_ctx
def beat(ctx: CliContext, loglevel: str, schedule_file: str, max_interval: float | None) -> None:
    """Run Celery beat: each enabled partner's sync on its crontab, the outbox relay, alerts, pruning."""
    settings = _jobs_settings(ctx, "beat")
    app = assembly.worker_app(settings)
    _use_project_logging(settings, loglevel)
    Path(schedule_file).parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"loglevel": loglevel.upper(), "schedule": schedule_file}
    if max_interval is not None:
        options["max_interval"] = max_interval
    app.Beat(**options).run()
