"""QIDO-RS (PS3.18 10.6): the search resources, for the ``viewer`` role, each request audited with whom it showed.

``GET /studies``, ``/series``, ``/instances`` search the whole index;
``/studies/{study}/series``, ``/studies/{study}/instances`` and
``/studies/{study}/series/{series}/instances`` search under one study (or
series), which must exist (else 404). The query is read by
:mod:`api.dicomweb.qido`, run by :mod:`api.dicomweb.searching` on the core's
search; the answer is ``application/dicom+json`` (an ``Accept`` that allows
neither it nor ``application/json`` is a 406). No match is ``200 []``
(PS3.18 8.3.4.x allows 204; a JSON array is what every viewer reads).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from sqlalchemy import Connection, select

from api.auditing import disclosed, note, recorded_in_thread
from api.db import RequestConnection
from api.dicomweb import qido, searching
from api.dicomweb.media import choose
from api.dicomweb.routes import SERIES, STUDY, SeriesUid, StudyUid, route
from api.dicomweb.urls import base_url
from api.services import Services
from imaging_sync.errors import NotFoundError, ValidationError
from imaging_sync.query.keys import Level, series, study
from imaging_sync.uids import is_valid_uid

DICOM_JSON = "application/dicom+json"
SEARCH_MEDIA = (DICOM_JSON, "application/json")
WARN_AGENT = "imaging-sync"


def _search(request: Request[Any, Any, Any], services: Services, conn: Connection, level: Level, scope: dict[str, str] | None = None) -> Response[bytes]:
    media_type = choose(request.headers.get("accept"), SEARCH_MEDIA)
    for name, uid in (scope or {}).items():
        if not is_valid_uid(uid):
            raise ValidationError(name, "is not a UID")
    query = qido.parse(level, request.query_params.multi_items(), scope=scope)
    if level == "IMAGE" and not scope and not query.matches:
        # Policy: every instance of the archive, a page at a time, is an export, not a search.
        raise HTTPException(status_code=413, detail="too broad: an instance search across all studies must match on an attribute "
                                                    "(a study, series or patient, say), or search under /studies/{study}/instances")
    settings = services.settings.dicomweb
    page = searching.run(conn, query, base_url=base_url(request, services.trusted_proxies), max_results=settings.max_results)
    if not page.matches and scope:
        _require_scope(conn, scope)
    disclosed(request, subject_ids=page.subject_ids, study_ids=page.study_ids)
    note(request, results=len(page.matches))
    warnings = []
    if page.more:
        shown = query.offset + len(page.matches)
        warnings.append(f'299 {WARN_AGENT} "There are more matches than this answer carries; ask again with offset={shown}"')
    if query.ignored:
        warnings.append(f'299 {WARN_AGENT} "The following attributes are not supported for matching and were ignored: {", ".join(query.ignored)}"')
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    body = msgspec.json.encode(page.matches)  # UTF-8, compact: as json.dumps(ensure_ascii=False), several times faster
    return Response(content=body, media_type=media_type, headers=headers)


def _require_scope(conn: Connection, scope: dict[str, str]) -> None:
    """404 unless the study (and series) the path names is in the index: an empty answer must not hide a typo."""
    stmt = select(study.c.id).where(study.c.study_instance_uid == scope["StudyInstanceUID"], study.c.deleted_at.is_(None))
    if "SeriesInstanceUID" in scope:
        stmt = stmt.join(series, series.c.study_id == study.c.id).where(
            series.c.series_instance_uid == scope["SeriesInstanceUID"], series.c.deleted_at.is_(None)
        )
    if conn.execute(stmt.limit(1)).first() is None:
        what = "series" if "SeriesInstanceUID" in scope else "study"
        raise NotFoundError(f"no such {what}")


class QidoController(Controller):
    """The six search resources of PS3.18 Table 10.6.1-2."""

    tags = ["DICOMweb"]

    @route("search", "/studies", "study")
    @recorded_in_thread
    def studies(self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection) -> Response[bytes]:
        return _search(request, services, conn, "STUDY")

    @route("search", "/series", "series")
    @recorded_in_thread
    def all_series(self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection) -> Response[bytes]:
        return _search(request, services, conn, "SERIES")

    @route("search", "/instances", "instance")
    @recorded_in_thread
    def all_instances(self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection) -> Response[bytes]:
        return _search(request, services, conn, "IMAGE")

    @route("search", STUDY + "/series", "series", "study_uid")
    @recorded_in_thread
    def study_series(self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection, study_uid: StudyUid) -> Response[bytes]:
        return _search(request, services, conn, "SERIES", {"StudyInstanceUID": study_uid})

    @route("search", STUDY + "/instances", "instance", "study_uid")
    @recorded_in_thread
    def study_instances(self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection, study_uid: StudyUid) -> Response[bytes]:
        return _search(request, services, conn, "IMAGE", {"StudyInstanceUID": study_uid})

    @route("search", SERIES + "/instances", "instance", "series_uid")
    @recorded_in_thread
    def series_instances(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection, study_uid: StudyUid, series_uid: SeriesUid
    ) -> Response[bytes]:
        return _search(request, services, conn, "IMAGE", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid})


__all__ = ["QidoController"]
