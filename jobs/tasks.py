"""Celery tasks: thin wrappers that take names and ids, call the job bodies, return small dicts.

Registered on every app :func:`jobs.app.create_app` builds (``shared_task``);
each task reaches the process's core through its own app (``self.app.runtime``),
built once per worker process. All are idempotent, which is what makes the
app's ``acks_late`` / ``reject_on_worker_lost`` delivery safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from imaging_sync.sync.queue import SyncQueue
from imaging_sync.task_names import (
    CHECK_ALERTS,
    PRUNE,
    QUEUE,
    READ_HEADERS,
    RELAY_ATNA,
    RELAY_OUTBOX,
    RETRY_FAILED_OUTBOX,
    SEAL_AUDIT,
    SYNC_ALL,
    SYNC_PARTNER,
)
from jobs import work
from jobs.runtime import Runtime

if TYPE_CHECKING:
    from jobs.app import JobsApp

# A sync may legitimately run for hours (a first bulk load); it is killed only far beyond that.
SYNC_SOFT_TIME_LIMIT = 6 * 3600
# The database being unreachable is worth a few retries; partner failures are recorded runs, not exceptions.
_RETRY = {"autoretry_for": (OperationalError,), "retry_backoff": 5, "retry_backoff_max": 300, "retry_jitter": True, "max_retries": 5}


def _runtime(task: Task) -> Runtime:
    return cast("JobsApp", task.app).runtime  # tasks run only on the apps jobs.app.create_app builds


@shared_task(name=SYNC_PARTNER, bind=True, soft_time_limit=SYNC_SOFT_TIME_LIMIT, time_limit=SYNC_SOFT_TIME_LIMIT + 300, **_RETRY)  # type: ignore[untyped-decorator]  # Celery ships no type information
def sync_partner(
    self: Task, name: str, full: bool = False, study_id: str | None = None, trigger: str = "task", run_id: str | None = None
) -> dict[str, Any]:
    """Sync one partner (or refresh one of its studies); returns the run id, status and counts. Then queues the reading
    of its new instances' headers (DICOMweb), as its own task: a sync is not held up by it."""
    runtime = _runtime(self)
    summary = work.sync_partner(runtime.core, name, full=full, study_id=study_id, trigger=trigger, run_id=run_id)
    if work.wants_headers(runtime.settings, summary):
        self.app.send_task(READ_HEADERS, kwargs={"partner": name}, queue=QUEUE)
    return summary


@shared_task(name=READ_HEADERS, bind=True, soft_time_limit=SYNC_SOFT_TIME_LIMIT, time_limit=SYNC_SOFT_TIME_LIMIT + 300, **_RETRY)  # type: ignore[untyped-decorator]  # Celery ships no type information
def read_headers(self: Task, partner: str, retry_failed: bool = False) -> dict[str, Any]:
    """Read and keep the headers of a partner's instances not read yet; returns how many, and the failures by kind."""
    return work.read_headers(_runtime(self).headers, partner, retry_failed=retry_failed)


@shared_task(name=SYNC_ALL, bind=True)  # type: ignore[untyped-decorator]  # Celery ships no type information
def sync_all(self: Task, full: bool = False) -> dict[str, Any]:
    """Queue one ``sync_partner`` per enabled partner, each with its run recorded ``queued`` (they run in parallel)."""
    runtime = _runtime(self)
    queue = SyncQueue(runtime.core.runner, self.app)
    return {"queued": {p.name: str(queue.queue(p.name, trigger="task", full=full)) for p in runtime.settings.enabled_partners()}}


@shared_task(name=RELAY_OUTBOX, bind=True, soft_time_limit=600, time_limit=660, **_RETRY)  # type: ignore[untyped-decorator]  # Celery ships no type information
def relay_outbox(self: Task) -> dict[str, Any]:
    """Deliver pending outbox events to the configured sinks until none is claimable."""
    return work.relay_outbox(_runtime(self).relay)


@shared_task(name=RETRY_FAILED_OUTBOX, bind=True, **_RETRY)  # type: ignore[untyped-decorator]  # Celery ships no type information
def retry_failed_outbox(self: Task, ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Put failed outbox events (all, or these ids) back to pending."""
    return work.retry_failed_outbox(_runtime(self).core, ids)


@shared_task(name=PRUNE, bind=True, **_RETRY)  # type: ignore[untyped-decorator]  # Celery ships no type information
def prune(self: Task, days: int | None = None) -> dict[str, Any]:
    """Delete old sync runs with their rejected items, and old delivered outbox events."""
    return work.prune(_runtime(self).core, days)


@shared_task(name=CHECK_ALERTS, bind=True, soft_time_limit=300, time_limit=360, **_RETRY)  # type: ignore[untyped-decorator]  # Celery ships no type information
def check_alerts(self: Task) -> dict[str, Any]:
    """The periodic alert checks (outbox backlog, partners not synced for too long)."""
    return work.check_alerts(_runtime(self).core)


@shared_task(name=SEAL_AUDIT, bind=True, soft_time_limit=600, time_limit=660, **_RETRY)  # type: ignore[untyped-decorator]  # Celery ships no type information
def seal_audit(self: Task) -> dict[str, Any]:
    """Seal the audit rows written since the last seal, and copy the seals out ([audit] seal_bucket)."""
    runtime = _runtime(self)
    return work.seal_audit(runtime.core, runtime.seal_copies)


@shared_task(name=RELAY_ATNA, bind=True, soft_time_limit=600, time_limit=660, **_RETRY)  # type: ignore[untyped-decorator]  # Celery ships no type information
def relay_atna(self: Task) -> dict[str, Any]:
    """Send the sealed audit log as DICOM audit messages to the Audit Record Repository ([audit.atna])."""
    return work.relay_atna(_runtime(self).atna)
