"""Partners, sync runs, rejected items, and starting a sync: for the ``operator`` role."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import Body, PathParameter, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from api.auditing import audited, note, recorded_in_thread
from api.db import RequestConnection
from api.errors import PROTECTED, documented_errors
from api.operations.schemas import Partner, PartnerState, RejectedItem, RejectedItemPage, SyncRequest, SyncRun, SyncRunDetail, SyncRunPage, SyncStarted
from api.pagination import decode_cursor, encode_cursor, page_size
from api.params import Cursor, EntityId, Limit
from api.params import partner as partner_param
from api.schemas import to_schema, to_schemas
from api.security import require
from api.services import Services
from imaging_sync.catalog import operations as catalog
from imaging_sync.errors import NotFoundError, ValidationError
from imaging_sync.partners.wire import check_requested_id

PartnerFilter = Annotated[str | None, QueryParameter(name="partner", description="Only this partner.", max_length=63)]
# The values of imaging_sync.statuses.RunStatus, spelled out: the enum itself would turn the OpenAPI
# parameter into a schema component. tests/imaging_sync/test_statuses.py keeps the two equal.
RunStatus = Literal["queued", "running", "succeeded", "failed", "skipped", "abandoned"]


class OperationsController(Controller):
    tags = ["operations"]
    guards = [require("operations")]

    @get(
        "/partners",
        opt=audited("list", "partner"),
        responses=documented_errors(*PROTECTED),
        sync_to_thread=True,
        summary="Partners: configuration and sync state",
    )
    @recorded_in_thread
    def partners(self, services: NamedDependency[Services], conn: RequestConnection) -> list[Partner]:
        """Every configured partner (no secret, nor where one is kept), its bookmark, last run and last success."""
        configured = services.settings.partners
        states = catalog.partner_states(conn, sorted(configured))
        result = []
        for name, config in sorted(configured.items()):
            state = states[name]
            result.append(
                Partner(
                    name=name, adapter=config.adapter, enabled=config.enabled, base_url=config.base_url, priority=config.priority,
                    default_bucket=config.default_bucket, allowed_buckets=sorted(config.allowed_buckets), page_size=config.page_size,
                    overlap_seconds=config.overlap_seconds,
                    state=PartnerState(
                        bookmark=state.bookmark, last_success_at=state.last_success_at,
                        last_run=to_schema(state.last_run, SyncRun) if state.last_run else None,
                    ),
                )
            )
        return result

    @post(
        "/partners/{name:str}/sync",
        opt=audited("trigger_sync", "partner", id_param="name"),
        responses=documented_errors(*PROTECTED, 404, 409),
        sync_to_thread=True,
        status_code=HTTP_202_ACCEPTED,
        summary="Start a sync of one partner",
    )
    def trigger_sync(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        name: Annotated[str, PathParameter(description="Partner name.", max_length=63)],
        data: Annotated[SyncRequest | None, Body(description="Optional; the same fields may be given as query parameters.")] = None,
        full: Annotated[bool | None, QueryParameter(description="Ignore the bookmark and re-read everything.")] = None,
        study_id: Annotated[
            str | None,
            QueryParameter(
                description="Refresh only this study (the partner's id: 1 to 128 characters, not `.` or `..`, no control characters, no surrounding whitespace).",
                min_length=1, max_length=128,
            ),
        ] = None,
    ) -> Response[SyncStarted]:
        """Runs in the background; 202 with the run id at once, 409 when the partner is being synced already."""
        if name not in services.settings.partners:
            raise NotFoundError(f"no partner {name!r} is configured")
        body = data or SyncRequest()
        full_run = body.full or bool(full)
        requested = body.study_id if body.study_id is not None else study_id
        refresh = None if requested is None else check_requested_id(requested, "study_id")
        if refresh is not None and full_run:
            raise ValidationError("study_id", "refreshes one study; it cannot be combined with full")
        run_id = services.launcher.launch(name, full=full_run, study_id=refresh)
        note(request, run_id=str(run_id), full=full_run, study_id=refresh)
        location = f"/api/v1/sync-runs/{run_id}"
        return Response(SyncStarted(run_id=run_id, partner=name, status_url=location), status_code=HTTP_202_ACCEPTED, headers={"Location": location})

    @get("/sync-runs", opt=audited("list", "sync_run"), responses=documented_errors(*PROTECTED), sync_to_thread=True, summary="Sync runs, newest first")
    @recorded_in_thread
    def runs(
        self,
        services: NamedDependency[Services],
        conn: RequestConnection,
        partner: PartnerFilter = None,
        status: Annotated[RunStatus | None, QueryParameter(description="Only runs in this status.")] = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> SyncRunPage:
        size = page_size(limit, services.settings.api)
        after = decode_cursor(cursor, "sync-runs", (dt.datetime, uuid.UUID))
        page = catalog.list_runs(conn, partner=partner_param(partner), status=status, limit=size, after=after)
        return SyncRunPage(items=to_schemas(page.items, SyncRun), next_cursor=encode_cursor("sync-runs", page.next_key))

    @get("/sync-runs/{run_id:str}", opt=audited("read", "sync_run", id_param="run_id"), responses=documented_errors(*PROTECTED, 404), sync_to_thread=True, summary="One sync run")
    @recorded_in_thread
    def run(self, conn: RequestConnection, run_id: EntityId) -> SyncRunDetail:
        found, rejected = catalog.get_run(conn, run_id)
        return SyncRunDetail(run=to_schema(found, SyncRun), rejected_items=rejected)

    @get(
        "/rejected-items",
        opt=audited("list", "rejected_item"),
        responses=documented_errors(*PROTECTED),
        sync_to_thread=True,
        summary="Items that broke the partner contract, newest first",
    )
    @recorded_in_thread
    def rejected(
        self,
        services: NamedDependency[Services],
        conn: RequestConnection,
        partner: PartnerFilter = None,
        run: Annotated[uuid.UUID | None, QueryParameter(description="Only items of this sync run.")] = None,
        limit: Limit = None,
        cursor: Cursor = None,
    ) -> RejectedItemPage:
        """With each item's payload as the partner sent it (patient data: every listing is audited)."""
        size = page_size(limit, services.settings.api)
        after = decode_cursor(cursor, "rejected-items", (dt.datetime, uuid.UUID))
        page = catalog.list_rejected(conn, partner=partner_param(partner), run_id=run, limit=size, after=after)
        return RejectedItemPage(items=to_schemas(page.items, RejectedItem), next_cursor=encode_cursor("rejected-items", page.next_key))
