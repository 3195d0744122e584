"""WADO-URI (PS3.18 9): ``GET /dicomweb/wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…``, the older
single-object retrieval some viewers and reporting systems still link to.

``contentType=application/dicom`` (or a list that has it) is the file as
stored, streamed from the partner's bucket; or, with ``[dicomweb]
redirect_objects = true``, a 307 to a presigned URL of the bucket (the
file then never passes through this server; the bucket must allow the
viewer's origin). Other content types (the ``image/jpeg`` the standard
makes the default for images) are a 406 for now. A parameter that is missing
or malformed is a 400 naming it; an object the index does not have, a 404.
The audit entry is written by the middleware when the answer starts, with
the study and patient it shows.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Stream
from litestar.status_codes import HTTP_307_TEMPORARY_REDIRECT

from api.auditing import audited, disclosed
from api.db import RequestConnection
from api.dicomweb.wado import instance_refs, stream_instances
from api.services import Services
from imaging_sync.errors import ValidationError

REQUIRED = ("requestType", "studyUID", "seriesUID", "objectUID")
KNOWN = frozenset({*REQUIRED, "contentType", "transferSyntax", "charset", "anonymize", "annotation", "rows", "columns", "region",
                   "windowCenter", "windowWidth", "frameNumber", "imageQuality", "presentationUID", "presentationSeriesUID"})


@get("/wado", opt=audited("read", "instance"), sync_to_thread=True, include_in_schema=False)
def wado_uri(request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection) -> Stream | Redirect:
    """One object by its three UIDs, as PS3.18 9.1 asks for it."""
    params = _params(request)
    content_types = [t.split(";")[0].strip().lower() for t in params.get("contentType", "application/dicom").split(",")]
    if not any(t in ("application/dicom", "*/*", "application/*") for t in content_types):
        raise HTTPException(status_code=406, detail="this server answers WADO-URI with contentType=application/dicom only")
    if params.get("transferSyntax") not in (None, "*"):
        raise ValidationError("transferSyntax", "files are sent as stored: leave transferSyntax out")
    [ref] = instance_refs(conn, params["studyUID"], params["seriesUID"], params["objectUID"])
    if services.settings.dicomweb.redirect_objects:
        issued = services.files.instance_url(conn, ref.id)
        disclosed(request, subject_ids=[ref.subject_id], study_ids=[ref.study_id])
        return Redirect(path=issued.url, status_code=HTTP_307_TEMPORARY_REDIRECT, headers={"Cache-Control": "no-store"})
    return stream_instances(request, services, [ref], single=True)


def _params(request: Request[Any, Any, Any]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in KNOWN:
            raise ValidationError(name, "is not a WADO-URI parameter (PS3.18 9.1.2)")
        if name in params:
            raise ValidationError(name, "given more than once")
        params[name] = value
    for name in REQUIRED:
        if not params.get(name):
            raise ValidationError(name, "is required")
    if params["requestType"] != "WADO":
        raise ValidationError("requestType", "must be WADO")
    return params


__all__ = ["wado_uri"]
