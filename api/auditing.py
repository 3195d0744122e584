"""The audit trail of the HTTP API: one entry for every protected request, written from this module.

:class:`AuditMiddleware` wraps every ``/api/v1`` route. When the response
starts — whatever produced it: the handler, a guard refusing, a parameter
failing validation, the error mapping — it records who (key id, prefix,
role, or the prefix a refused key claimed), from where (client address),
what (resource type and id), how (method, path, query filters), the outcome
and the status, through :func:`imaging_sync.audit.record`.

Handlers name what they touched only when the path does not say it
(:func:`note`); each route declares its action and resource type once, in its
``opt`` (:func:`audited`). Handlers that read the database write the entry of
their success themselves, in their own worker thread as they return
(:func:`recorded_in_thread`): a thread hop of its own cost a tenth of a
search's CPU. The middleware then writes only the entries nobody wrote.

The record is written *before* the response leaves: if it cannot be written,
the client gets ``503 audit_unavailable`` instead of the data — an access to
patient data that the log does not show must not happen.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
import msgspec
from litestar import Request
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from imaging_sync import audit
from imaging_sync.audit import AuditEvent
from imaging_sync.config import ApiConfig
from imaging_sync.errors import ConfigError

from api.db import release, scope_connection, write_transaction
from api.errors import REQUEST_ID_HEADER, error_body, request_id

log = logging.getLogger("api.audit")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
F = TypeVar("F", bound=Callable[..., Any])
_NOTE = "audit_note"
_RECORDED = "audit_recorded_status"  # the status an entry was already written for (recorded_in_thread)
_MAX_QUERY_VALUE = 256  # a query value longer than this is cut in the record (it is a 400 anyway)


@dataclass(frozen=True)
class AuditSpec:
    """What a route does, for its audit entries: ``action`` (search, read, issue_url, …) on ``resource_type``.

    ``id_param`` is the path parameter holding the resource id, if any.
    """

    action: str
    resource_type: str
    id_param: str | None = None


def audited(action: str, resource_type: str, id_param: str | None = None) -> dict[str, Any]:
    """Route ``opt`` declaring the route's audit action and resource."""
    return {"audit": AuditSpec(action, resource_type, id_param)}


def note(request: Request[Any, Any, Any], *, resource_type: str | None = None, resource_id: object = None, **detail: Any) -> None:
    """Tell the audit entry of this request what was touched (when the path does not say), plus details."""
    state = request.scope["state"].setdefault(_NOTE, {})
    if resource_type is not None:
        state["resource_type"] = resource_type
    if resource_id is not None:
        state["resource_id"] = str(resource_id)
    state.setdefault("detail", {}).update({k: v for k, v in detail.items() if v is not None})


def recorded_in_thread(handler: F) -> F:
    """Decorate a sync handler that takes ``conn``: its success is recorded in its own worker thread.

    When the handler returns, the entry is written for the route's status on
    the request's connection, which then goes back to the pool, all before
    the thread hop ends. A handler that raises is recorded by the middleware
    as before (with the error's status). Should the response still end
    otherwise (its body failing to serialise), the middleware adds an entry
    for the status the client got.
    """

    if "conn" not in inspect.signature(handler).parameters:
        raise TypeError(f"{handler.__qualname__}: recorded_in_thread needs the handler to take `conn` (the request's connection)")

    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Any:
        result = handler(*args, **kwargs)
        scope: Scope = kwargs["conn"].request_scope
        status = scope["route_handler"].status_code  # type: ignore[typeddict-item]
        _write(scope, status)
        scope["state"][_RECORDED] = status  # type: ignore[typeddict-item]
        return result

    return run  # type: ignore[return-value]


def outcome_for(status: int) -> str:
    """The audit outcome a response status means: no key or a refused one is ``denied``, as is a role's refusal."""
    if status < 400:
        return "success"
    return {401: "denied", 403: "denied", 404: "not_found"}.get(status, "error")


def parse_trusted_proxies(config: ApiConfig) -> list[IpNetwork]:
    """``api.trusted_proxies`` as networks (a bare address is a /32 or /128); ConfigError naming a bad entry."""
    networks = []
    for i, entry in enumerate(config.trusted_proxies):
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"api.trusted_proxies[{i}]", f"{entry!r} is not an IP address or network") from None
    return networks


def client_address(scope: Scope, trusted: Sequence[IpNetwork]) -> str | None:
    """The caller's address: the peer, or — only when the peer is a trusted proxy — from X-Forwarded-For.

    X-Forwarded-For is read right to left, skipping trusted proxies; the first
    address that is not one is the client (anything further left was written by
    the client itself and proves nothing).
    """
    peer = (scope.get("client") or (None,))[0]
    if not trusted or peer is None or not _is_trusted(peer, trusted):
        return peer
    forwarded = [
        value.decode("latin-1") for name, value in scope.get("headers", ()) if name.lower() == b"x-forwarded-for"
    ]
    hops = [h.strip() for line in forwarded for h in line.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # garbage in the chain: trust nothing beyond the proxy we know
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _is_trusted(address: str, trusted: Iterable[IpNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


class AuditMiddleware:
    """ASGI middleware on the protected router: one audit entry per request, before the response leaves."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["state"].setdefault("request_id", uuid.uuid4().hex)
        async with scope["litestar_app"].state["services"].connection_slots:  # see api.db: no thread waits on the pool
            await self._audited(scope, receive, send)

    async def _audited(self, scope: Scope, receive: Receive, send: Send) -> None:
        replaced = started = False

        async def audited_send(message: Message) -> None:
            nonlocal replaced, started
            if replaced:
                return  # the original body of a response we replaced
            if message["type"] == "http.response.start":
                started = True
                if scope["state"].get(_RECORDED) == message["status"]:
                    await send(message)  # the handler's thread wrote this very entry
                    return
                try:
                    await anyio.to_thread.run_sync(_write, scope, message["status"])
                except Exception:
                    log.exception("audit entry could not be written; refusing the response", extra={"request_id": scope["state"].get("request_id")})
                    replaced = True
                    await _send_audit_unavailable(scope, send)
                    return
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if not started:  # escaped every handler: the outer one answers 500; record that too
                try:
                    await anyio.to_thread.run_sync(_write, scope, 500)
                except Exception:
                    log.exception("audit entry of a failed request could not be written", extra={"request_id": scope["state"].get("request_id")})
            raise
        finally:
            if scope["state"].get("db_connection") is not None:
                await anyio.to_thread.run_sync(release, scope)


def _write(scope: Scope, status: int) -> None:
    """Record the entry in a transaction of its own on the request's connection, then give the connection back."""
    services = scope["litestar_app"].state["services"]
    event = build_event(scope, status, services.trusted_proxies)
    try:
        with write_transaction(scope_connection(scope)) as conn:
            audit.record(conn, event)
    finally:
        release(scope)


def build_event(scope: Scope, status: int, trusted: Sequence[IpNetwork]) -> AuditEvent:
    state = scope.get("state", {})
    handler = scope.get("route_handler")
    spec: AuditSpec | None = (handler.opt or {}).get("audit") if handler is not None else None
    noted = state.get(_NOTE, {})
    principal = state.get("principal")
    resource_type = noted.get("resource_type") or (spec.resource_type if spec else None)
    resource_id = noted.get("resource_id")
    if resource_id is None and spec and spec.id_param:
        raw = scope.get("path_params", {}).get(spec.id_param)
        resource_id = None if raw is None else str(raw)[:128]
    detail = dict(noted.get("detail", {}))
    if state.get("error_code") and status >= 400:
        detail["error"] = state["error_code"]
    if principal is None and state.get("claimed_prefix"):
        detail["claimed_prefix"] = state["claimed_prefix"]
    if state.get("request_id"):
        detail["request_id"] = state["request_id"]
    return AuditEvent(
        channel="http",
        actor=principal.prefix if principal else "anonymous",
        actor_key_id=principal.key_id if principal else None,
        actor_role=principal.role if principal else None,
        action=spec.action if spec else "request",
        outcome=outcome_for(status),
        client_addr=client_address(scope, trusted),
        method=scope.get("method"),
        path=_clean(scope.get("path")),
        query=_clean(_query(scope)) or None,
        resource_type=resource_type,
        resource_id=_clean(resource_id),
        status=status,
        detail=_clean(detail) or None,
    )


def _clean(value: Any) -> Any:
    """Strings as the database can store them: NUL is refused by PostgreSQL text and JSONB, so it is spelled out."""
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _query(scope: Scope) -> dict[str, Any]:
    """The query filters as given (repeated keys become lists); long values cut."""
    from urllib.parse import parse_qsl

    raw = scope.get("query_string", b"").decode("utf-8", "replace")
    result: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        value = value[:_MAX_QUERY_VALUE]
        if key in result:
            existing = result[key]
            result[key] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            result[key[:64]] = value
    return result


async def _send_audit_unavailable(scope: Scope, send: Send) -> None:
    rid = scope["state"].get("request_id") or "-"
    body = msgspec.json.encode(error_body("audit_unavailable", "the access could not be recorded in the audit log; try again later", request_id=rid))
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (REQUEST_ID_HEADER.lower().encode(), rid.encode())],
    })
    await send({"type": "http.response.body", "body": body, "more_body": False})


__all__ = ["AuditMiddleware", "AuditSpec", "audited", "build_event", "client_address", "note", "outcome_for", "parse_trusted_proxies", "request_id"]
