"""How a DICOMweb route is declared, once: its paths, its audit action, a worker thread, and no OpenAPI entry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.params import PathParameter

from api.auditing import audited

STUDY = "/studies/{study_uid:str}"
SERIES = STUDY + "/series/{series_uid:str}"
INSTANCE = SERIES + "/instances/{sop_uid:str}"
StudyUid = Annotated[str, PathParameter(description="Study Instance UID.", max_length=64)]
SeriesUid = Annotated[str, PathParameter(description="Series Instance UID.", max_length=64)]
SopUid = Annotated[str, PathParameter(description="SOP Instance UID.", max_length=64)]


def route(action: str, path: str, resource_type: str, id_param: str | None = None) -> Callable[[Callable[..., Any]], HTTPRouteHandler]:
    """A GET of ``path``, audited as ``action`` on ``resource_type`` (named by the path parameter ``id_param``), run in a
    worker thread (it reads the database and the buckets), and left out of the OpenAPI document: PS3.18 is its contract."""
    return get(path, opt=audited(action, resource_type, id_param=id_param), sync_to_thread=True, include_in_schema=False)


__all__ = ["SeriesUid", "SopUid", "StudyUid", "INSTANCE", "SERIES", "STUDY", "route"]
