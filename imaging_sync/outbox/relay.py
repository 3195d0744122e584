"""The outbox relay: claim open events, deliver them to the sinks, settle them.

Claiming is safe under concurrency: on PostgreSQL ``FOR UPDATE SKIP LOCKED``
lets relays take disjoint batches without waiting on each other; on SQLite
the claim runs in a ``BEGIN IMMEDIATE`` transaction, which serialises the
(single) writer. A claim is a lease: a relay killed after claiming leaves
events that any relay claims again once ``claimed_until`` has passed.

Order per aggregate: an event is claimable only when no earlier event of the
same study is still open, so one study's events are delivered in order even
across relays. Delivery is at-least-once; receivers de-duplicate on the
event id. A failed delivery backs off exponentially (with jitter) and ends
as ``failed``, error kept, after ``max_attempts``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Row, bindparam, func, select, text, update

from imaging_sync.config import OutboxConfig
from imaging_sync.db.models import OutboxEvent, table_of, utcnow
from imaging_sync.statuses import OPEN_EVENT_STATUSES, OutboxEventStatus

log = logging.getLogger(__name__)
_outbox = table_of(OutboxEvent)
OPEN = OPEN_EVENT_STATUSES
_PENDING, _PROCESSING = OutboxEventStatus.PENDING, OutboxEventStatus.PROCESSING


@dataclass(frozen=True)
class Event:
    """One claimed event, as sinks receive it."""

    id: uuid.UUID
    type: str
    aggregate_id: uuid.UUID
    payload: dict[str, Any]
    attempt: int

    def as_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "type": self.type, "aggregate_id": str(self.aggregate_id), "attempt": self.attempt, "payload": self.payload}


class Sink(Protocol):
    """A destination for events. ``deliver`` raises on failure (the whole batch is retried)."""

    name: str

    def deliver(self, events: Sequence[Event]) -> None: ...


@dataclass
class RelayResult:
    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0


# The statuses are written into the text, not bound: the partial index on open events
# (``status IN ('pending', 'processing')``, db/models.py) is only used when the planner sees them.
_CLAIM_PG = text(
    f"""
    WITH candidates AS (
        SELECT e.id FROM outbox_event e
        WHERE e.status IN ('{_PENDING}', '{_PROCESSING}')
          AND ((e.status = '{_PENDING}' AND e.next_attempt_at <= :now) OR (e.status = '{_PROCESSING}' AND e.claimed_until < :now))
          AND NOT EXISTS (
              SELECT 1 FROM outbox_event p
              WHERE p.aggregate_id = e.aggregate_id AND p.id < e.id AND p.status IN ('{_PENDING}', '{_PROCESSING}'))
        ORDER BY e.id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox_event o
    SET status = '{_PROCESSING}', claimed_by = :relay, claimed_until = :lease_end, attempts = o.attempts + 1
    FROM candidates c WHERE o.id = c.id
    RETURNING o.id, o.event_type, o.aggregate_id, o.payload, o.attempts
    """
)


class Relay:
    """One relay process (or thread); several may run against one database."""

    def __init__(self, engine: Engine, sinks: Sequence[Sink], config: OutboxConfig, *, relay_id: str | None = None) -> None:
        if not sinks:
            raise ValueError("a relay needs at least one sink")
        self.engine = engine
        self.sinks = list(sinks)
        self.config = config
        self.relay_id = relay_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def run_once(self) -> RelayResult:
        """Claim one batch, deliver it, settle it."""
        events = self.claim()
        result = RelayResult(claimed=len(events))
        if not events:
            return result
        try:
            for sink in self.sinks:
                sink.deliver(events)
        except Exception as exc:  # any sink failure: the batch goes back with backoff
            error = f"{sink.name}: {type(exc).__name__}: {exc}"[:2000]
            log.warning("outbox: delivery of %d events to %s failed: %s", len(events), sink.name, error)
            result.retried, result.failed = self._settle_failure(events, error)
            return result
        self._settle_success(events)
        result.delivered = len(events)
        return result

    def run_until_idle(self, max_batches: int = 1_000_000) -> RelayResult:
        """Relay until nothing is claimable now (for schedulers and tests)."""
        total = RelayResult()
        for _ in range(max_batches):
            batch = self.run_once()
            for name in ("claimed", "delivered", "retried", "failed"):
                setattr(total, name, getattr(total, name) + getattr(batch, name))
            if batch.claimed == 0:
                break
        return total

    def run_forever(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set, polling when idle."""
        while not stop.is_set():
            if self.run_once().claimed == 0:
                stop.wait(self.config.poll_interval)

    # -- claiming -------------------------------------------------------------

    def claim(self) -> list[Event]:
        now = utcnow()
        lease_end = now + dt.timedelta(seconds=self.config.lease_seconds)
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    rows = conn.execute(_CLAIM_PG, {"now": now, "limit": self.config.batch_size, "relay": self.relay_id, "lease_end": lease_end}).all()
                else:
                    rows = self._claim_sqlite(conn, now, lease_end)
        return sorted((Event(id=r[0], type=r[1], aggregate_id=r[2], payload=r[3], attempt=r[4]) for r in rows), key=lambda e: e.id)

    def _claim_sqlite(self, conn: Connection, now: dt.datetime, lease_end: dt.datetime) -> Sequence[Row[*tuple[Any, ...]]]:
        """The same claim as on PostgreSQL; BEGIN IMMEDIATE makes select-then-update atomic."""
        earlier = _outbox.alias("earlier")
        blocked = (
            select(earlier.c.id)
            .where(earlier.c.aggregate_id == _outbox.c.aggregate_id, earlier.c.id < _outbox.c.id, earlier.c.status.in_(OPEN))
            .exists()
        )
        claimable = (
            ((_outbox.c.status == _PENDING) & (_outbox.c.next_attempt_at <= now))
            | ((_outbox.c.status == _PROCESSING) & (_outbox.c.claimed_until < now))
        )
        ids = conn.execute(
            select(_outbox.c.id).where(_outbox.c.status.in_(OPEN), claimable, ~blocked).order_by(_outbox.c.id).limit(self.config.batch_size)
        ).scalars().all()
        if not ids:
            return []
        stmt = (
            update(_outbox)
            .where(_outbox.c.id.in_(ids))
            .values(status=_PROCESSING, claimed_by=self.relay_id, claimed_until=lease_end, attempts=_outbox.c.attempts + 1)
            .returning(_outbox.c.id, _outbox.c.event_type, _outbox.c.aggregate_id, _outbox.c.payload, _outbox.c.attempts)
        )
        return conn.execute(stmt).all()

    # -- settling -------------------------------------------------------------

    def _settle_success(self, events: Sequence[Event]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(_outbox)
                .where(_outbox.c.id.in_([e.id for e in events]), _outbox.c.claimed_by == self.relay_id)
                .values(status=OutboxEventStatus.DONE, processed_at=utcnow(), claimed_until=None, last_error=None)
            )

    def _settle_failure(self, events: Sequence[Event], error: str) -> tuple[int, int]:
        now = utcnow()
        retry, give_up = [], []
        for event in events:
            if event.attempt >= self.config.max_attempts:
                give_up.append({"_id": event.id})
            else:
                retry.append({"_id": event.id, "_next": now + dt.timedelta(seconds=self._backoff(event.attempt))})
        mine = (_outbox.c.id == bindparam("_id")) & (_outbox.c.claimed_by == self.relay_id)
        with self.engine.begin() as conn:
            if retry:
                conn.execute(update(_outbox).where(mine).values(status=_PENDING, next_attempt_at=bindparam("_next"), claimed_until=None, last_error=error), retry)
            if give_up:
                conn.execute(update(_outbox).where(mine).values(status=OutboxEventStatus.FAILED, processed_at=now, claimed_until=None, last_error=error), give_up)
        return len(retry), len(give_up)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.config.max_backoff, self.config.initial_backoff * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def retry_failed(engine: Engine, ids: Sequence[uuid.UUID] | None = None) -> int:
    """Put failed events back to pending (all, or the given ids); returns how many."""
    stmt = update(_outbox).where(_outbox.c.status == OutboxEventStatus.FAILED)
    if ids:
        stmt = stmt.where(_outbox.c.id.in_(list(ids)))
    with engine.begin() as conn:
        return conn.execute(stmt.values(status=_PENDING, attempts=0, next_attempt_at=utcnow(), processed_at=None)).rowcount


@dataclass(frozen=True)
class OutboxStatus:
    counts: dict[str, int]
    oldest_pending_at: dt.datetime | None
    recent_failures: list[dict[str, Any]]

    def oldest_pending_age(self, now: dt.datetime | None = None) -> dt.timedelta | None:
        if self.oldest_pending_at is None:
            return None
        return (now or utcnow()) - self.oldest_pending_at


def status(engine: Engine, recent: int = 10) -> OutboxStatus:
    """Counts by status, the oldest open event's creation time, the latest failures."""
    with engine.connect() as conn:
        counts = dict.fromkeys([s.value for s in OutboxEventStatus], 0)
        counts.update({s: n for s, n in conn.execute(select(_outbox.c.status, func.count()).group_by(_outbox.c.status))})
        oldest = conn.execute(select(func.min(_outbox.c.created_at)).where(_outbox.c.status.in_(OPEN))).scalar_one()
        failures = conn.execute(
            select(_outbox.c.id, _outbox.c.event_type, _outbox.c.aggregate_id, _outbox.c.attempts, _outbox.c.last_error, _outbox.c.processed_at)
            .where(_outbox.c.status == OutboxEventStatus.FAILED)
            .order_by(_outbox.c.processed_at.desc())
            .limit(recent)
        ).mappings().all()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=dt.UTC)
    return OutboxStatus(counts=counts, oldest_pending_at=oldest, recent_failures=[dict(f) for f in failures])


def prune_done(engine: Engine, older_than: dt.timedelta) -> int:
    """Delete delivered events older than ``older_than`` (failed ones stay until retried or looked at)."""
    cutoff = utcnow() - older_than
    with engine.begin() as conn:
        return conn.execute(_outbox.delete().where(_outbox.c.status == OutboxEventStatus.DONE, _outbox.c.processed_at < cutoff)).rowcount
