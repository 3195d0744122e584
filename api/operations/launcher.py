"""Starting a sync from the API: the run is recorded now, the work happens in the background.

``SyncLauncher`` is what the API needs; ``api.sync_launcher`` picks one
(:func:`launcher_for`). :class:`ThreadLauncher` runs the sync in a thread of
the API process (one process, the demo); :class:`QueueLauncher` hands it to the
Celery workers, so API processes sized for requests do no sync work. The API
answers 202 with the run id as soon as the run record exists; progress and
outcome are in ``GET /sync-runs/{id}``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import uuid
from typing import Protocol

from sqlalchemy import Engine

from imaging_sync.config import Settings
from imaging_sync.sync.queue import SyncQueue, refuse_if_syncing
from imaging_sync.sync.runner import SyncRunner

log = logging.getLogger(__name__)

TRIGGER = "api"
START_TIMEOUT_SECONDS = 30.0


class SyncLauncher(Protocol):
    def launch(self, partner: str, *, full: bool = False, study_id: str | None = None) -> uuid.UUID:
        """Start a sync (or a refresh of one partner study) and return its run id once recorded.

        Raises SyncLockedError when the partner is being synced already.
        """
        ...

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting work; wait up to ``timeout`` for running syncs."""
        ...


class ThreadLauncher:
    """Runs ``SyncRunner.sync``/``refresh_study`` in a daemon thread of this process.

    The partner lock is probed first (409 at once when another run holds it,
    here or in another process); the runner's ``on_start`` hands back the run
    id as soon as the run is recorded.
    """

    def __init__(self, runner: SyncRunner, engine: Engine) -> None:
        self.runner = runner
        self.engine = engine
        self._threads: set[threading.Thread] = set()
        self._guard = threading.Lock()

    def launch(self, partner: str, *, full: bool = False, study_id: str | None = None) -> uuid.UUID:
        with self._guard:
            refuse_if_syncing(self.engine, partner)
            started: concurrent.futures.Future[uuid.UUID] = concurrent.futures.Future()

            def work() -> None:
                try:
                    if study_id is not None:
                        self.runner.refresh_study(partner, study_id, trigger=TRIGGER, on_start=started.set_result)
                    else:
                        self.runner.sync(partner, full=full, trigger=TRIGGER, on_start=started.set_result)
                except BaseException as exc:  # the runner recorded the failure; the thread must not die silently
                    log.exception("background sync of %s failed", partner)
                    if not started.done():
                        started.set_exception(exc)
                finally:
                    with self._guard:
                        self._threads.discard(threading.current_thread())

            thread = threading.Thread(target=work, name=f"api-sync-{partner}", daemon=True)
            self._threads.add(thread)
            thread.start()
        return started.result(timeout=START_TIMEOUT_SECONDS)

    def close(self, timeout: float = 10.0) -> None:
        with self._guard:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)


class QueueLauncher:
    """Queues the sync for the Celery workers (:class:`imaging_sync.sync.queue.SyncQueue`): a run recorded
    ``queued`` that the worker carries on; a broker that does not take the task is a ``QueueUnavailableError``
    (503) and the run is marked failed with that reason."""

    def __init__(self, queue: SyncQueue, engine: Engine) -> None:
        self.queue = queue
        self.engine = engine

    def launch(self, partner: str, *, full: bool = False, study_id: str | None = None) -> uuid.UUID:
        refuse_if_syncing(self.engine, partner)
        return self.queue.queue(partner, trigger=TRIGGER, full=full, study_id=study_id)

    def close(self, timeout: float = 10.0) -> None:
        self.queue.close()


def launcher_for(settings: Settings, runner: SyncRunner, engine: Engine) -> SyncLauncher:
    """The launcher ``api.sync_launcher`` names."""
    if settings.api.sync_launcher == "queue":
        return QueueLauncher(SyncQueue.on_broker(runner, settings.jobs.resolved_broker_url().reveal()), engine)
    return ThreadLauncher(runner, engine)
