"""The one place each process is put together: read this module to see what a process is made of.

Every process starts the same way (:func:`open_process`): logging configured
from the settings, the embedded S3 started first when ``storage.embedded`` asks
for one (so every part reads the buckets' real endpoint), then one
:class:`~imaging_sync.core.Core` (engine, runner, alerts) and one
:class:`~storage.BucketRegistry`. Then each kind of process builds its edge
over those parts and passes them in; no part builds its own registry, core or
settings:

- the REST API: :func:`api_app` (one process, tests) and
  :func:`api_app_from_environment` (each uvicorn worker of ``serve api``);
- the DICOM node: :func:`dicom_server`;
- a Celery worker or beat: :func:`worker_app` (each worker process opens its
  core on its first task, after the fork);
- everything in one process (``imaging-sync serve``, the demo): :func:`all_in_one`.

Each edge is imported by the function that builds it, so a process imports
only what it runs: the DICOM node listens without loading Litestar or Celery
(start-up within 2 s on an idle machine).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from app.services import Service
from imaging_sync.config import CONFIG_ENV, DicomConfig, Settings, load_settings
from imaging_sync.core import Core
from imaging_sync.heap import freeze_startup_objects
from imaging_sync.logs import configure_logging
from storage import BucketRegistry, EmbeddedS3, ObjectReader

if TYPE_CHECKING:  # each edge is imported by the function that builds it: a process imports only what it runs
    from litestar import Litestar

    from dicom.server import DicomServer
    from jobs.app import JobsApp
    from jobs.embedded import EmbeddedScheduler


@dataclass
class Process:
    """The parts every process shares: its settings (as the parts read them), core and bucket registry.

    ``embedded_s3``: the endpoint of the S3 this process started (``storage.embedded``), if any.
    """

    settings: Settings
    core: Core
    registry: BucketRegistry
    embedded_s3: str | None = None


def open_core(settings: Settings, *, configure_logs: bool = True, verbose: bool = False) -> Core:
    """Logging from ``settings.logging`` (``verbose``: libraries' lines too), then the core."""
    if configure_logs:
        configure_logging(settings.logging, verbose=verbose)
    return Core.open(settings)


@contextmanager
def embedded_storage(settings: Settings) -> Iterator[tuple[Settings, str | None]]:
    """``(settings as the process must read them, the embedded S3's endpoint or None)``.

    With ``storage.embedded``, an S3 is started now, before any part reads the
    storage settings, and every registered bucket points at it; it stops when
    the process's parts are done. Without, ``settings`` as they are.
    """
    if not settings.storage.embedded:
        yield settings, None
        return
    s3 = EmbeddedS3.for_config(settings.storage)
    s3.start()
    try:
        yield msgspec.structs.replace(settings, storage=s3.storage_config(settings.storage)), s3.endpoint_url
    finally:
        s3.stop()


@contextmanager
def open_process(settings: Settings, *, verbose: bool = False, require_schema: bool = True) -> Iterator[Process]:
    """The shared parts of a process that serves (API, DICOM node, all-in-one), closed on leaving."""
    with embedded_storage(settings) as (settings, endpoint):
        core = open_core(settings, verbose=verbose)
        try:
            if require_schema:
                core.require_current_schema()
            yield Process(settings=settings, core=core, registry=BucketRegistry(settings.storage), embedded_s3=endpoint)
        finally:
            core.close()


# -- the REST API ---------------------------------------------------------------------------------


def api_app(core: Core, registry: BucketRegistry, *, key_cache_seconds: float | None = None, close_core: bool = False) -> Litestar:
    """The REST API over these parts, with the sync launcher ``api.sync_launcher`` names."""
    from api.app import KEY_CACHE_SECONDS, create_app
    from api.operations.launcher import launcher_for

    key_cache_seconds = KEY_CACHE_SECONDS if key_cache_seconds is None else key_cache_seconds
    launcher = launcher_for(core.settings, core.runner, core.engine)
    return create_app(core, registry=registry, launcher=launcher, key_cache_seconds=key_cache_seconds, close_core=close_core)


def api_app_from_environment() -> Litestar:
    """The app factory each uvicorn worker of ``serve api`` calls: settings from ``IMAGING_SYNC_CONFIG`` and the environment.

    ``serve api`` already started an embedded S3 if one was asked for and put
    its endpoint in the environment (:func:`api_worker_environment`), so a
    worker only reads settings. Its database pool opens now, not on the first
    request; start-up objects are then frozen out of the cyclic collector.
    """
    from api.db import open_pool

    settings = load_settings()
    core = open_core(settings)
    app = api_app(core, BucketRegistry(settings.storage), close_core=True)
    if core.engine.dialect.name == "postgresql":
        open_pool(core.engine, settings.database.pool_size)
    freeze_startup_objects()
    return app


API_APP_FACTORY = f"{__name__}:api_app_from_environment"


def api_worker_environment(settings: Settings, config_path: str | None) -> dict[str, str]:
    """What the uvicorn workers of ``serve api`` must find in their environment to read the parent's settings.

    The config file's path; and when the parent started an embedded S3, each
    bucket's endpoint (the workers must not start S3 servers of their own).
    """
    environ: dict[str, str] = {}
    if config_path:
        environ[CONFIG_ENV] = config_path
    if settings.storage.embedded:
        environ["IMAGING_SYNC__STORAGE__EMBEDDED"] = "false"
        for name, bucket in settings.storage.buckets.items():
            key = name.upper().replace("-", "_").replace(".", "_")
            environ[f"IMAGING_SYNC__STORAGE__BUCKETS__{key}__ENDPOINT_URL"] = bucket.endpoint_url or ""
            environ[f"IMAGING_SYNC__STORAGE__BUCKETS__{key}__ADDRESSING_STYLE"] = bucket.addressing_style
    return environ


# -- the DICOM node -------------------------------------------------------------------------------


def dicom_server(process: Process, config: DicomConfig | None = None) -> DicomServer:
    """The Query/Retrieve node over the process's core and registry (``config``: ``dicom`` with overrides).

    Its start-up objects are frozen out of the cyclic collector again once its buckets' S3 clients are built:
    they are built after the port opens (the node listens within 2 s), so after the process's own freeze, and
    botocore's service models are most of the heap. Unfrozen, every full collection walked them: 150 ms of
    the GIL, measured, and pynetdicom's server forces one every 60 connections.
    """
    from dicom.server import DicomServer, build_services

    config = config or process.settings.dicom
    services = build_services(config, process.core.engine, ObjectReader(process.registry), partner_priority=process.settings.priorities())
    return DicomServer(config, services, after_warm_up=freeze_startup_objects)


# -- Celery ---------------------------------------------------------------------------------------


def worker_app(settings: Settings, **overrides: Any) -> JobsApp:
    """The Celery app of ``imaging-sync worker``/``beat``: each worker process opens its own core on its first task."""
    from jobs.app import create_app as create_jobs_app

    return create_jobs_app(settings, open_core=Core.open, **overrides)


def scheduler(core: Core) -> EmbeddedScheduler:
    """The in-process scheduler of the all-in-one process, over its core (no broker)."""
    from jobs.embedded import EmbeddedScheduler

    return EmbeddedScheduler(core)


# -- everything in one process --------------------------------------------------------------------


def all_in_one(process: Process) -> list[Service]:
    """``imaging-sync serve`` (and the demo): the REST API, the DICOM node and the scheduler, in start order."""
    from api.service import ApiService
    from dicom.service import DicomService
    from jobs.service import SchedulerService

    settings = process.settings
    return [
        ApiService(api_app(process.core, process.registry), settings.api),
        DicomService(dicom_server(process), settings.dicom),
        SchedulerService(scheduler(process.core)),
    ]


celery: JobsApp  # declared, not bound: the first access goes through __getattr__ below


def __getattr__(name: str) -> Any:
    """``celery -A app.assembly inspect …``: Celery's command line finds a worker app here, built on first access."""
    if name != "celery":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    global celery
    celery = worker_app(load_settings())
    return celery

