"""Who is calling, and may they: API-key authentication and role guards.

Guards are plain functions that raise (Litestar runs them before any
parameter is parsed, so an unauthenticated caller learns nothing about
valid parameters). A key that is unknown, expired or revoked gets the same
401, with the same body and headers: which of the three it was goes to the
auditor only (the sample of the address's counted refusals,
:mod:`imaging_sync.audit_refusals`), never to the caller. The ``/api/v1`` router runs :func:`authenticate` first;
each controller then names the roles it admits with :func:`require`.

Roles (least privilege; :data:`PERMISSIONS` is the whole table):

- ``viewer``: subjects, studies, series, instances and their file URLs — the patient data.
- ``operator``: partners, sync runs, rejected items (payloads included: the
  operator's job is to fix them), triggering syncs. No study/patient
  endpoints: an operator can do the job from run counts and rejected items,
  and keys that don't need patient data shouldn't have it.
- ``auditor``: the audit log only — no image URLs, no patient data endpoints.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio.to_thread
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from api.auditing import note
from api.db import scope_connection, write_transaction
from imaging_sync import apikeys
from imaging_sync.apikeys import Principal
from imaging_sync.errors import AccessDeniedError, AuthenticationError

VIEWER, OPERATOR, AUDITOR = "viewer", "operator", "auditor"

# area -> roles admitted; guards and the docs are built from this one table.
PERMISSIONS: dict[str, tuple[str, ...]] = {
    "patient_data": (VIEWER,),
    "operations": (OPERATOR,),
    "audit_log": (AUDITOR,),
}

_PRINCIPAL = "principal"


def presented_token(headers: Mapping[str, str]) -> str | None:
    """The API key from ``Authorization: Bearer …`` or ``X-API-Key: …`` (in that order), if any."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def claimed_prefix(token: str | None) -> str | None:
    """The key prefix a token claims (``isk_<prefix>_…``), for the audit of a refused key; safe to log."""
    if not token:
        return None
    parts = token.split("_", 2)
    if len(parts) == 3 and parts[0] == "isk" and 0 < len(parts[1]) <= 16 and parts[1].isalnum():
        return parts[1]
    return None


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: resolve the API key to a principal (kept in the scope state) or raise AuthenticationError."""
    state = connection.scope["state"]
    token = presented_token(connection.headers)
    state["claimed_prefix"] = claimed_prefix(token)
    try:
        if token is None:
            raise AuthenticationError("missing")
        if len(token) > 200:
            raise AuthenticationError("invalid")

        cache: PrincipalCache = connection.app.state["services"].principals
        principal = cache.get(token)
        if principal is None:

            def check() -> Principal:
                conn = scope_connection(connection.scope)  # the request's connection, from here to the audit entry
                with write_transaction(conn):  # authenticate may write (last_used_at)
                    return apikeys.authenticate(conn, token)

            principal = await anyio.to_thread.run_sync(check)
            cache.put(token, principal)
    except AuthenticationError as exc:
        if isinstance(connection, Request):
            note(connection, auth_failure=exc.reason)  # for the auditor; the response says only "invalid API key"
        raise
    state[_PRINCIPAL] = principal


class PrincipalCache:
    """Recently verified keys, for ``ttl_seconds``: most requests then need no key lookup.

    Profiling showed the lookup (a query and a commit) at an eighth of a search's
    time. The price: a key revoked or expiring is still accepted for up to
    ``ttl_seconds`` by a worker that verified it just before (0 turns the cache
    off). Keyed by the token's SHA-256, never the token; refusals are not cached.
    ``clock`` gives seconds (monotonic); a test gives its own, to pass a TTL without waiting it out.
    """

    def __init__(self, ttl_seconds: float = 5.0, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[bytes, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> Principal | None:
        if self.ttl <= 0:
            return None
        found = self._entries.get(_digest(token))
        if found is None or self.clock() - found[0] > self.ttl:
            return None
        return found[1]

    def put(self, token: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                now = self.clock()
                self._entries = {k: v for k, v in self._entries.items() if now - v[0] <= self.ttl}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[_digest(token)] = (self.clock(), principal)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    return connection.scope.get("state", {}).get(_PRINCIPAL)


def require(area: str) -> Any:
    """Guard admitting the roles of ``area`` in :data:`PERMISSIONS`; AccessDeniedError for any other role.

    It checks the key itself (:func:`authenticate`) when no guard before it
    has, so a router whose every route needs the same area takes this one
    guard: Litestar copies the route handler for each guard it calls, a
    thirtieth of a DICOMweb frame request's event-loop time per guard. A
    coroutine although it rarely waits: Litestar runs a plain function guard
    in a worker thread, and that hop was a seventh of the same (py-spy).
    """
    roles = PERMISSIONS[area]

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        principal = principal_of(connection)
        if principal is None:
            await authenticate(connection, handler)
            principal = principal_of(connection)
        if principal is None:  # authenticate neither found a principal nor refused: a wiring mistake, refuse
            raise AuthenticationError("invalid")
        if principal.role not in roles:
            raise AccessDeniedError(f"role {principal.role!r} may not use this endpoint (allowed: {', '.join(roles)})")

    guard.__name__ = f"require_{area}"
    return guard
