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

from celery import Celery
from sqlalchemy import Engine

from imaging_sync.config import Settings
from imaging_sync.errors import QueueUnavailableError
from imaging_sync.sync.lock import partner_lock
from imaging_sync.sync.runner import SyncRunner
from imaging_sync.task_names import QUEUE, SYNC_PARTNER

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


def refuse_if_syncing(engine: Engine, partner: str) -> None:
    """SyncLockedError (409) now when the partner is being synced, here or in another process.

    A probe: the lock is released at once. The run itself takes it again, and a
    run that loses that race ends 'skipped', recorded.
    """
    with partner_lock(engine, partner):
        pass


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
    """Queues ``sync_partner`` for the Celery workers, with a run recorded as ``queued`` that the worker carries on.

    Sent by task name on a producer-only Celery app (the API does not import
    ``jobs``). A broker that does not take the task within a few quick retries
    is a ``QueueUnavailableError`` (503), and the queued run is marked failed
    with that reason: nothing is left waiting for a task that was never sent.
    A queued run whose task is lost inside the broker is abandoned by the
    partner's next run after an hour (``runner.QUEUED_RUN_EXPIRY``).
    """

    SEND_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}

    def __init__(self, runner: SyncRunner, engine: Engine, broker_url: str) -> None:
        self.runner = runner
        self.engine = engine
        self._producer = Celery("imaging-sync-api", broker=broker_url, set_as_current=False)
        self._producer.conf.task_default_queue = QUEUE

    def launch(self, partner: str, *, full: bool = False, study_id: str | None = None) -> uuid.UUID:
        refuse_if_syncing(self.engine, partner)
        run_id = self.runner.record_queued_run(partner, trigger=TRIGGER, full=full)
        kwargs = {"name": partner, "full": full, "study_id": study_id, "trigger": TRIGGER, "run_id": str(run_id)}
        try:
            self._producer.send_task(SYNC_PARTNER, kwargs=kwargs, queue=QUEUE, retry=True, retry_policy=self.SEND_RETRY)
        except Exception as exc:  # kombu's and the transport's errors alike: the broker did not take it
            self.runner.fail_queued_run(run_id, f"the job queue did not take the task: {type(exc).__name__}")
            log.warning("could not queue the sync of %s: %s", partner, type(exc).__name__)
            raise QueueUnavailableError(f"the job queue did not take the sync of {partner!r}") from exc
        return run_id

    def close(self, timeout: float = 10.0) -> None:
        self._producer.close()


def launcher_for(settings: Settings, runner: SyncRunner, engine: Engine) -> SyncLauncher:
    """The launcher ``api.sync_launcher`` names."""
    if settings.api.sync_launcher == "queue":
        return QueueLauncher(runner, engine, settings.jobs.resolved_broker_url().reveal())
    return ThreadLauncher(runner, engine)
