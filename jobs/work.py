"""The job bodies: what a Celery task or the embedded scheduler runs, given the process's core.

Each one re-reads state from the database, so running it twice is safe (the
tasks are ``acks_late``: a worker that dies mid-job gets the job delivered
again). Results are small JSON-able dicts with ids and counts, never patient data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select

from imaging_sync import audit_seals
from imaging_sync.atna.relay import AtnaRelay
from imaging_sync.config import Settings
from imaging_sync.core import Core
from imaging_sync.db.models import PartnerState, RejectedItem, SyncRun, utcnow
from imaging_sync.outbox.relay import Relay, prune_done, retry_failed
from imaging_sync.priority import run_at_low_priority
from imaging_sync.statuses import RunStatus
from imaging_sync.sync.runner import RunResult
from storage.headers import HeaderCache

log = logging.getLogger(__name__)


def run_summary(result: RunResult) -> dict[str, Any]:
    """What a sync task returns: enough to find the run (``imaging-sync runs show``)."""
    return {
        "run_id": str(result.run_id),
        "partner": result.partner,
        "status": result.status.value,  # the word itself: Celery logs a task's result by its repr
        "counts": dict(result.counts),
        "seconds": round(result.seconds, 3),
        "error_kind": result.error_kind,
        "error": result.error,
    }


def sync_partner(
    core: Core, name: str, *, full: bool = False, study_id: str | None = None, trigger: str = "task", run_id: str | None = None
) -> dict[str, Any]:
    """One partner's sync (or one study's refresh); a run skipped for the lock is a normal result.

    ``run_id``: the run the producer recorded as queued (the REST API does), carried on here.
    """
    queued = uuid.UUID(run_id) if run_id else None
    if study_id is not None:
        result = core.runner.refresh_study(name, study_id, trigger=trigger, run_id=queued)
    else:
        result = core.runner.sync(name, full=full, trigger=trigger, run_id=queued)
    return run_summary(result)


def read_headers(headers: HeaderCache, partner: str, *, retry_failed: bool = False) -> dict[str, Any]:
    """Read the headers of ``partner``'s instances not read yet (DICOMweb's cache), after its sync; failures are
    recorded per instance and counted by kind here, never raised: a partner's missing object is its problem to fix."""
    result = headers.fill(partner, retry_failed=retry_failed)
    if result.failed:
        log.warning("headers of partner %s: %d read, failures %s", partner, result.read, result.failed)
    return {"partner": partner, "read": result.read, "failed": dict(result.failed)}


def wants_headers(settings: Settings, summary: dict[str, Any]) -> bool:
    """A sync run's summary calls for reading headers: the setting is on and the run committed pages (not skipped or failed
    before any): new instances may be there."""
    return settings.dicomweb.read_headers_after_sync and summary["status"] in (RunStatus.SUCCEEDED.value, RunStatus.FAILED.value)


def seal_audit(core: Core, copies: audit_seals.SealCopies | None) -> dict[str, Any]:
    """Seal the audit rows written since the last seal; copy every seal not yet outside when a bucket is set.

    In a thread of lower priority (:mod:`imaging_sync.priority`): the hashing is a
    burst of CPU that must not come out of the answers' latency.
    """
    result, copied = run_at_low_priority(lambda: audit_seals.seal_and_copy(core.engine, copies), name="audit-sealer")
    return {"seals": [s.seal_no for s in result.seals], "rows": result.rows, "busy": result.busy, "copied": copied}


def relay_atna(relay: AtnaRelay | None) -> dict[str, Any]:
    """Send the sealed audit log to the Audit Record Repository ([audit.atna]) until every seal is sent or a delivery fails.

    A failed delivery is a normal result (``error``), not an exception: the
    relay keeps its position and backs off, and the next tick tries again.
    """
    if relay is None:
        return {"configured": False}
    return {"configured": True, **dataclasses.asdict(relay.run_until_idle())}


def relay_outbox(relay: Relay | None) -> dict[str, Any]:
    """Deliver what is claimable now; with no sink configured there is nothing to do."""
    if relay is None:
        return {"configured": False, "claimed": 0, "delivered": 0, "retried": 0, "failed": 0}
    return {"configured": True, **dataclasses.asdict(relay.run_until_idle())}


def retry_failed_outbox(core: Core, ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Failed outbox events back to pending (all, or these ids); the next relay delivers them."""
    wanted = [uuid.UUID(str(i)) for i in ids] if ids else None
    return {"requeued": retry_failed(core.engine, wanted)}


def check_alerts(core: Core) -> dict[str, Any]:
    core.alerts.check()
    return {"checked": True}


def prune(core: Core, days: int | None = None) -> dict[str, Any]:
    """Delete finished sync runs older than ``days`` (default ``jobs.prune_days``) with their
    rejected items, and delivered outbox events older than ``outbox.keep_done_days``.

    Each partner's latest run is kept whatever its age (``partners list`` shows
    it); runs still ``running`` are never touched; failed outbox events stay
    until someone retries or looks at them.
    """
    days = core.settings.jobs.prune_days if days is None else int(days)
    if days < 1:
        raise ValueError('Argument "days" must be at least 1.')
    cutoff = utcnow() - dt.timedelta(days=days)
    latest = select(PartnerState.last_run_id).where(PartnerState.last_run_id.is_not(None))
    old_runs = select(SyncRun.id).where(SyncRun.finished_at.is_not(None), SyncRun.finished_at < cutoff, SyncRun.id.not_in(latest))
    with core.engine.connect() as conn:
        conn = conn.execution_options(sqlite_immediate=True)
        with conn.begin():
            rejected = conn.execute(delete(RejectedItem).where(RejectedItem.run_id.in_(old_runs))).rowcount
            runs = conn.execute(delete(SyncRun).where(SyncRun.id.in_(old_runs))).rowcount
    events = prune_done(core.engine, dt.timedelta(days=core.settings.outbox.keep_done_days))
    log.info("pruned %d sync runs, %d rejected items (older than %d days), %d delivered outbox events", runs, rejected, days, events)
    return {"sync_runs": runs, "rejected_items": rejected, "outbox_events": events, "days": days}
