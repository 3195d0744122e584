"""``imaging-sync worker`` and ``imaging-sync beat`` (entry points ``imaging_sync.commands``).

Both build the Celery app from the same settings as every other command
(``--config`` / ``IMAGING_SYNC_CONFIG``) and hand over to Celery. Logs use the
project's format (``[logging] format = "json"`` gives JSON lines with the run id).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from celery.signals import setup_logging

from imaging_sync.config import LoggingConfig, Settings, load_settings
from imaging_sync.errors import ConfigError
from imaging_sync.logs import configure_logging
from jobs.app import create_app
from jobs.runtime import Runtime

LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)


def _settings(ctx: click.Context, command: str) -> Settings:
    """The settings as every command reads them (``--config`` / ``IMAGING_SYNC_CONFIG``); refused when no broker is in use."""
    # The root command's context object knows the --config path; run alone, IMAGING_SYNC_CONFIG decides.
    root = ctx.find_root().obj
    settings = root.settings if root is not None else load_settings()
    if settings.jobs.scheduler == "embedded" and (command == "beat" or not settings.broker_users()):
        raise ConfigError("jobs.scheduler", f'is "embedded": `imaging-sync serve` runs the schedules in-process, so `imaging-sync {command}` has nothing to do; '
                                            'set jobs.scheduler = "celery" to run Celery beat and workers')
    return settings


def _use_project_logging(settings: Settings, level: str) -> None:
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
@click.pass_context
def worker(ctx: click.Context, concurrency: int | None, pool: str, loglevel: str, hostname: str | None, celery_args: Sequence[str]) -> None:
    """Run a Celery worker for the scheduled jobs; further arguments go to `celery worker`."""
    settings = _settings(ctx, "worker")
    app = create_app(settings)
    # Fail now, not on the first task: the database (schema current) and the outbox sinks' config.
    # Built and closed here; each worker process builds its own on its first task.
    Runtime(settings, app).close()
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
@click.pass_context
def beat(ctx: click.Context, loglevel: str, schedule_file: str, max_interval: float | None) -> None:
    """Run Celery beat: each enabled partner's sync on its crontab, the outbox relay, alerts, pruning."""
    settings = _settings(ctx, "beat")
    app = create_app(settings)
    _use_project_logging(settings, loglevel)
    Path(schedule_file).parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"loglevel": loglevel.upper(), "schedule": schedule_file}
    if max_interval is not None:
        options["max_interval"] = max_interval
    app.Beat(**options).run()
