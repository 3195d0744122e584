"""The Celery application, built from the settings by :func:`create_app`.

Delivery rules (Celery's "Tasks" guide, *acks_late*): a task is acknowledged
only after it finished, and a worker process that dies mid-task has its task
re-queued (``task_reject_on_worker_lost``); every job is idempotent and
resumes from committed state (the sync from its bookmark), so a second
delivery completes the work instead of doubling it. One task per worker
process at a time (``worker_prefetch_multiplier = 1``): a long sync never sits
on messages another worker could take.

Redis (default) or RabbitMQ is chosen by the URL alone (``redis://…`` or
``amqp://…``). On Redis an unacknowledged task is delivered again after
``jobs.visibility_timeout``; a sync still running then gets a duplicate,
which the partner lock turns into a recorded ``skipped`` run.

Workers and beat run through ``imaging-sync worker`` / ``imaging-sync beat``,
whose app the process assembly builds (``app.assembly.worker_app``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery, current_app
from celery.signals import worker_process_shutdown, worker_shutdown
from kombu.utils.url import maybe_sanitize_url

from imaging_sync.config import Settings
from imaging_sync.core import Core
from imaging_sync.task_names import QUEUE
from jobs.runtime import Runtime
from jobs.schedule import build_beat_schedule

# Time limits (seconds) for tasks that do not set their own; prefork pools enforce them.
SOFT_TIME_LIMIT = 3600
TIME_LIMIT = SOFT_TIME_LIMIT + 60


OpenCore = Callable[[Settings], Core]


class JobsApp(Celery):  # type: ignore[misc]  # Celery ships no type information: Celery is Any
    """A Celery app that carries its settings and, per worker process, the runtime its tasks use.

    ``open_core``: how a worker process gets its core (the process assembly,
    ``app.assembly.worker_app``, passes it in); an app without it only sends tasks.
    """

    def __init__(self, settings: Settings, open_core: OpenCore | None = None, **kwargs: Any) -> None:
        super().__init__("imaging_sync", **kwargs)
        self.settings = settings
        self._open_core = open_core
        self._runtime: Runtime | None = None
        self._runtime_pid: int | None = None
        self._runtime_lock = threading.Lock()

    @property
    def runtime(self) -> Runtime:
        """The process's core and relay, built on first use (after the fork, in a prefork child)."""
        with self._runtime_lock:
            if self._runtime is not None and self._runtime_pid != os.getpid():
                self._runtime.forget_inherited()
                self._runtime = None
            if self._runtime is None:
                self._runtime = self.open_runtime()
                self._runtime_pid = os.getpid()
            return self._runtime

    def open_runtime(self) -> Runtime:
        """A runtime over a new core (schema checked): what a worker process runs its tasks with."""
        if self._open_core is None:
            raise RuntimeError("this Celery app only sends tasks: it has no core (a worker's app comes from app.assembly.worker_app)")
        core = self._open_core(self.settings)
        try:
            core.require_current_schema()
            return Runtime(core, self, owns_core=True)
        except BaseException:
            core.close()
            raise

    def close_runtime(self) -> None:
        with self._runtime_lock:
            runtime, self._runtime = self._runtime, None
        if runtime is not None and self._runtime_pid == os.getpid():
            runtime.close()

    def close(self) -> None:
        self.close_runtime()
        super().close()


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for these imaging-sync settings (see the module docstring for why each)."""
    jobs = settings.jobs
    # Redis looks for unacknowledged tasks past the visibility timeout every `interval` seconds
    # and scans every `throttle`-th time: about every vt/2 (Kombu's default of 100 s at most).
    restore_interval = max(1.0, min(10.0, jobs.visibility_timeout / 4))
    restore_throttle = max(1, int(min(jobs.visibility_timeout / 2, 100.0) / restore_interval))
    return {
        "broker_url": jobs.resolved_broker_url().reveal(),
        "result_backend": jobs.resolved_result_backend().reveal(),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": jobs.visibility_timeout,
            "unacked_restore_interval": restore_interval,
            "unacked_restore_throttle": restore_throttle,
        },
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_soft_time_limit": SOFT_TIME_LIMIT,
        "task_time_limit": TIME_LIMIT,
        "task_track_started": True,
        "result_expires": 24 * 3600,
        "timezone": jobs.timezone,
        "enable_utc": True,
        "beat_schedule": build_beat_schedule(settings),
    }


def create_app(settings: Settings, *, open_core: OpenCore | None = None, **overrides: Any) -> JobsApp:
    """A Celery app for ``settings``; ``overrides`` win. ``open_core``: see :class:`JobsApp` (workers need it)."""
    app = JobsApp(settings, open_core, set_as_current=False)
    app.conf.update(celery_config(settings), **overrides)
    import jobs.tasks  # noqa: F401  # registers the shared tasks on every app

    return app


def broker_for_humans(app: Celery) -> str:
    """The broker URL with any password masked, for messages."""
    return str(maybe_sanitize_url(app.conf.broker_url))


def _close_runtime(**_: Any) -> None:
    """A worker (or prefork child) going away closes its database pool and sinks."""
    app = current_app._get_current_object()
    if isinstance(app, JobsApp):
        app.close_runtime()


# Connected by calls rather than as decorators: Celery's signals are untyped, and a decorator would untype the handler.
worker_shutdown.connect(_close_runtime)
worker_process_shutdown.connect(_close_runtime)
