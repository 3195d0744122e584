"""The scheduler for single-process mode: the beat schedule, run in threads, no broker.

It reads the very entries Celery beat would (:func:`jobs.schedule.build_beat_schedule`)
and asks their Celery schedule objects when they are due (``is_due``, crontabs
in ``jobs.timezone``), then runs the job bodies (:mod:`jobs.work`) on a small
pool of worker threads with the process's core. A job still running when its
next tick comes is not started twice (one sync at a time per partner here;
the partner lock guards against other processes). Like beat, the first tick
of each entry is the first one after :meth:`EmbeddedScheduler.start`.

``stop()`` returns promptly when idle. A sync is never cut mid-page: stop
waits up to ``timeout`` for running jobs, and one still running after that is
left to finish on its daemon thread (killed with the process, it resumes from
its bookmark on the next run).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from imaging_sync.config import Settings
from imaging_sync.core import Core
from imaging_sync.task_names import CHECK_ALERTS, PRUNE, RELAY_ATNA, RELAY_OUTBOX, SEAL_AUDIT, SYNC_PARTNER
from jobs import work
from jobs.runtime import Runtime
from jobs.schedule import NowFun, build_beat_schedule

log = logging.getLogger(__name__)
_Job = tuple[str, Callable[[], Any]]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class EmbeddedScheduler:
    """Runs the periodic jobs inside this process (``start`` / ``stop``, or ``with``)."""

    def __init__(self, core: Core, settings: Settings | None = None, *, clock: NowFun | None = None,
                 workers: int = 4, max_sleep: float = 5.0) -> None:
        if workers < 1:
            raise ValueError('Argument "workers" must be at least 1.')
        self.core = core
        self.settings = settings or core.settings
        self.max_sleep = max_sleep
        self._clock = clock or _utcnow
        self._entries = build_beat_schedule(self.settings, nowfun=self._clock)
        for name, entry in self._entries.items():
            if entry["task"] not in (SYNC_PARTNER, RELAY_OUTBOX, CHECK_ALERTS, PRUNE, SEAL_AUDIT, RELAY_ATNA):
                raise ValueError(f"schedule entry {name}: no local job for task {entry['task']}")
        self._workers = workers
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._scheduler: threading.Thread | None = None
        self._runtime: Runtime | None = None
        self._producer: Any = None

    # -- life cycle --------------------------------------------------------------

    def start(self) -> EmbeddedScheduler:
        if self._scheduler is not None:
            raise RuntimeError("the scheduler is already running")
        producer = None
        if self.settings.outbox.celery_task:  # events handed to a Celery task need a broker to send them
            from jobs.app import create_app

            producer = create_app(self.settings)
        try:
            self._runtime = Runtime(self.core, producer)  # fails now on a bad sink config
        except BaseException:
            if producer is not None:
                producer.close()
            raise
        self._producer = producer
        self._stopping.clear()
        self._threads = [threading.Thread(target=self._work, name=f"imaging-sync-jobs-{n}", daemon=True) for n in range(self._workers)]
        for thread in self._threads:
            thread.start()
        self._scheduler = threading.Thread(target=self._loop, name="imaging-sync-scheduler", daemon=True)
        self._scheduler.start()
        log.info("embedded scheduler started: %s", ", ".join(self._entries))
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop ticking, let running jobs finish for up to ``timeout`` seconds, close the sinks."""
        if self._scheduler is None:
            return
        self._stopping.set()
        self._wake.set()
        self._scheduler.join()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        still = sorted(self._running)
        if still:
            log.warning("embedded scheduler stopped with jobs still running: %s (a sync resumes from its bookmark)", ", ".join(still))
        if self._runtime is not None:
            self._runtime.close()  # the sinks; the core belongs to the caller
        if self._producer is not None:
            self._producer.close()
        self._scheduler, self._threads, self._runtime, self._producer = None, [], None, None
        log.info("embedded scheduler stopped")

    def wake(self) -> None:
        """Look at the schedule now (after a test moves its clock, say) instead of at the next check."""
        self._wake.set()

    @property
    def running_jobs(self) -> set[str]:
        with self._running_lock:
            return set(self._running)

    def __enter__(self) -> EmbeddedScheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the scheduler thread ------------------------------------------------------

    def _loop(self) -> None:
        last_run = {name: self._clock() for name in self._entries}
        while not self._stopping.is_set():
            self._wake.clear()
            sleep = self.max_sleep
            for name, entry in self._entries.items():
                try:
                    due, next_in = entry["schedule"].is_due(last_run[name])
                except Exception:  # a broken entry must not stop the others
                    log.exception("schedule entry %s: cannot tell when it is due", name)
                    continue
                if due:
                    last_run[name] = self._clock()
                    self._submit(name, entry)
                sleep = min(sleep, float(next_in))
            self._wake.wait(max(sleep, 0.001))

    def _submit(self, name: str, entry: dict[str, Any]) -> None:
        with self._running_lock:
            if name in self._running:
                log.info("%s: the previous run is still going; this tick is skipped", name)
                return
            self._running.add(name)
        self._queue.put((name, self._job(entry)))

    def _job(self, entry: dict[str, Any]) -> Callable[[], Any]:
        task, kwargs = entry["task"], dict(entry.get("kwargs", {}))
        runtime = self._runtime
        assert runtime is not None
        if task == SYNC_PARTNER:
            return lambda: self._sync_then_headers(runtime, kwargs)
        if task == RELAY_OUTBOX:
            return lambda: work.relay_outbox(runtime.relay)
        if task == CHECK_ALERTS:
            return lambda: work.check_alerts(self.core)
        if task == RELAY_ATNA:
            return lambda: work.relay_atna(runtime.atna)
        if task == SEAL_AUDIT:
            return lambda: work.seal_audit(self.core, runtime.seal_copies)
        return lambda: work.prune(self.core, **kwargs)

    def _sync_then_headers(self, runtime: Runtime, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A partner's sync, then (in the same job thread, as the Celery worker would next) its new instances' headers."""
        summary = work.sync_partner(self.core, **kwargs)
        if work.wants_headers(self.settings, summary):
            work.read_headers(runtime.headers, kwargs["name"])
        return summary

    # -- worker threads ------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            name, run = job
            try:
                if not self._stopping.is_set():  # queued but not started before stop(): dropped
                    run()
            except Exception:  # the run record or the outbox keeps the details; keep serving
                log.exception("%s failed", name)
            finally:
                with self._running_lock:
                    self._running.discard(name)
