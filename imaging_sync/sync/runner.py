"""One sync run of one partner: lock, pages, bookmark, the run record.

Each page is one transaction that also advances the bookmark and the run's
counts, so a process killed anywhere resumes on the next run from the last
committed page: nothing lost (the bookmark never passes uncommitted data) and
nothing doubled (upserts are idempotent, unchanged items cost no write).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from imaging_sync.config import PartnerConfig, Settings
from imaging_sync.db.models import PartnerState, SyncRun, table_of, utcnow
from imaging_sync.dto import Page
from imaging_sync.errors import DatabaseError, ImagingSyncError, NotFoundError, PageTokenExpiredError, PartnerError, QueueUnavailableError, SyncLockedError
from imaging_sync.ids import new_id
from imaging_sync.logs import run_context
from imaging_sync.partners.factory import build_source
from imaging_sync.partners.source import PartnerSource
from imaging_sync.statuses import RunStatus
from imaging_sync.sync.apply import PageOutcome, PageWriter
from imaging_sync.sync.lock import partner_lock

log = logging.getLogger(__name__)

# A run recorded 'queued' whose task no worker took within this is abandoned by the partner's next run.
QUEUED_RUN_EXPIRY = dt.timedelta(hours=1)
_runs = table_of(SyncRun)
_state = table_of(PartnerState)
COUNTERS = ("pages", "fetched", "created", "updated", "unchanged", "deleted", "rejected", "instances")
# PostgreSQL SQLSTATEs worth retrying the page for: deadlock, serialization failure.
_RETRYABLE_SQLSTATE = {"40P01", "40001"}


@dataclass
class RunResult:
    run_id: uuid.UUID
    partner: str
    status: RunStatus  # while working RUNNING; in the end SUCCEEDED, FAILED or SKIPPED
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    seconds: float = 0.0
    error: str | None = None
    error_kind: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.SUCCEEDED

    def summary(self) -> str:
        """One line a person can act on (and the error on a second line)."""
        c = self.counts
        rate = c["instances"] / self.seconds if self.seconds > 0 else 0.0
        line = (
            f"{self.partner}: {self.status} in {self.seconds:.1f}s — {c['fetched']} studies fetched "
            f"({c['created']} created, {c['updated']} updated, {c['unchanged']} unchanged, {c['deleted']} deleted, "
            f"{c['rejected']} rejected), {c['instances']} instances ({rate:,.0f}/s), {c['pages']} pages; run {self.run_id}"
        )
        return line + (f"\n  error ({self.error_kind}): {self.error}" if self.error else "")


ProgressCallback = Callable[[RunResult], None]


class SyncRunner:
    """Runs partner syncs against one database; built once per process."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        source_factory: Callable[[PartnerConfig], PartnerSource] = build_source,
        after_run: Sequence[Callable[[RunResult], None]] = (),
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.source_factory = source_factory
        # Told about every finished run (alerts); an observer failing never fails the run.
        self.after_run = list(after_run)

    def sync(
        self,
        partner_name: str,
        *,
        full: bool = False,
        trigger: str = "cli",
        progress: ProgressCallback | None = None,
        on_start: Callable[[uuid.UUID], None] | None = None,
        run_id: uuid.UUID | None = None,
    ) -> RunResult:
        """Sync one partner; never raises for partner or data failures (the result says).

        ``on_start`` is told the run id as soon as the run is recorded (a caller
        answering "accepted, see run X" before the work is done). ``run_id``: a
        run :meth:`record_queued_run` recorded, carried on with this work.
        """

        def pull(config: PartnerConfig, source: PartnerSource, result: RunResult, started: float) -> None:
            self._pull(config, source, result, full, progress, started)

        return self._run(partner_name, trigger, full, pull, on_start, run_id)

    def refresh_study(
        self,
        partner_name: str,
        partner_study_id: str,
        *,
        trigger: str = "cli",
        on_start: Callable[[uuid.UUID], None] | None = None,
        run_id: uuid.UUID | None = None,
    ) -> RunResult:
        """Re-read one study from the partner now (``GET /v1/studies/{id}``); the bookmark stays."""

        def refresh(config: PartnerConfig, source: PartnerSource, result: RunResult, started: float) -> None:
            item = source.get_study(partner_study_id)
            if item is None:
                raise NotFoundError(f"partner {partner_name!r} has no study {partner_study_id!r}")
            writer = PageWriter(config.name, self.settings.priorities(), events=self.settings.outbox.has_sink)
            self._commit_page(writer, config.name, Page(items=[item], next_page_token=None), result, advance_bookmark=False)

        return self._run(partner_name, trigger, False, refresh, on_start, run_id)

    def record_queued_run(self, partner_name: str, *, trigger: str, full: bool) -> uuid.UUID:
        """A run in status ``queued`` for work handed to the job queue; the worker carries it on (``run_id=``).

        So a caller can answer "accepted, see run X" before any worker has the task.
        """
        self.settings.partner(partner_name)  # an unknown partner fails here, not on the worker
        return self._insert_run(partner_name, RunStatus.QUEUED, trigger, full)

    def fail_queued_run(self, run_id: uuid.UUID, error: str) -> None:
        """The queued run's task never reached the queue: say so in its record."""
        with self.engine.begin() as conn:
            conn.execute(
                update(_runs)
                .where(_runs.c.id == run_id, _runs.c.status == RunStatus.QUEUED)
                .values(status=RunStatus.FAILED, finished_at=utcnow(), error=error, error_kind=QueueUnavailableError.kind)
            )

    def _run(
        self,
        partner_name: str,
        trigger: str,
        full: bool,
        work: Callable[[PartnerConfig, PartnerSource, RunResult, float], None],
        on_start: Callable[[uuid.UUID], None] | None = None,
        queued: uuid.UUID | None = None,
    ) -> RunResult:
        """A recorded run under the partner lock; every outcome ends in the run record."""
        config = self.settings.partner(partner_name)
        run_id = self._start_run(partner_name, trigger, full, queued)
        if on_start is not None:
            on_start(run_id)
        result = RunResult(run_id=run_id, partner=partner_name, status=RunStatus.RUNNING)
        started = time.monotonic()
        with run_context(run_id, partner_name):
            try:
                with partner_lock(self.engine, partner_name):
                    self._abandon_stale_runs(partner_name, run_id)
                    source = self.source_factory(config)
                    try:
                        work(config, source, result, started)
                    finally:
                        source.close()
                result.status = RunStatus.SUCCEEDED
            except SyncLockedError as exc:
                result.status, result.error, result.error_kind = RunStatus.SKIPPED, str(exc), exc.kind
            except ImagingSyncError as exc:
                result.status, result.error, result.error_kind = RunStatus.FAILED, str(exc), exc.kind
            except SQLAlchemyError as exc:
                result.status, result.error, result.error_kind = RunStatus.FAILED, f"database error: {type(exc).__name__}: {exc.orig if isinstance(exc, DBAPIError) else exc}", DatabaseError.kind
            except BaseException as exc:  # a bug or an interrupt: record it, then let it surface
                what = "internal error" if isinstance(exc, Exception) else "interrupted"
                result.status, result.error, result.error_kind = RunStatus.FAILED, f"{what}: {type(exc).__name__}: {exc}", ImagingSyncError.kind
                result.seconds = time.monotonic() - started
                self._finish_run(result)
                raise
            result.seconds = time.monotonic() - started
            self._finish_run(result)
            self._notify(result)
            level = logging.INFO if result.status == RunStatus.SUCCEEDED else logging.WARNING
            log.log(level, "sync %s %s: %s", partner_name, result.status, _counts_text(result.counts), extra={"error": result.error, "error_kind": result.error_kind})
        return result

    def _notify(self, result: RunResult) -> None:
        for observer in self.after_run:
            try:
                observer(result)
            except Exception:  # an alerting problem must not turn a good run into a failed one
                log.exception("run observer %r failed", observer)

    def sync_all(self, *, full: bool = False, trigger: str = "cli", progress: ProgressCallback | None = None) -> list[RunResult]:
        """Every enabled partner, highest priority first; one failing does not stop the others."""
        return [self.sync(p.name, full=full, trigger=trigger, progress=progress) for p in self.settings.enabled_partners()]

    # -- the pull loop ----------------------------------------------------------

    def _pull(self, config: PartnerConfig, source: PartnerSource, result: RunResult, full: bool, progress: ProgressCallback | None, started: float) -> None:
        writer = PageWriter(config.name, self.settings.priorities(), events=self.settings.outbox.has_sink)
        bookmark = None if full else self._bookmark(config.name)
        since = None if bookmark is None else bookmark - dt.timedelta(seconds=config.overlap_seconds)
        self._set_run_since(result.run_id, since)
        analyzer = _Analyzer(self.engine)
        restarts = 0
        # The largest updated_at this run has committed: the listing is ordered,
        # so after a 410 everything before it is done (inclusive restart).
        reached: dt.datetime | None = None
        while True:
            try:
                for page in source.list_changed(since):
                    outcome = self._commit_page(writer, config.name, page, result)
                    analyzer.after_page(outcome.instances_written)
                    if page.max_updated_at is not None and (reached is None or page.max_updated_at > reached):
                        reached = page.max_updated_at
                    result.seconds = time.monotonic() - started
                    if progress is not None:
                        progress(result)
                return
            except PageTokenExpiredError:
                restarts += 1
                if restarts > self.settings.sync.max_token_restarts:
                    raise PartnerError(config.name, f"page tokens kept expiring ({restarts} restarts); giving up") from None
                since = reached if reached is not None else since
                log.warning("partner %s: page token expired, restarting the listing from what this run committed", config.name)

    def _commit_page(self, writer: PageWriter, partner: str, page: Page, result: RunResult, *, advance_bookmark: bool = True) -> PageOutcome:
        attempts = self.settings.sync.max_page_attempts
        for attempt in range(1, attempts + 1):
            try:
                with self.engine.connect() as conn:
                    conn = conn.execution_options(sqlite_immediate=True)
                    with conn.begin():
                        now = utcnow()
                        outcome = writer.apply(conn, page.items, result.run_id, now)
                        self._advance_bookmark(conn, partner, page.max_updated_at if advance_bookmark else None, now)
                        self._add_counts(conn, result.run_id, outcome)
                break
            except DBAPIError as exc:
                if attempt == attempts or getattr(exc.orig, "sqlstate", None) not in _RETRYABLE_SQLSTATE:
                    raise
                log.warning("partner %s: page transaction conflicted (%s), retrying", partner, getattr(exc.orig, "sqlstate", "?"))
        for name in COUNTERS:
            result.counts[name] += 1 if name == "pages" else getattr(outcome, name)
        return outcome

    # -- run records and state ----------------------------------------------------

    def _start_run(self, partner: str, trigger: str, full: bool, queued: uuid.UUID | None = None) -> uuid.UUID:
        """Record a running run: the queued one when it is still queued, else a new one.

        A task that comes again (a retry after a failure, a redelivery after a
        worker died) finds its run no longer queued and records a run of its
        own, so each attempt keeps its outcome.
        """
        if queued is not None:
            with self.engine.begin() as conn:
                taken = conn.execute(
                    update(_runs)
                    .where(_runs.c.id == queued, _runs.c.partner == partner, _runs.c.status == RunStatus.QUEUED)
                    .values(status=RunStatus.RUNNING, started_at=utcnow(), host=socket.gethostname()[:255], pid=os.getpid())
                ).rowcount
            if taken == 1:
                return queued
            log.info("run %s is no longer queued (a retry or a redelivery): recording a new run", queued)
        return self._insert_run(partner, RunStatus.RUNNING, trigger, full)

    def _insert_run(self, partner: str, status: RunStatus, trigger: str, full: bool) -> uuid.UUID:
        run_id = new_id()
        with self.engine.begin() as conn:
            conn.execute(
                _runs.insert().values(
                    id=run_id, partner=partner, status=status, trigger=trigger, full=full, started_at=utcnow(),
                    host=socket.gethostname()[:255], pid=os.getpid(), **dict.fromkeys(COUNTERS, 0),
                )
            )
        return run_id

    def _set_run_since(self, run_id: uuid.UUID, since: dt.datetime | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(_runs).where(_runs.c.id == run_id).values(since=since))

    def _abandon_stale_runs(self, partner: str, current: uuid.UUID) -> None:
        """Runs still 'running' while we hold the lock died without finishing; long-'queued' ones lost their task.

        A queued task normally reaches a worker within seconds (one that finds the
        partner busy ends its run 'skipped'). After ``QUEUED_RUN_EXPIRY`` the task
        was lost or the workers were down; if it still comes, it records a new run.
        """
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                update(_runs)
                .where(_runs.c.partner == partner, _runs.c.status == RunStatus.RUNNING, _runs.c.id != current)
                .values(status=RunStatus.ABANDONED, finished_at=now, error="process ended before the run finished (killed or crashed)")
            )
            conn.execute(
                update(_runs)
                .where(_runs.c.partner == partner, _runs.c.status == RunStatus.QUEUED, _runs.c.started_at < now - QUEUED_RUN_EXPIRY)
                .values(status=RunStatus.ABANDONED, finished_at=now, error="no worker took its task (lost, or the workers were down)")
            )

    def _finish_run(self, result: RunResult) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                update(_runs).where(_runs.c.id == result.run_id).values(status=result.status, finished_at=now, error=result.error, error_kind=result.error_kind)
            )
            if result.status == RunStatus.SKIPPED:
                return
            self._ensure_state(conn, result.partner, now)
            values: dict[str, object] = {"last_run_id": result.run_id, "updated_at": now}
            if result.ok:
                values["last_success_at"] = now
            conn.execute(update(_state).where(_state.c.partner == result.partner).values(**values))

    def _bookmark(self, partner: str) -> dt.datetime | None:
        with self.engine.connect() as conn:
            return conn.execute(select(_state.c.bookmark).where(_state.c.partner == partner)).scalar_one_or_none()

    def _advance_bookmark(self, conn: Connection, partner: str, page_max: dt.datetime | None, now: dt.datetime) -> None:
        self._ensure_state(conn, partner, now)
        if page_max is None:
            return
        current = conn.execute(select(_state.c.bookmark).where(_state.c.partner == partner)).scalar_one()
        if current is None or page_max > current:
            conn.execute(update(_state).where(_state.c.partner == partner).values(bookmark=page_max, updated_at=now))

    @staticmethod
    def _ensure_state(conn: Connection, partner: str, now: dt.datetime) -> None:
        dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(dialect_insert(_state).values(partner=partner, updated_at=now).on_conflict_do_nothing(index_elements=["partner"]))

    @staticmethod
    def _add_counts(conn: Connection, run_id: uuid.UUID, outcome: PageOutcome) -> None:
        increments = {name: _runs.c[name] + (1 if name == "pages" else getattr(outcome, name)) for name in COUNTERS}
        conn.execute(update(_runs).where(_runs.c.id == run_id).values(**increments))


class _Analyzer:
    """Refresh PostgreSQL's planner statistics while a bulk load grows the tables.

    The page lookups (``= ANY(array)`` on the link and location indexes) are
    only planned as index lookups once the tables have statistics; a first
    load of millions of rows must not wait for autovacuum (which may run late,
    or be off). Analyzing at each doubling of what this run wrote costs a few
    sampled scans in total.
    """

    TABLES = "subject, study, series, instance, entity_link, instance_location"

    def __init__(self, engine: Engine, first_at: int = 10_000) -> None:
        self.engine = engine
        self.written = 0
        self.next_at = first_at

    def after_page(self, instances_written: int) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        self.written += instances_written
        if self.written < self.next_at:
            return
        self.next_at = self.written * 2
        with self.engine.connect() as conn:
            conn.exec_driver_sql(f"ANALYZE {self.TABLES}")
            conn.commit()


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}={value}" for name, value in counts.items())
