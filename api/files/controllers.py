"""Presigned URLs for instance files (``viewer``): one, a whole series, or a redirect for viewers.

Every URL handed out is an audited access: the instance id (or the series
id and how many URLs), the partner whose copy was signed, and the study and
subject whose file it opens (:func:`api.auditing.disclosed`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Redirect
from litestar.status_codes import HTTP_307_TEMPORARY_REDIRECT

from api.auditing import audited, disclosed, note, recorded_in_thread
from api.db import RequestConnection
from api.errors import PROTECTED, documented_errors
from api.params import EntityId
from api.security import require
from api.services import Services

ExpiresIn = Annotated[
    int | None,
    QueryParameter(description="URL lifetime in seconds (default `storage.presign_default_seconds`, at most `storage.presign_max_seconds`).", ge=1),
]


class FileUrl(msgspec.Struct, kw_only=True):
    url: str
    expires_at: dt.datetime


class SeriesFileUrl(msgspec.Struct, kw_only=True):
    instance_id: uuid.UUID
    sop_instance_uid: str
    instance_number: int | None
    url: Annotated[str | None, msgspec.Meta(description="null when no partner's copy is in a registered bucket.")]
    expires_at: dt.datetime | None


class SeriesFileUrls(msgspec.Struct, kw_only=True):
    series_id: uuid.UUID
    items: Annotated[list[SeriesFileUrl], msgspec.Meta(description="One per live instance, in instance-number order.")]


class FileController(Controller):
    tags = ["files"]
    guards = [require("patient_data")]

    @get(
        "/instances/{instance_id:str}/url",
        opt=audited("issue_url", "instance", id_param="instance_id"),
        responses=documented_errors(*PROTECTED, 404, 502),
        sync_to_thread=True,
        summary="A presigned URL for one instance's file",
    )
    @recorded_in_thread
    def instance_url(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        conn: RequestConnection,
        instance_id: EntityId,
        expires_in: ExpiresIn = None,
    ) -> FileUrl:
        """The highest-priority partner's copy; if that object is gone, the next partner's."""
        issued = services.files.instance_url(conn, instance_id, expires_in=expires_in)
        disclosed(request, instance_ids=[instance_id])
        note(request, partner=issued.partner, skipped=list(issued.skipped) or None, expires_at=issued.expires_at.isoformat())
        return FileUrl(url=issued.url, expires_at=issued.expires_at)

    @get(
        "/instances/{instance_id:str}/file",
        opt=audited("issue_url", "instance", id_param="instance_id"),
        responses=documented_errors(*PROTECTED, 404, 502),
        sync_to_thread=True,
        summary="Redirect to the instance's file",
        status_code=HTTP_307_TEMPORARY_REDIRECT,
    )
    @recorded_in_thread
    def instance_file(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        conn: RequestConnection,
        instance_id: EntityId,
        expires_in: ExpiresIn = None,
    ) -> Redirect:
        """307 to a fresh presigned URL (for viewers that follow redirects)."""
        issued = services.files.instance_url(conn, instance_id, expires_in=expires_in)
        disclosed(request, instance_ids=[instance_id])
        note(request, partner=issued.partner, skipped=list(issued.skipped) or None, redirect=True)
        return Redirect(path=issued.url, status_code=HTTP_307_TEMPORARY_REDIRECT, headers={"Cache-Control": "no-store"})

    @get(
        "/series/{series_id:str}/urls",
        opt=audited("issue_urls", "series", id_param="series_id"),
        responses=documented_errors(*PROTECTED, 404, 502),
        sync_to_thread=True,
        summary="Presigned URLs for every instance of a series",
    )
    @recorded_in_thread
    def series_urls(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        conn: RequestConnection,
        series_id: EntityId,
        expires_in: ExpiresIn = None,
    ) -> SeriesFileUrls:
        """The batch signer: one URL per instance, no per-object check (a missing object fails at download)."""
        entries = services.files.series_urls(conn, series_id, expires_in=expires_in)
        signed = [e for e in entries if e.url is not None]
        if entries:
            disclosed(request, series_ids=[series_id])  # its instances' UIDs at least, and their files when signed
        note(request, count=len(signed), unavailable=len(entries) - len(signed), partners=sorted({e.partner for e in signed if e.partner}))
        return SeriesFileUrls(
            series_id=series_id,
            items=[
                SeriesFileUrl(instance_id=e.instance_id, sop_instance_uid=e.sop_instance_uid, instance_number=e.instance_number, url=e.url, expires_at=e.expires_at)
                for e in entries
            ],
        )
