"""Queueing syncs for the Celery workers: the one way, the run recorded ``queued`` before the task is sent.

Used by the REST API (``api.sync_launcher = "queue"``), ``imaging-sync sync
--async`` and the workers' own ``sync_all`` task, so every queued sync has a
run record from the moment it is accepted: a caller answers "accepted, see run
X" at once, a task the broker refused leaves its run failed with the reason,
and a task lost inside the broker leaves a run the partner's next run marks
abandoned after ``runner.QUEUED_RUN_EXPIRY``. The task is sent by name on a
producer-only Celery app, so nothing here imports the workers' code.
"""

from __future__ import annotations

import logging
import uuid

from celery import Celery
from sqlalchemy import Engine

from imaging_sync.errors import QueueUnavailableError
from imaging_sync.sync.lock import partner_lock
from imaging_sync.sync.runner import SyncRunner
from imaging_sync.task_names import QUEUE, SYNC_PARTNER

log = logging.getLogger(__name__)


def refuse_if_syncing(engine: Engine, partner: str) -> None:
    """SyncLockedError now when the partner is being synced, here or in another process.

    A probe: the lock is released at once. The run itself takes it again, and a
    run that loses that race ends 'skipped', recorded.
    """
    with partner_lock(engine, partner):
        pass


class SyncQueue:
    """Records a queued run and sends ``sync_partner`` for it; ``producer``: a Celery app on the broker."""

    SEND_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}

    def __init__(self, runner: SyncRunner, producer: Celery, *, owns_producer: bool = False) -> None:
        self.runner = runner
        self.producer = producer
        self._owns_producer = owns_producer

    @classmethod
    def on_broker(cls, runner: SyncRunner, broker_url: str) -> SyncQueue:
        """A queue with a producer of its own on ``broker_url`` (closed by :meth:`close`)."""
        producer = Celery("imaging-sync-producer", broker=broker_url, set_as_current=False)
        producer.conf.task_default_queue = QUEUE
        return cls(runner, producer, owns_producer=True)

    def queue(self, partner: str, *, trigger: str, full: bool = False, study_id: str | None = None) -> uuid.UUID:
        """The run id of the queued sync (or refresh of one partner study); QueueUnavailableError if the broker refuses it."""
        run_id = self.runner.record_queued_run(partner, trigger=trigger, full=full)
        kwargs = {"name": partner, "full": full, "study_id": study_id, "trigger": trigger, "run_id": str(run_id)}
        try:
            self.producer.send_task(SYNC_PARTNER, kwargs=kwargs, queue=QUEUE, retry=True, retry_policy=self.SEND_RETRY)
        except Exception as exc:  # kombu's and the transport's errors alike: the broker did not take it
            self.runner.fail_queued_run(run_id, f"the job queue did not take the task: {type(exc).__name__}")
            log.warning("could not queue the sync of %s: %s", partner, type(exc).__name__)
            raise QueueUnavailableError(f"the job queue did not take the sync of {partner!r}") from exc
        return run_id

    def close(self) -> None:
        if self._owns_producer:
            self.producer.close()
