"""Response and request bodies of the operator endpoints."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

import msgspec

NextCursor = Annotated[str | None, msgspec.Meta(description="Pass as `cursor` for the next page; null on the last page.")]


class SyncRun(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    partner: str
    status: Annotated[str, msgspec.Meta(description="queued (waiting for a worker) | running | succeeded | failed | skipped | abandoned")]
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


class SyncRunDetail(msgspec.Struct, kw_only=True):
    run: SyncRun
    rejected_items: Annotated[int, msgspec.Meta(description="Rejected items recorded by this run (GET /rejected-items?run=…).")]


class SyncRunPage(msgspec.Struct, kw_only=True):
    items: list[SyncRun]
    next_cursor: NextCursor


class PartnerState(msgspec.Struct, kw_only=True):
    bookmark: Annotated[dt.datetime | None, msgspec.Meta(description="Largest partner updated_at fully committed.")]
    last_success_at: dt.datetime | None
    last_run: SyncRun | None


class Partner(msgspec.Struct, kw_only=True):
    """A partner's configuration without its secrets (nor where they are kept), and its sync state."""

    name: str
    adapter: str
    enabled: bool
    base_url: str
    priority: int
    default_bucket: str | None
    allowed_buckets: list[str]
    page_size: int
    overlap_seconds: float
    state: PartnerState


class RejectedItem(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    run_id: uuid.UUID
    partner: str
    partner_item_id: str | None
    kind: str
    reason: str
    payload: Annotated[str, msgspec.Meta(description="The item as the partner sent it (JSON text; contains patient data).")]
    created_at: dt.datetime


class RejectedItemPage(msgspec.Struct, kw_only=True):
    items: list[RejectedItem]
    next_cursor: NextCursor


class SyncRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    full: Annotated[bool, msgspec.Meta(description="Ignore the bookmark and re-read everything.")] = False
    study_id: Annotated[
        str,
        msgspec.Meta(
            description="Refresh only this study (the partner's id: 1 to 128 characters, not `.` or `..`, no control characters, no surrounding whitespace) now; not with full.",
            min_length=1,
            max_length=128,
        ),
    ] | None = None


class SyncStarted(msgspec.Struct, kw_only=True):
    run_id: uuid.UUID
    partner: str
    status_url: Annotated[str, msgspec.Meta(description="Where the run's progress and outcome are.")]
