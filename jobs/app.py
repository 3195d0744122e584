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

``celery -A jobs.app worker`` finds :data:`app` here: it is created from
``IMAGING_SYNC_CONFIG`` the first time it is asked for, so importing this
module to call :func:`create_app` reads no config and opens no connection.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery, current_app
from celery.signals import worker_process_shutdown, worker_shutdown
from kombu.utils.url import maybe_sanitize_url

from imaging_sync.config import Settings, load_settings
from imaging_sync.task_names import QUEUE
from jobs.runtime import Runtime
from jobs.schedule import build_beat_schedule

# Time limits (seconds) for tasks that do not set their own; prefork pools enforce them.
SOFT_TIME_LIMIT = 3600
TIME_LIMIT = SOFT_TIME_LIMIT + 60


class JobsApp(Celery):
    """A Celery app that carries its settings and, per process, the core built from them."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__("imaging_sync", **kwargs)
        self.settings = settings
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
                self._runtime = Runtime(self.settings, self)
                self._runtime_pid = os.getpid()
            return self._runtime

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


def create_app(settings: Settings | None = None, **overrides: Any) -> JobsApp:
    """A Celery app for ``settings`` (default: read from ``IMAGING_SYNC_CONFIG``); ``overrides`` win."""
    settings = settings or load_settings()
    app = JobsApp(settings, set_as_current=False)
    app.conf.update(celery_config(settings), **overrides)
    import jobs.tasks  # noqa: F401  # registers the shared tasks on every app

    return app


def broker_for_humans(app: Celery) -> str:
    """The broker URL with any password masked, for messages."""
    return str(maybe_sanitize_url(app.conf.broker_url))


@worker_process_shutdown.connect
@worker_shutdown.connect
def _close_runtime(**_: Any) -> None:
    """A worker (or prefork child) going away closes its database pool and sinks."""
    app = current_app._get_current_object()
    if isinstance(app, JobsApp):
        app.close_runtime()


_module_app: JobsApp | None = None
_module_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """``jobs.app.app``: the app Celery's command line looks for, created on first access."""
    global _module_app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _module_lock:
        if _module_app is None:
            _module_app = create_app()
        return _module_app
