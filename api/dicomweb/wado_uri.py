"""WADO-URI (PS3.18 9): ``GET /dicomweb/wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…``, the older
single-object retrieval some viewers and reporting systems still link to.

``contentType=application/dicom`` is the file as stored, streamed from the
partner's bucket; or, with ``[dicomweb] redirect_objects = true``, a 307 to
a presigned URL of the bucket (the file then never passes through this
server; the bucket must allow the viewer's origin). ``image/jpeg`` (the
standard's default, PS3.18 9.1.2.1.1, when ``contentType`` is left out) and
``image/png`` are a frame rendered as WADO-RS renders one
(:mod:`api.dicomweb.rendered`): ``frameNumber``, ``rows``/``columns`` (the
most it is sent at), ``windowCenter``/``windowWidth``, ``imageQuality``;
``annotation`` and the rest are accepted and not applied. Other types are a
406, as an image type is where the ``render`` extra is missing. A parameter that is missing
or malformed is a 400 naming it; an object the index does not have, a 404.
The audit entry is written by the middleware when the answer starts, with
the study and patient it shows.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Stream
from litestar.status_codes import HTTP_307_TEMPORARY_REDIRECT

from api.auditing import audited, disclosed
from api.db import RequestConnection
from api.dicomweb.wado import instance_refs, rendered_response, stream_instances
from api.services import Services
from imaging_sync.errors import ValidationError

REQUIRED = ("requestType", "studyUID", "seriesUID", "objectUID")
KNOWN = frozenset({*REQUIRED, "contentType", "transferSyntax", "charset", "anonymize", "annotation", "rows", "columns", "region",
                   "windowCenter", "windowWidth", "frameNumber", "imageQuality", "presentationUID", "presentationSeriesUID"})


@get("/wado", opt=audited("read", "instance"), sync_to_thread=True, include_in_schema=False)
def wado_uri(request: Request[Any, Any, Any], services: NamedDependency[Services], conn: RequestConnection) -> Stream | Redirect | Response[bytes]:
    """One object by its three UIDs, as PS3.18 9.1 asks for it."""
    params = _params(request)
    content_types = [t.split(";")[0].strip().lower() for t in params.get("contentType", "image/jpeg").split(",")]
    if not any(t in ("application/dicom", "*/*", "application/*") for t in content_types):
        images = [t for t in content_types if t in ("image/jpeg", "image/png", "image/*")]
        if not images:
            raise HTTPException(status_code=406, detail="WADO-URI answers application/dicom, image/jpeg or image/png")
        [ref] = instance_refs(conn, params["studyUID"], params["seriesUID"], params["objectUID"])
        return rendered_response(request, services, ref, _frame_number(params), _rendering(params), ", ".join(images))
    if params.get("transferSyntax") not in (None, "*"):
        raise ValidationError("transferSyntax", "files are sent as stored: leave transferSyntax out")
    [ref] = instance_refs(conn, params["studyUID"], params["seriesUID"], params["objectUID"])
    if services.settings.dicomweb.redirect_objects:
        issued = services.files.instance_url(conn, ref.id)
        disclosed(request, subject_ids=[ref.subject_id], study_ids=[ref.study_id])
        return Redirect(path=issued.url, status_code=HTTP_307_TEMPORARY_REDIRECT, headers={"Cache-Control": "no-store"})
    return stream_instances(request, services, [ref], single=True)


def _frame_number(params: dict[str, str]) -> int:
    value = params.get("frameNumber", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValidationError("frameNumber", "must be a frame number, from 1")
    return int(value)


def _rendering(params: dict[str, str]) -> dict[str, str]:
    """WADO-URI's rendering parameters (PS3.18 9.1.2.1) as WADO-RS names them (8.3.5), for the one renderer."""
    rendering: dict[str, str] = {}
    if "rows" in params or "columns" in params:
        rendering["viewport"] = f"{params.get('columns', '8192')},{params.get('rows', '8192')}"
    if "windowCenter" in params or "windowWidth" in params:
        if not ("windowCenter" in params and "windowWidth" in params):
            raise ValidationError("windowWidth" if "windowCenter" in params else "windowCenter", "windowCenter and windowWidth go together")
        rendering["window"] = f"{params['windowCenter']},{params['windowWidth']}"
    if "imageQuality" in params:
        rendering["quality"] = params["imageQuality"]
    return rendering


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
