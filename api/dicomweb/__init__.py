"""DICOMweb (PS3.18) over the federated index, mounted under ``/dicomweb`` on the REST API's app.

A package of the HTTP edge beside the REST API, not built on its controllers:
the searches read the core's query semantics (``imaging_sync.query``), the
same matching a C-FIND gets. The same API keys (``Authorization: Bearer``)
and roles: the ``viewer`` role reads, nothing here writes; every request is
audited with whose data it showed, before the answer leaves
(:mod:`api.auditing`).

- :mod:`~api.dicomweb.qido`: a QIDO-RS query string → a search;
- :mod:`~api.dicomweb.searching`: one page of it, as DICOM JSON;
- :mod:`~api.dicomweb.dicom_json`: index values in the DICOM JSON Model (PS3.18 F.2);
- :mod:`~api.dicomweb.media`: ``Accept`` negotiation (406);
- :mod:`~api.dicomweb.urls`: this server's address as the client reached it (RetrieveURL);
- :mod:`~api.dicomweb.routes`: how a route is declared (paths, audit action, thread, no OpenAPI entry);
- :mod:`~api.dicomweb.controllers`: the QIDO-RS routes;
- :mod:`~api.dicomweb.wado`: WADO-RS (metadata, frames, bulk data, instances),
  :mod:`~api.dicomweb.multipart` and :mod:`~api.dicomweb.pixels` (decoding a compressed frame);
- :mod:`~api.dicomweb.wado_uri`: WADO-URI (one object by its UIDs, streamed or redirected).
"""

from __future__ import annotations

from litestar import Router

from api.auditing import AuditMiddleware
from api.dicomweb.controllers import QidoController
from api.dicomweb.urls import MOUNT
from api.dicomweb.wado import WadoController
from api.dicomweb.wado_uri import wado_uri
from api.security import require


def dicomweb_router() -> Router:
    """``/dicomweb``: the key is checked, then the role, then the audit entry of every answer is written before it leaves."""
    return Router(
        path=MOUNT,
        route_handlers=[QidoController, WadoController, wado_uri],
        guards=[require("patient_data")],  # the key, then the role (one guard: see require)
        middleware=[AuditMiddleware],
        include_in_schema=False,
    )


__all__ = ["MOUNT", "dicomweb_router"]
