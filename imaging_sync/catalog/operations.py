"""What operators look at: partner sync state, sync runs, rejected items."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from imaging_sync.catalog.keyset import Key, Page, after_desc, split
from imaging_sync.db.models import EntityLink, PartnerState, RejectedItem, Study, SyncRun, table_of
from imaging_sync.errors import NotFoundError
from imaging_sync.statuses import RunStatus

_state = table_of(PartnerState)
_runs = table_of(SyncRun)
_rejected = table_of(RejectedItem)

# Plain strings, not the members: click.Choice would offer an enum's names (QUEUED) instead of its values.
RUN_STATUSES: tuple[str, ...] = tuple(status.value for status in RunStatus)


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: uuid.UUID
    partner: str
    status: str
    trigger: str
    full: bool
    started_at: dt.datetime
    finished_at: dt.datetime | None
    since: dt.datetime | None
    pages: int
    fetched: int
    created: int
    updated: int
    unchanged: int
    deleted: int
    rejected: int
    instances: int
    error: str | None
    error_kind: str | None
    host: str | None
    pid: int | None


@dataclass(frozen=True, slots=True)
class PartnerSyncState:
    partner: str
    bookmark: dt.datetime | None
    last_success_at: dt.datetime | None
    last_run: RunRecord | None


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    id: uuid.UUID
    run_id: uuid.UUID
    partner: str
    partner_item_id: str | None
    kind: str
    reason: str
    payload: str
    created_at: dt.datetime


def partner_states(conn: Connection, partners: Iterable[str]) -> dict[str, PartnerSyncState]:
    """Bookmark, last success and the most recent run (whatever its status) of each partner."""
    names = list(partners)
    states = {r.partner: r for r in conn.execute(select(_state).where(_state.c.partner.in_(names))).all()} if names else {}
    result = {}
    for name in names:
        # One indexed probe per partner (partner, started_at): a handful of partners.
        run = conn.execute(select(_runs).where(_runs.c.partner == name).order_by(_runs.c.started_at.desc(), _runs.c.id.desc()).limit(1)).first()
        state = states.get(name)
        result[name] = PartnerSyncState(
            partner=name,
            bookmark=state.bookmark if state else None,
            last_success_at=state.last_success_at if state else None,
            last_run=_run(run) if run else None,
        )
    return result


def list_runs(conn: Connection, *, partner: str | None = None, status: str | None = None, limit: int, after: Key | None = None) -> Page[RunRecord]:
    """Runs newest first; ``after`` is ``(started_at, id)``."""
    conditions = []
    if partner is not None:
        conditions.append(_runs.c.partner == partner)
    if status is not None:
        conditions.append(_runs.c.status == status)
    seek = after_desc(_runs.c.started_at, _runs.c.id, after)
    if seek is not None:
        conditions.append(seek)
    stmt = select(_runs).where(*conditions).order_by(_runs.c.started_at.desc(), _runs.c.id.desc()).limit(limit + 1)
    rows, next_key = split(conn.execute(stmt).all(), limit, lambda r: (r.started_at, r.id))
    return Page(items=[_run(r) for r in rows], next_key=next_key)


def get_run(conn: Connection, run_id: uuid.UUID) -> tuple[RunRecord, int]:
    """A run and how many rejected items it recorded; NotFoundError otherwise."""
    row = conn.execute(select(_runs).where(_runs.c.id == run_id)).first()
    if row is None:
        raise NotFoundError(f"no sync run {run_id}")
    rejected = conn.execute(select(func.count()).select_from(_rejected).where(_rejected.c.run_id == run_id)).scalar_one()
    return _run(row), rejected


def list_rejected(conn: Connection, *, partner: str | None = None, run_id: uuid.UUID | None = None, limit: int, after: Key | None = None) -> Page[RejectedRecord]:
    """Rejected items newest first, payload included; ``after`` is ``(created_at, id)``."""
    conditions = []
    if partner is not None:
        conditions.append(_rejected.c.partner == partner)
    if run_id is not None:
        conditions.append(_rejected.c.run_id == run_id)
    seek = after_desc(_rejected.c.created_at, _rejected.c.id, after)
    if seek is not None:
        conditions.append(seek)
    stmt = select(_rejected).where(*conditions).order_by(_rejected.c.created_at.desc(), _rejected.c.id.desc()).limit(limit + 1)
    rows, next_key = split(conn.execute(stmt).all(), limit, lambda r: (r.created_at, r.id))
    return Page(items=[RejectedRecord(**r._asdict()) for r in rows], next_key=next_key)


def indexed_studies(conn: Connection, items: Iterable[tuple[str, str | None]]) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """(subject ids, study ids) of the studies the index holds under these (partner, partner study id) pairs.

    For the audit entry of whoever reads rejected items' payloads: a payload
    of a study the index already has (an update that broke the contract)
    shows that patient, so the entry names them and ``audit search
    --subject`` finds it. Items without an id, or not in the index, name
    nobody: their patient is in the payload alone.
    """
    links, studies = table_of(EntityLink), table_of(Study)
    wanted: dict[str, set[str]] = {}
    for partner, partner_id in items:
        if partner_id:
            wanted.setdefault(partner, set()).add(partner_id)
    subject_ids: set[uuid.UUID] = set()
    study_ids: set[uuid.UUID] = set()
    for partner, ids in wanted.items():
        stmt = (
            select(studies.c.subject_id, studies.c.id).join(links, links.c.entity_id == studies.c.id)
            .where(links.c.partner == partner, links.c.entity_type == "study", links.c.partner_entity_id.in_(sorted(ids)))
        )
        for subject_id, study_id in conn.execute(stmt):
            subject_ids.add(subject_id)
            study_ids.add(study_id)
    return sorted(subject_ids), sorted(study_ids)


def _run(row: Any) -> RunRecord:
    return RunRecord(**{name: getattr(row, name) for name in RunRecord.__dataclass_fields__})
