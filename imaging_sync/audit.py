"""The audit log writer: who touched which patient data, how, and with what outcome.

Entries are only ever inserted (the database refuses UPDATE and DELETE on the
table). Every channel writes through here: HTTP (the REST API), DICOM (C-FIND,
C-MOVE, C-GET) and the CLI for privileged actions.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import Connection, Engine, or_, select

from imaging_sync.db.models import AuditEntry, utcnow
from imaging_sync.ids import new_id

_table = AuditEntry.__table__
# One statement for every entry, its values bound per call: building ``insert().values(...)``
# anew (and keying it for the compiled cache) cost more than the INSERT itself under API load.
_INSERT = _table.insert()
# The four outcomes issue #3 names. Why a request failed is in ``status`` (HTTP or DICOM) and,
# for HTTP, ``detail.error`` (the error code: unauthenticated, forbidden, invalid, …).
OUTCOMES = ("success", "denied", "not_found", "error")


@dataclass(frozen=True)
class AuditEvent:
    channel: str  # http | dicom | cli
    actor: str  # API key prefix, calling AE title, or cli:<user>
    action: str  # search, read, issue_url, trigger_sync, c-find, c-move, …
    outcome: str  # one of OUTCOMES
    actor_key_id: uuid.UUID | None = None
    actor_role: str | None = None
    client_addr: str | None = None
    method: str | None = None
    path: str | None = None
    query: dict[str, Any] | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    status: int | None = None
    detail: dict[str, Any] | None = None
    at: dt.datetime = field(default_factory=utcnow)


_FIELDS = tuple(f.name for f in fields(AuditEvent))


def record(conn: Connection, event: AuditEvent) -> None:
    """Insert within the caller's transaction (the access and its record commit together)."""
    if event.outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {event.outcome!r}")
    values = {name: getattr(event, name) for name in _FIELDS}  # shallow: asdict's deep copy showed in profiles
    values["resource_id"] = None if event.resource_id is None else str(event.resource_id)[:128]
    values["actor"] = event.actor[:128]
    values["id"] = new_id()
    conn.execute(_INSERT, values)


def record_now(engine: Engine, event: AuditEvent) -> None:
    """Insert in a transaction of its own (for accesses that wrote nothing else)."""
    with engine.begin() as conn:
        record(conn, event)


def search(
    conn: Connection,
    *,
    actor: str | None = None,
    resource: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
    before_id: uuid.UUID | None = None,
) -> list[dict[str, Any]]:
    """Newest first; ``resource`` is ``type`` or ``type:id``; ``before_id`` continues a listing.

    ``actor`` is what the entry names as its actor (key prefix, AE title,
    ``cli:<user>``) or, when it is a UUID, the API key's id.
    """
    conditions = []
    if actor:
        key_id = _as_uuid(actor)
        conditions.append(_table.c.actor == actor if key_id is None else or_(_table.c.actor == actor, _table.c.actor_key_id == key_id))
    if resource:
        kind, _, ident = resource.partition(":")
        conditions.append(_table.c.resource_type == kind)
        if ident:
            conditions.append(_table.c.resource_id == ident)
    if since:
        conditions.append(_table.c.at >= since)
    if until:
        conditions.append(_table.c.at < until)
    if before_id:
        conditions.append(_table.c.id < before_id)  # UUIDv7: time-ordered
    stmt = select(_table).where(*conditions).order_by(_table.c.id.desc()).limit(limit)
    return [dict(row) for row in conn.execute(stmt).mappings()]


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
