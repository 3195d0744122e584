"""The audit trail of the HTTP API: one entry for every protected request, written from this module.

:class:`AuditMiddleware` wraps every ``/api/v1`` route. When the response
starts — whatever produced it: the handler, a guard refusing, a parameter
failing validation, the error mapping — it records who (key id, prefix,
role, or the prefix a refused key claimed), from where (client address),
what (resource type and id), how (method, path, query filters), the outcome
and the status, through :func:`imaging_sync.audit.record`.

Handlers name what they touched only when the path does not say it
(:func:`note`), and whose patient data their answer carries
(:func:`disclosed`: the subjects and studies, or the series and instances
that stand for theirs), recorded with the entry of a success in the same
statement, so that ``GET /audit?subject=`` finds every answer that showed
a patient; each route declares its action and resource type once, in its
``opt`` (:func:`audited`). Handlers that read the database write the entry of
their success themselves, in their own worker thread as they return
(:func:`recorded_in_thread`): a thread hop of its own cost a tenth of a
search's CPU. The middleware then writes only the entries nobody wrote.

A request refused as unauthenticated (401: no key, or an unknown, expired or
revoked one) is not an entry of its own: it is counted in its client
address's row of the minute (:mod:`imaging_sync.audit_refusals`, with the
method and path but not the query), so a flood costs one row a minute.
Refusals of a caller whose key was accepted (403) stay entries.

The record is written *before* the response leaves: if it cannot be written,
the client gets ``503 audit_unavailable`` instead of the data — an access to
patient data that the log does not show must not happen. Every value of the
entry is cleaned and capped by the core (:func:`imaging_sync.audit.clean`),
and a failure is logged by its class alone (:func:`imaging_sync.logs.describe_failure`):
the database's message can quote the values, which are patient names and IDs.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl

import anyio.to_thread
import msgspec
from litestar import Request
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy.exc import SQLAlchemyError

from api.db import release, scope_connection, write_transaction
from api.errors import REQUEST_ID_HEADER, error_body, request_id
from imaging_sync import audit, audit_refusals
from imaging_sync.audit import AuditEvent
from imaging_sync.config import ApiConfig
from imaging_sync.errors import AuditUnavailableError, ConfigError
from imaging_sync.logs import describe_failure

log = logging.getLogger("api.audit")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
F = TypeVar("F", bound=Callable[..., Any])
_NOTE = "audit_note"
_DISCLOSED = "audit_disclosed"
_RECORDED = "audit_recorded_status"  # the status an entry was already written for (recorded_in_thread)
_UNRECORDED = "audit_unrecorded"  # the handler's thread could not write its entry: the answer must not leave


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


def disclosed(
    request: Request[Any, Any, Any],
    *,
    subject_ids: Iterable[uuid.UUID] = (),
    study_ids: Iterable[uuid.UUID] = (),
    series_ids: Iterable[uuid.UUID] = (),
    instance_ids: Iterable[uuid.UUID] = (),
) -> None:
    """Tell the audit entry of this request whose patient data the answer carries (calls add up).

    The subjects and studies the response shows; a series or an instance
    stands for its study and subject (looked up by the entry's own INSERT).
    Recorded only with the entry of a success: an error response disclosed
    nothing. See :meth:`imaging_sync.audit.AuditHandle.disclose`.
    """
    state = request.scope["state"].setdefault(_DISCLOSED, {})
    for name, ids in (("subject_ids", subject_ids), ("study_ids", study_ids), ("series_ids", series_ids), ("instance_ids", instance_ids)):
        state.setdefault(name, []).extend(ids)


def recorded_in_thread(handler: F) -> F:
    """Decorate a sync handler that takes ``conn``: its success is recorded in its own worker thread.

    When the handler returns, the entry is written for the route's status on
    the request's connection, which then goes back to the pool, all before
    the thread hop ends. A handler that raises is recorded by the middleware
    as before (with the error's status). Should the response still end
    otherwise (its body failing to serialise), the middleware adds an entry
    for the status the client got. Should the entry fail, the handler raises
    :class:`~imaging_sync.errors.AuditUnavailableError` and the middleware
    answers ``503 audit_unavailable`` whatever the error mapping made of it.
    """

    if "conn" not in inspect.signature(handler).parameters:
        raise TypeError(f"{handler.__qualname__}: recorded_in_thread needs the handler to take `conn` (the request's connection)")

    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Any:
        result = handler(*args, **kwargs)
        scope: Scope = kwargs["conn"].request_scope
        # Only HTTP route handlers are recorded_in_thread (websocket and ASGI handlers have no status).
        status = cast(HTTPRouteHandler, scope["route_handler"]).status_code
        try:
            _write(scope, status)
        except Exception:
            scope["state"][_UNRECORDED] = True
            raise
        scope["state"][_RECORDED] = status
        return result

    return cast(F, run)  # functools.wraps keeps the handler's signature, which Litestar reads


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
    if not peer_is_trusted(scope, trusted):
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


def peer_is_trusted(scope: Scope, trusted: Sequence[IpNetwork]) -> bool:
    """The direct peer is one of ``api.trusted_proxies``: only then may its forwarded headers be believed."""
    peer = (scope.get("client") or (None,))[0]
    return bool(trusted) and peer is not None and _is_trusted(peer, trusted)


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
        if scope["type"] != ScopeType.HTTP:
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
                if scope["state"].get(_UNRECORDED):  # the handler's thread could not: refuse, and record the refusal if possible
                    replaced = True
                    scope["state"]["error_code"] = "audit_unavailable"
                    await _try_write(scope, 503, "audit entry of a refused response could not be written either")
                    await _send_audit_unavailable(scope, send)
                    return
                try:
                    await anyio.to_thread.run_sync(_write, scope, message["status"])
                except Exception as error:
                    _log_failure("audit entry could not be written; refusing the response", error, scope)
                    replaced = True
                    await _send_audit_unavailable(scope, send)
                    return
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if not started:  # escaped every handler: the outer one answers 500; record that too
                await _try_write(scope, 500, "audit entry of a failed request could not be written")
            raise
        finally:
            if scope["state"].get("db_connection") is not None:
                await anyio.to_thread.run_sync(release, scope)


async def _try_write(scope: Scope, status: int, failure: str) -> None:
    try:
        await anyio.to_thread.run_sync(_write, scope, status)
    except Exception as error:
        _log_failure(failure, error, scope)


def _log_failure(message: str, error: BaseException, scope: Scope) -> None:
    """The failure's class (and SQLSTATE), never its text nor its traceback: both can quote the entry's values."""
    log.error("%s (%s)", message, describe_failure(error), extra={"request_id": scope["state"].get("request_id")})


def _write(scope: Scope, status: int) -> None:
    """Record the entry in a transaction of its own on the request's connection, then give the connection back.

    A success records whose data it disclosed (:func:`disclosed`) in the same
    statement (PostgreSQL, where the connection is in autocommit) or
    transaction (SQLite).
    """
    services = scope["litestar_app"].state["services"]
    if status == 401 and scope["state"].get("principal") is None:  # unauthenticated: counted, not an entry each
        refusal = build_refusal(scope, services.trusted_proxies)
        try:
            with write_transaction(scope_connection(scope)) as conn:
                audit_refusals.count(conn, refusal)
        except SQLAlchemyError as error:
            raise AuditUnavailableError(f"the audit log could not count the refusal: {describe_failure(error)}") from None
        finally:
            release(scope)
        return
    event = build_event(scope, status, services.trusted_proxies)
    disclosures = scope["state"].get(_DISCLOSED, {}) if status < 400 else {}
    try:
        with write_transaction(scope_connection(scope)) as conn:
            audit.record(conn, event, **disclosures)
    except SQLAlchemyError as error:  # taking the connection or committing (the statement's own failures are typed already)
        raise AuditUnavailableError(f"the audit log could not record the access: {describe_failure(error)}") from None
    finally:
        release(scope)


def build_refusal(scope: Scope, trusted: Sequence[IpNetwork]) -> audit_refusals.Refusal:
    """An unauthenticated request (401) as the core counts it: the address, the method and path (no query), why."""
    state = scope.get("state", {})
    method = scope.get("method")
    tried = audit_refusals.http_attempt(
        method if isinstance(method, str) else None, scope.get("path"),
        reason=state.get(_NOTE, {}).get("detail", {}).get("auth_failure"), claimed_prefix=state.get("claimed_prefix"),
    )
    return audit_refusals.Refusal(channel="http", client_addr=client_address(scope, trusted), tried=tried)


def build_event(scope: Scope, status: int, trusted: Sequence[IpNetwork]) -> AuditEvent:
    state = scope.get("state", {})
    handler = scope.get("route_handler")
    method = scope.get("method")
    spec: AuditSpec | None = (handler.opt or {}).get("audit") if handler is not None else None
    noted = state.get(_NOTE, {})
    principal = state.get("principal")
    resource_type = noted.get("resource_type") or (spec.resource_type if spec else None)
    resource_id = noted.get("resource_id")
    if resource_id is None and spec and spec.id_param:
        raw = scope.get("path_params", {}).get(spec.id_param)
        resource_id = None if raw is None else str(raw)
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
        method=method if isinstance(method, str) else None,  # HTTP scopes have one, websocket scopes none
        path=scope.get("path"),
        query=_query(scope) or None,
        resource_type=resource_type,
        resource_id=resource_id,
        status=status,
        detail=detail or None,
    )


def _query(scope: Scope) -> dict[str, Any]:
    """The query filters as given (repeated keys become lists), cleaned and capped by the core like every value."""
    raw = scope.get("query_string", b"").decode("utf-8", "replace")
    result: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        if key in result:
            existing = result[key]
            result[key] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            result[key] = value
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


__all__ = ["AuditMiddleware", "AuditSpec", "audited", "build_event", "client_address", "disclosed", "note", "outcome_for", "parse_trusted_proxies", "peer_is_trusted", "request_id"]
