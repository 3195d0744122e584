"""Operators see and re-queue the outbox through the API; viewers and auditors may not."""

from __future__ import annotations

import datetime as dt
import uuid

from api_fixtures import Keys
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select

from imaging_sync.core import Core
from imaging_sync.db.models import AuditEntry, OutboxEvent
from imaging_sync.ids import new_ids


def add_events(core: Core, statuses: list[str]) -> list[uuid.UUID]:
    now = dt.datetime.now(dt.UTC)
    ids = new_ids(len(statuses))
    rows = [
        {"id": i, "event_type": "study.updated", "aggregate_type": "study", "aggregate_id": uuid.uuid4(), "payload": {}, "status": s,
         "attempts": 10 if s == "failed" else 0, "next_attempt_at": now, "created_at": now - dt.timedelta(minutes=5),
         "last_error": "webhook answered HTTP 500" if s == "failed" else None, "processed_at": now if s == "failed" else None}
        for i, s in zip(ids, statuses, strict=True)
    ]
    with core.engine.begin() as conn:
        conn.execute(OutboxEvent.__table__.insert(), rows)
    return ids


def test_operator_reads_outbox_status_and_requeues_failed_events(client: TestClient[Litestar], keys: Keys, core: Core) -> None:
    ids = add_events(core, ["pending", "failed", "failed", "done"])
    status = client.get("/api/v1/outbox", headers=keys.headers("operator"))
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["counts"] == {"pending": 1, "processing": 0, "done": 1, "failed": 2}
    assert body["oldest_pending_age_seconds"] >= 299
    assert {f["last_error"] for f in body["recent_failures"]} == {"webhook answered HTTP 500"}

    one = client.post("/api/v1/outbox/retry-failed", json={"ids": [str(ids[1])]}, headers=keys.headers("operator"))
    assert one.status_code == 200 and one.json() == {"requeued": 1}
    rest = client.post("/api/v1/outbox/retry-failed", headers=keys.headers("operator"))
    assert rest.json() == {"requeued": 1}
    with core.engine.connect() as conn:
        assert conn.execute(select(OutboxEvent.status).where(OutboxEvent.id.in_(ids[1:3]))).scalars().all() == ["pending", "pending"]
        actions = conn.execute(select(AuditEntry.action, AuditEntry.outcome).where(AuditEntry.resource_type == "outbox")).all()
    assert ("outbox_retry_failed", "success") in actions and ("read", "success") in actions


def test_outbox_is_for_operators_only(client: TestClient[Litestar], keys: Keys) -> None:
    for role in ("viewer", "auditor"):
        assert client.get("/api/v1/outbox", headers=keys.headers(role)).status_code == 403
        assert client.post("/api/v1/outbox/retry-failed", headers=keys.headers(role)).status_code == 403
    assert client.get("/api/v1/outbox").status_code == 401


def test_bad_retry_body_names_the_field(client: TestClient[Litestar], keys: Keys) -> None:
    response = client.post("/api/v1/outbox/retry-failed", json={"ids": ["not-a-uuid"]}, headers=keys.headers("operator"))
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"].startswith("body.ids")
