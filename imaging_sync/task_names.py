"""Celery task names: stable strings, so producers need not import the tasks.

The ``jobs`` package registers the tasks under these names; beat, the CLI's
``--async`` and the REST API's queued sync launcher (which must not import
``jobs``) send them by name.
"""

from __future__ import annotations

QUEUE = "imaging-sync"  # the queue the workers consume

SYNC_PARTNER = "imaging_sync.jobs.sync_partner"
SYNC_ALL = "imaging_sync.jobs.sync_all"
RELAY_OUTBOX = "imaging_sync.jobs.relay_outbox"
RETRY_FAILED_OUTBOX = "imaging_sync.jobs.retry_failed_outbox"
PRUNE = "imaging_sync.jobs.prune"
CHECK_ALERTS = "imaging_sync.jobs.check_alerts"
SEAL_AUDIT = "imaging_sync.jobs.seal_audit"
RELAY_ATNA = "imaging_sync.jobs.relay_atna"
READ_HEADERS = "imaging_sync.jobs.read_headers"

__all__ = ["QUEUE", "CHECK_ALERTS", "PRUNE", "READ_HEADERS", "RELAY_ATNA", "RELAY_OUTBOX", "RETRY_FAILED_OUTBOX", "SEAL_AUDIT", "SYNC_ALL", "SYNC_PARTNER"]
