"""The outbox for operators: ``GET /outbox`` and ``POST /outbox/retry-failed``."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import Body, QueryParameter

from api.auditing import audited, note
from api.errors import PROTECTED, documented_errors
from api.security import require
from api.services import Services
from imaging_sync.outbox import relay


class OutboxFailure(msgspec.Struct):
    id: uuid.UUID
    event_type: str
    aggregate_id: uuid.UUID
    attempts: int
    last_error: str | None
    processed_at: dt.datetime | None


class OutboxStatus(msgspec.Struct):
    counts: dict[str, int]
    oldest_pending_at: dt.datetime | None
    oldest_pending_age_seconds: float | None
    recent_failures: list[OutboxFailure]


class RetryFailedRequest(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[uuid.UUID] | None = None


class RetryFailedResult(msgspec.Struct):
    requeued: int


class OutboxController(Controller):
    tags = ["operations"]
    guards = [require("operations")]

    @get("/outbox", opt=audited("read", "outbox"), responses=documented_errors(*PROTECTED), sync_to_thread=True, summary="Outbox: counts by status, oldest undelivered event, recent failures")
    def status(
        self,
        services: NamedDependency[Services],
        recent: Annotated[int, QueryParameter(description="How many recent failures to list.", ge=0, le=1000)] = 10,
    ) -> OutboxStatus:
        report = relay.status(services.engine, recent=recent)
        age = report.oldest_pending_age()
        return OutboxStatus(
            counts=report.counts,
            oldest_pending_at=report.oldest_pending_at,
            oldest_pending_age_seconds=None if age is None else round(age.total_seconds(), 3),
            recent_failures=[msgspec.convert(f, OutboxFailure) for f in report.recent_failures],
        )

    @post("/outbox/retry-failed", opt=audited("outbox_retry_failed", "outbox"), responses=documented_errors(*PROTECTED), sync_to_thread=True, status_code=200, summary="Queue failed events again")
    def retry_failed(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        data: Annotated[RetryFailedRequest | None, Body(description="Optional: only these event ids (default: every failed event).")] = None,
    ) -> RetryFailedResult:
        ids = (data.ids if data else None) or None
        count = relay.retry_failed(services.engine, ids)
        note(request, requeued=count, ids=[str(i) for i in ids] if ids else None)
        return RetryFailedResult(requeued=count)
