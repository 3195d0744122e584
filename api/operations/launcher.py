"""Starting a sync from the API: the run is recorded now, the work happens in the background.

``SyncLauncher`` is what the API needs; :class:`ThreadLauncher` runs the sync
in a thread of the API process until the Celery task of a later issue
replaces it (the app factory takes any launcher). The API answers 202 with
the run id as soon as the run record exists; progress and outcome are in
``GET /sync-runs/{id}``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import uuid
from typing import Protocol

from sqlalchemy import Engine

from imaging_sync.sync.lock import partner_lock
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
            with partner_lock(self.engine, partner):  # raises SyncLockedError when held; released at once
                pass
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
