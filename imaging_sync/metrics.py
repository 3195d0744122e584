"""Prometheus metrics read from the database, so every process reports the same truth.

Sync runs, items by outcome, run durations, the outbox backlog and DICOM
operations are all recorded in the database already (sync_run, outbox_event,
the audit log); a collector that queries them at scrape time is correct
however many API workers, Celery workers and DICOM nodes run, with nothing to
aggregate across processes. Per-process figures (API request latency) are
kept by the API itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, func, select

from imaging_sync.db.models import AuditEntry, OutboxEvent, SyncRun, utcnow
from imaging_sync.statuses import OPEN_EVENT_STATUSES, OutboxEventStatus

DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600)
DICOM_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
RECENT = dt.timedelta(days=7)  # window for the duration histograms
ITEM_OUTCOMES = ("created", "updated", "unchanged", "deleted", "rejected")


class DatabaseCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> list[object]:
        """Nothing up front: registering must not query the database."""
        return []

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        with self.engine.connect() as conn:
            yield from self._sync(conn)
            yield from self._outbox(conn)
            yield from self._dicom(conn)

    def _sync(self, conn: Connection) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        runs = CounterMetricFamily("imaging_sync_sync_runs", "Sync runs by partner and final status.", labels=["partner", "status"])
        for partner, status, count in conn.execute(select(SyncRun.partner, SyncRun.status, func.count()).group_by(SyncRun.partner, SyncRun.status)):
            runs.add_metric([partner, status], count)
        yield runs
        items = CounterMetricFamily("imaging_sync_sync_items", "Partner items by outcome.", labels=["partner", "outcome"])
        sums = [func.coalesce(func.sum(getattr(SyncRun, outcome)), 0) for outcome in ITEM_OUTCOMES]
        for partner, *totals in conn.execute(select(SyncRun.partner, *sums).group_by(SyncRun.partner)):
            for outcome, total in zip(ITEM_OUTCOMES, totals, strict=True):
                items.add_metric([partner, outcome], int(total))
        yield items
        durations: dict[str, list[float]] = {}
        finished = select(SyncRun.partner, SyncRun.started_at, SyncRun.finished_at).where(SyncRun.finished_at.is_not(None), SyncRun.started_at >= utcnow() - RECENT)
        for partner, started, ended in conn.execute(finished):
            assert ended is not None  # the query asks for finished runs only
            durations.setdefault(partner, []).append((ended - started).total_seconds())
        yield _histogram("imaging_sync_sync_run_duration_seconds", "Sync run durations over the last 7 days.", "partner", durations, DURATION_BUCKETS)

    def _outbox(self, conn: Connection) -> Iterator[GaugeMetricFamily]:
        backlog = GaugeMetricFamily("imaging_sync_outbox_events", "Outbox events by status.", labels=["status"])
        counts = dict.fromkeys([s.value for s in OutboxEventStatus], 0)
        counts.update(dict(conn.execute(select(OutboxEvent.status, func.count()).group_by(OutboxEvent.status)).all()))
        for status, count in counts.items():
            backlog.add_metric([status], count)
        yield backlog
        oldest = conn.execute(select(func.min(OutboxEvent.created_at)).where(OutboxEvent.status.in_(OPEN_EVENT_STATUSES))).scalar_one()
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=dt.UTC)
        yield GaugeMetricFamily("imaging_sync_outbox_oldest_pending_age_seconds", "Age of the oldest undelivered outbox event (0 when none).",
                                value=0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds()))

    def _dicom(self, conn: Connection) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        operations = CounterMetricFamily("imaging_sync_dicom_operations", "C-FIND, C-MOVE and C-GET operations by outcome.", labels=["operation", "outcome"])
        stmt = select(AuditEntry.action, AuditEntry.outcome, func.count()).where(AuditEntry.channel == "dicom").group_by(AuditEntry.action, AuditEntry.outcome)
        for action, outcome, count in conn.execute(stmt):
            operations.add_metric([action, outcome], count)
        yield operations
        seconds: dict[str, list[float]] = {}
        recent = select(AuditEntry.action, AuditEntry.detail).where(AuditEntry.channel == "dicom", AuditEntry.at >= utcnow() - RECENT)
        for action, detail in conn.execute(recent):
            if isinstance(detail, dict) and isinstance(detail.get("seconds"), (int, float)):
                seconds.setdefault(action, []).append(float(detail["seconds"]))
        yield _histogram("imaging_sync_dicom_operation_duration_seconds", "DICOM operation durations over the last 7 days.", "operation", seconds, DICOM_BUCKETS)


def _histogram(name: str, documentation: str, label: str, samples: dict[str, list[float]], buckets: tuple[float, ...]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, observations in sorted(samples.items()):
        cumulative = [(str(bound), sum(1 for o in observations if o <= bound)) for bound in buckets]
        cumulative.append(("+Inf", len(observations)))
        family.add_metric([value], cumulative, sum_value=sum(observations))
    return family
