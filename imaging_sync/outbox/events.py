"""Writing outbox events, always inside the transaction of the change they describe.

The payload is compact and carries no patient data: receivers get ids and
UIDs and read what they need from the API. ``id`` is the event's stable
identity: delivery is at-least-once, receivers de-duplicate on it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping

from sqlalchemy import Connection, select

from imaging_sync.db import bulk
from imaging_sync.db.models import OutboxEvent, Study, table_of
from imaging_sync.ids import new_ids
from imaging_sync.statuses import OutboxEventStatus

# Every event type the page writer emits (sync/apply.py decides which), with when; docs/sync.md shows this table.
EVENT_MEANINGS: dict[str, str] = {
    "study.created": "A page wrote a study the index did not have, or had soft-deleted (it came back).",
    "study.updated": "A page changed what the index holds for a study (its fields, subject, series or instances), "
                     "or one partner dropped a study that another partner still has.",
    "study.deleted": "A study that no partner lists any more was soft-deleted.",
}
EVENT_TYPES = tuple(EVENT_MEANINGS)
_outbox = table_of(OutboxEvent)
_study = table_of(Study)


def add_study_events(conn: Connection, partner: str, events: Mapping[uuid.UUID, str], now: dt.datetime) -> None:
    """One event per study id (``study.created`` / ``updated`` / ``deleted``), caused by ``partner``."""
    if not events:
        return
    uids: dict[uuid.UUID, str] = {}
    study_ids = sorted(events)
    for chunk in bulk.chunks(study_ids):
        uids.update((sid, uid) for sid, uid in conn.execute(select(_study.c.id, _study.c.study_instance_uid).where(_study.c.id.in_(chunk))))
    rows = []
    for (study_id, event_type), event_id in zip(sorted(events.items()), new_ids(len(events)), strict=True):
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        payload = {
            "event_id": str(event_id),
            "type": event_type,
            "study_id": str(study_id),
            "study_instance_uid": uids.get(study_id),
            "partner": partner,
            "occurred_at": now.isoformat(),
        }
        rows.append(
            {"id": event_id, "event_type": event_type, "aggregate_type": "study", "aggregate_id": study_id, "payload": payload,
             "status": OutboxEventStatus.PENDING, "attempts": 0, "next_attempt_at": now, "created_at": now}
        )
    bulk.insert_rows(conn, _outbox, rows)
