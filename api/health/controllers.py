"""Liveness and readiness probes: unversioned (``/health``, ``/ready``), unauthenticated, never audited.

They carry no patient data and no secrets: a load balancer or Kubernetes
polls them without a key.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from api.services import Services


class Health(msgspec.Struct):
    status: Annotated[str, msgspec.Meta(description="ok")]


class ReadyCheck(msgspec.Struct):
    ok: bool
    detail: str


class Ready(msgspec.Struct):
    status: Annotated[str, msgspec.Meta(description="ready | unavailable")]
    checks: Annotated[dict[str, ReadyCheck], msgspec.Meta(description="database, migrations, storage")]


@get("/health", tags=["probes"], summary="Liveness", sync_to_thread=False)
def health() -> Health:
    """The process is up and serving HTTP (checks nothing else)."""
    return Health(status="ok")


@get(
    "/ready",
    tags=["probes"],
    summary="Readiness",
    sync_to_thread=True,
    responses={HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(data_container=Ready, description="Not ready: `checks` names the failing part.", generate_examples=False)},
)
def ready(services: NamedDependency[Services]) -> Response[Ready]:
    """200 when the database is reachable, its schema current and the storage registry usable; 503 naming the failing part."""
    checks = services.readiness.checks()
    ok = all(c.ok for c in checks)
    body = Ready(status="ready" if ok else "unavailable", checks={c.name: ReadyCheck(ok=c.ok, detail=c.detail) for c in checks})
    return Response(body, status_code=HTTP_200_OK if ok else HTTP_503_SERVICE_UNAVAILABLE, headers={"Cache-Control": "no-store"})
