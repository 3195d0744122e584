"""The audit log, for the ``auditor`` role: who touched which patient data, and what was refused.

``subject=`` and ``study=`` answer "who has seen patient X": the entries
whose answer disclosed that subject or study, over every channel (a REST
search, a C-FIND, a C-MOVE, the CLI). Each entry carries its ``completion``
when it was written in two steps (``outcome: started``, a DICOM operation
that streamed its answer). Reading the log is itself recorded (action
``read_audit``). ``/audit/refusals`` lists the unauthenticated refusals,
counted per client address and minute (:mod:`imaging_sync.audit_refusals`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from api.auditing import audited, recorded_in_thread
from api.db import RequestConnection
from api.errors import PROTECTED, documented_errors
from api.pagination import decode_cursor, encode_cursor, page_size
from api.params import Cursor, Limit, instant, text
from api.security import require
from api.services import Services
from imaging_sync import audit, audit_refusals
from imaging_sync.errors import ValidationError

_LISTING = "audit"
_REFUSALS = "audit-refusals"


class AuditCompletion(msgspec.Struct, kw_only=True):
    at: dt.datetime
    outcome: Annotated[str, msgspec.Meta(description="success | denied | not_found | error")]
    status: Annotated[int | None, msgspec.Meta(description="The final DIMSE (or HTTP) status.")]
    detail: dict[str, Any] | None


class AuditEntry(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    at: dt.datetime
    channel: Annotated[str, msgspec.Meta(description="http | dicom | cli")]
    actor: Annotated[str, msgspec.Meta(description="API key prefix (or `anonymous`), AE title, or cli:<account>@<host> (the OS account of the real uid).")]
    actor_key_id: uuid.UUID | None
    actor_role: str | None
    client_addr: str | None
    action: str
    method: str | None
    path: str | None
    query: dict[str, Any] | None
    resource_type: str | None
    resource_id: str | None
    outcome: Annotated[
        str,
        msgspec.Meta(
            description=(
                "success | denied (no key, a refused key or a role's refusal) | not_found | error (`status` and `detail.error` say which) | "
                "started: written before an operation streamed patient data (a C-FIND, C-MOVE or C-GET); `completion` says how it ended"
            )
        ),
    ]
    status: int | None
    detail: dict[str, Any] | None
    completion: Annotated[
        AuditCompletion | None,
        msgspec.Meta(description="How a `started` entry ended; null for other entries, and for a started one whose operation is still running or whose process died."),
    ]


class AuditPage(msgspec.Struct, kw_only=True):
    items: list[AuditEntry]
    next_cursor: Annotated[str | None, msgspec.Meta(description="Pass as `cursor` for the next page; null on the last page.")]


class AuditRefusal(msgspec.Struct, kw_only=True):
    minute: Annotated[dt.datetime, msgspec.Meta(description="The minute counted (UTC, seconds zeroed).")]
    channel: Annotated[str, msgspec.Meta(description="http | dicom")]
    client_addr: Annotated[str, msgspec.Meta(description="The caller's address (empty when unknown).")]
    first_at: dt.datetime
    last_at: dt.datetime
    count: Annotated[int, msgspec.Meta(description="Unauthenticated refusals of this address in this minute.")]
    sample: Annotated[
        list[str],
        msgspec.Meta(description="Up to 8 distinct things tried: `METHOD /path (reason isk_<claimed prefix>)`, no query string; or `CALLING -> CALLED (reason)`."),
    ]


class AuditRefusalPage(msgspec.Struct, kw_only=True):
    items: list[AuditRefusal]
    next_cursor: Annotated[str | None, msgspec.Meta(description="Pass as `cursor` for the next page; null on the last page.")]


class AuditController(Controller):
    path = "/audit"
    tags = ["audit"]
    guards = [require("audit_log")]

    @get("/", opt=audited("read_audit", "audit_log"), responses=documented_errors(*PROTECTED), sync_to_thread=True, summary="Search the audit log, newest first; who has seen a patient or a study")
    @recorded_in_thread
    def search(
        self,
        services: NamedDependency[Services],
        conn: RequestConnection,
        actor: Annotated[str | None, QueryParameter(description="API key prefix or key id, AE title or cli:<account>@<host>, exact.", max_length=128)] = None,
        resource: Annotated[str | None, QueryParameter(description="`type` or `type:id`, e.g. `study` or `instance:0190…`.", max_length=170)] = None,
        subject: Annotated[
            uuid.UUID | None,
            QueryParameter(description="A subject's id: the entries whose answer disclosed that patient, on any channel (who has seen patient X)."),
        ] = None,
        study: Annotated[uuid.UUID | None, QueryParameter(description="A study's id: the entries whose answer disclosed that study, on any channel.")] = None,
        from_: Annotated[str | None, QueryParameter(name="from", description="On or after this ISO 8601 date or date-time (UTC unless an offset is given).", max_length=40)] = None,
        to: Annotated[str | None, QueryParameter(description="On or before this ISO 8601 date (the whole day, UTC), or before this date-time.", max_length=40)] = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> AuditPage:
        since, until = instant(from_, "from"), instant(to, "to", day_end=True)
        if since is not None and until is not None and until <= since:
            raise ValidationError("to", "must be after from")
        if resource is not None and not resource.partition(":")[0]:
            raise ValidationError("resource", "must be `type` or `type:id`")
        size = page_size(limit, services.settings.api)
        after = decode_cursor(cursor, _LISTING, (uuid.UUID,))
        rows = audit.search(
            conn, actor=text(actor, "actor", 128), resource=text(resource, "resource", 170), subject=subject, study=study, since=since, until=until,
            limit=size + 1, before_id=after[0] if after else None,
        )
        more = len(rows) > size
        rows = rows[:size]
        next_key = (rows[-1]["id"],) if more and rows else None
        return AuditPage(items=msgspec.convert(rows, list[AuditEntry]), next_cursor=encode_cursor(_LISTING, next_key))

    @get(
        "/refusals",
        opt=audited("read_audit", "audit_refusal"),
        responses=documented_errors(*PROTECTED),
        sync_to_thread=True,
        summary="Unauthenticated refusals, counted per client address and minute, newest first",
    )
    @recorded_in_thread
    def refusals(
        self,
        services: NamedDependency[Services],
        conn: RequestConnection,
        client_addr: Annotated[str | None, QueryParameter(description="Only this client address, exact.", max_length=64)] = None,
        channel: Annotated[str | None, QueryParameter(description="`http` (401s) or `dicom` (associations of unknown calling AEs).", max_length=8)] = None,
        from_: Annotated[str | None, QueryParameter(name="from", description="Minutes on or after this ISO 8601 date or date-time (UTC unless an offset is given).", max_length=40)] = None,
        to: Annotated[str | None, QueryParameter(description="Minutes on or before this ISO 8601 date (the whole day, UTC), or before this date-time.", max_length=40)] = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> AuditRefusalPage:
        """Requests without usable credentials (HTTP 401) and associations of DICOM peers we do not know are not audit
        entries each: each client address has one row a minute with the count, the first and last time and a sample of
        what was tried. Refusals of a caller who authenticated (403, DIMSE 0124) are entries of `GET /audit`."""
        since, until = instant(from_, "from"), instant(to, "to", day_end=True)
        if since is not None and until is not None and until <= since:
            raise ValidationError("to", "must be after from")
        if channel is not None and channel not in audit_refusals.CHANNELS:
            raise ValidationError("channel", f"must be one of {', '.join(audit_refusals.CHANNELS)}")
        size = page_size(limit, services.settings.api)
        after = decode_cursor(cursor, _REFUSALS, (dt.datetime, str, str))
        rows = audit_refusals.search(
            conn, since=since, until=until, client_addr=text(client_addr, "client_addr", 64), channel=channel, limit=size + 1,
            before=(after[0], after[1], after[2]) if after else None,
        )
        more = len(rows) > size
        rows = rows[:size]
        next_key = (rows[-1]["minute"], rows[-1]["channel"], rows[-1]["client_addr"]) if more and rows else None
        return AuditRefusalPage(items=msgspec.convert(rows, list[AuditRefusal]), next_cursor=encode_cursor(_REFUSALS, next_key))
