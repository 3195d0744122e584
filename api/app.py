"""The REST API application, over parts the process assembly (``app.assembly``) passes in.

Layout of the URL space:

- ``/api/v1/…``: the versioned API; every route needs an API key and is audited.
- ``/api/v1/schema/openapi.json`` (and ``.yaml``) and ``/api/v1/docs``
  (Swagger UI, served whole by the app: it works without internet access,
  see :mod:`api.docs`): the OpenAPI description, no key needed.
- ``/health`` and ``/ready``: unversioned probes for load balancers, no key.
- ``/dicomweb/…``: DICOMweb for web viewers (:mod:`api.dicomweb`); the same keys, audited.
- ``/viewer/``: the OHIF Viewer, when ``[dicomweb] viewer_dir`` names an installed one (:mod:`api.viewer`).

``create_app`` takes everything from outside as arguments (the core, the
bucket registry, the sync launcher), so tests assemble the same app around
real databases and an embedded S3; the uvicorn worker factory that builds it
from the environment is ``app.assembly.api_app_from_environment``.
"""

from __future__ import annotations

import uuid

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import Message, Scope

from api.audit_log.controllers import AuditController
from api.auditing import AuditMiddleware, parse_trusted_proxies
from api.caching import NoStore
from api.db import provide_connection
from api.dicomweb import MOUNT as DICOMWEB_PREFIX
from api.dicomweb import dicomweb_router
from api.docs import docs_router
from api.errors import REQUEST_ID_HEADER, error_response
from api.files.controllers import FileController
from api.files.services import FileUrls
from api.health.controllers import health, ready
from api.health.readiness import Readiness
from api.metrics import PROMETHEUS, MetricsController, register_database_collector
from api.operations.controllers import OperationsController
from api.operations.launcher import SyncLauncher
from api.operations.outbox import OutboxController
from api.query_check import QueryCheck
from api.security import PrincipalCache, authenticate
from api.services import Services, provide_services
from api.studies.controllers import SeriesController, StudyController, SubjectController
from api.viewer import viewer_for
from imaging_sync.config import ApiConfig
from imaging_sync.core import Core
from storage.headers import HeaderCache, HeaderReader
from storage.registry import BucketRegistry

API_PREFIX = "/api/v1"
KEY_CACHE_SECONDS = 5.0
VERSION = "1.0.0"

DESCRIPTION = """\
A federated index of medical imaging studies; the DICOM files stay in partner S3 buckets
and are fetched with short-lived presigned URLs.

**Authentication**: an API key, as `Authorization: Bearer <key>` or `X-API-Key: <key>`
(`imaging-sync apikeys create NAME --role viewer|operator|auditor`).

**Roles**: `viewer` — subjects, studies, series, instances, file URLs;
`operator` — partners, sync runs, rejected items, starting syncs (no patient-data endpoints);
`auditor` — the audit log only. Every request under /api/v1 is recorded in the audit log.

**Errors**: `{"error": {"code": code, "message": text, "details": {"field": parameter (400 only), "request_id": id}}}`.
A query parameter an endpoint does not list here is refused (400), not ignored.

**Pagination**: listings return `next_cursor`; pass it back as `cursor` (keyset, stable under inserts).

**Probes**: `GET /health` (liveness) and `GET /ready` (database, migrations, storage), outside /api/v1, no key.
"""


def create_app(
    core: Core,
    *,
    registry: BucketRegistry,
    launcher: SyncLauncher,
    key_cache_seconds: float = KEY_CACHE_SECONDS,
    close_core: bool = False,
) -> Litestar:
    """The app over ``core``, the process's bucket registry and the sync launcher ``api.sync_launcher`` names.

    ``key_cache_seconds``: how long a verified API key is trusted without a lookup
    (so how long a revoked key may still work; 0 = look up every request).
    ``close_core``: the app owns the core and closes it at shutdown (a uvicorn worker's app).
    """
    settings = core.settings
    files = FileUrls(registry, priorities=settings.priorities())
    headers = HeaderCache(core.engine, HeaderReader(files.reader, files.copies))
    services = Services(
        settings=settings,
        engine=core.engine,
        files=files,
        launcher=launcher,
        readiness=Readiness(core.engine, registry),
        trusted_proxies=parse_trusted_proxies(settings.api),
        principals=PrincipalCache(key_cache_seconds),
        headers=headers,
    )
    query_check = QueryCheck(API_PREFIX)
    api = Router(
        path=API_PREFIX,
        route_handlers=[SubjectController, StudyController, SeriesController, FileController, OperationsController, OutboxController, AuditController],
        guards=[authenticate],
        before_request=query_check,  # after the guards: who may ask is decided before what was asked
        middleware=[AuditMiddleware],
        security=[{"bearer": []}, {"api_key": []}],
    )

    def shutdown() -> None:
        launcher.close()
        headers.close()
        if close_core:
            core.close()

    docs, swagger = docs_router(API_PREFIX)
    viewer = viewer_for(settings.dicomweb)
    register_database_collector(core.engine)
    return Litestar(
        route_handlers=[api, dicomweb_router(), docs, health, ready, MetricsController, *([viewer] if viewer is not None else [])],
        middleware=[PROMETHEUS.middleware],
        state=State({"services": services}),
        # ``conn``: the request's connection, checked out on first use in the handler's worker thread (api.db).
        dependencies={"services": Provide(provide_services, sync_to_thread=False), "conn": Provide(provide_connection, sync_to_thread=False)},
        exception_handlers={Exception: error_response},
        # no-store last: it sees every header the others added (api.caching).
        before_send=[_request_id_header, NoStore(API_PREFIX, public=(f"{API_PREFIX}/schema", f"{API_PREFIX}/docs")), NoStore(DICOMWEB_PREFIX)],
        cors_config=cors(settings.api),
        on_startup=[query_check.load],
        on_shutdown=[shutdown],
        openapi_config=OpenAPIConfig(
            title="imaging-sync API",
            version=VERSION,
            description=DESCRIPTION,
            path=f"{API_PREFIX}/schema",
            render_plugins=[JsonRenderPlugin(path="/openapi.json"), YamlRenderPlugin(path="/openapi.yaml"), swagger],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", description="Authorization: Bearer <API key>"),
                    "api_key": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header", description="X-API-Key: <API key>"),
                }
            ),
        ),
        logging_config=None,  # the process assembly configured logging (app.assembly); no second set-up
        debug=False,
    )


def cors(api: ApiConfig) -> CORSConfig | None:
    """What a browser on ``api.cors_allowed_origins`` may do: GET and POST with an API key header and an ``Accept``.

    None (no CORS headers at all) when no origin is configured. No credentials
    mode: the API takes keys in headers, never cookies. Preflights are answered
    before routing, so they need no key and are not audited; the request that
    follows is. ``Accept`` is allowed because a DICOMweb viewer asking for a quoted
    multipart type (``multipart/related; type="application/dicom"``) sends a value
    outside the CORS-safelisted ones, which triggers a preflight. Exposed: the
    request id (for support), ``Location`` (a started sync), ``Retry-After``,
    ``WWW-Authenticate`` and ``Warning`` (a QIDO-RS answer cut at its limit).
    """
    if not api.cors_allowed_origins:
        return None
    return CORSConfig(
        allow_origins=list(api.cors_allowed_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Accept", "Authorization", "X-API-Key", "Content-Type"],
        expose_headers=[REQUEST_ID_HEADER, "Location", "Retry-After", "WWW-Authenticate", "Warning"],
        allow_credentials=False,
        max_age=600,
    )


async def _request_id_header(message: Message, scope: Scope) -> None:
    """Every response carries ``X-Request-ID`` (the same id as the error body and the audit entry)."""
    if message["type"] != "http.response.start":
        return
    headers = list(message.get("headers", ()))
    name = REQUEST_ID_HEADER.lower().encode()
    if any(k.lower() == name for k, _ in headers):
        return
    state = scope.setdefault("state", {})
    rid = state.setdefault("request_id", uuid.uuid4().hex)
    headers.append((name, str(rid).encode()))
    message["headers"] = headers


__all__ = ["API_PREFIX", "create_app"]
