"""The one place where exceptions become HTTP responses.

Every error body has the same shape (:class:`ErrorBody`)::

    {"error": {"code": "invalid", "message": "limit: must be at most 200",
               "details": {"field": "limit", "request_id": "…"}}}

``code`` is a stable string a client can switch on; ``message`` is safe to
show a person (for a 400 it starts with the field's name); ``details.field``
names the query parameter, path parameter or body field at fault (400 only);
``details.request_id`` (also the ``X-Request-ID`` header) finds the server's
log line. Bodies never carry stack traces, SQL, bucket
names, keys or secrets: for 5xx the detail is a fixed sentence and the cause
is logged, with the request id, for the operator.

Mapping (our exceptions, then Litestar's own):

=================================  ====  ===================
ValidationError (incl. storage     400   invalid
request errors), Litestar
ValidationException
AuthenticationError                401   unauthenticated (+ ``WWW-Authenticate: Bearer``)
AccessDeniedError                  403   forbidden
NotFoundError, unknown path        404   not_found
method not allowed                 405   method_not_allowed
SyncLockedError                    409   conflict
BucketNotAllowedError              502   storage_refused
StorageError                       503   storage_unavailable
QueueUnavailableError              503   queue_unavailable
AuditUnavailableError              503   audit_unavailable
DatabaseError, DB unreachable      503   database_unavailable
anything else                      500   internal
=================================  ====  ===================
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, MethodNotAllowedException
from litestar.exceptions import NotFoundException as RouteNotFound
from litestar.exceptions import ValidationException as LitestarValidationError
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from imaging_sync.errors import (
    AccessDeniedError,
    AuditUnavailableError,
    AuthenticationError,
    BucketNotAllowedError,
    DatabaseError,
    NotFoundError,
    ObjectNotFoundError,
    QueueUnavailableError,
    StorageError,
    SyncLockedError,
    ValidationError,
)
from imaging_sync.logs import describe_failure

log = logging.getLogger("api")

REQUEST_ID_HEADER = "X-Request-ID"


class ErrorDetails(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a client or an operator needs beyond the message."""

    field: str | None = None
    request_id: str | None = None


class ErrorInfo(msgspec.Struct, kw_only=True):
    code: str
    message: str
    details: ErrorDetails


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error response: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorInfo


def error_body(code: str, message: str, *, field: str | None = None, request_id: str | None = None) -> ErrorBody:
    """The body for an error; a field's name leads the message so a person reading it sees which one."""
    if field and not message.startswith(field):
        message = f"{field}: {message}"
    return ErrorBody(error=ErrorInfo(code=code, message=message, details=ErrorDetails(field=field, request_id=request_id)))


_ERROR_DESCRIPTIONS = {
    400: "Invalid input; `error.details.field` names the parameter.",
    401: "No API key, or an unknown, expired or revoked one (`WWW-Authenticate: Bearer`).",
    403: "The key's role may not use this endpoint.",
    404: "No such entity (or it was deleted), or no usable copy of the file.",
    409: "The partner is being synced right now.",
    502: "The file's location is outside the storage registry.",
    503: "Database, object storage or the audit log unavailable; retry later.",
}


def documented_errors(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI ``responses`` for a route: these statuses with the :class:`ErrorBody` shape."""
    return {status: ResponseSpec(data_container=ErrorBody, description=_ERROR_DESCRIPTIONS[status], generate_examples=False) for status in statuses}


PROTECTED = (400, 401, 403, 503)


def request_id(request: Request[Any, Any, Any]) -> str:
    """This request's id (made on first use, kept in the scope state for the logs and the audit entry)."""
    state = request.scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        rid = state["request_id"] = uuid.uuid4().hex
    return str(rid)


def classify(exc: BaseException) -> tuple[int, ErrorBody, dict[str, str]]:
    """Status, body and extra headers for an exception: the mapping itself, usable without a request."""
    if isinstance(exc, ValidationError):
        return 400, error_body("invalid", exc.reason, field=exc.path or None), {}
    if isinstance(exc, LitestarValidationError):
        field, detail = _litestar_validation(exc)
        return 400, error_body("invalid", detail, field=field), {}
    if isinstance(exc, AuthenticationError):
        # RFC 6750 §3: a presented but unusable token is error="invalid_token"; none presented, no error code.
        challenge = 'Bearer realm="imaging-sync"'
        if exc.presented:
            challenge += ', error="invalid_token"'
        return 401, error_body("unauthenticated", str(exc)), {"WWW-Authenticate": challenge}
    if isinstance(exc, AccessDeniedError):
        return 403, error_body("forbidden", str(exc)), {}
    if isinstance(exc, ObjectNotFoundError):  # its message names bucket and key: not for clients
        return 404, error_body("not_found", "the file is not available from any partner"), {}
    if isinstance(exc, NotFoundError):
        return 404, error_body("not_found", str(exc)), {}
    if isinstance(exc, SyncLockedError):
        return 409, error_body("conflict", f"partner {exc.partner!r} is being synced right now; try again when that run has finished"), {}
    if isinstance(exc, BucketNotAllowedError):
        return 502, error_body("storage_refused", "the file's location is not in the storage registry"), {}
    if isinstance(exc, StorageError):
        return 503, error_body("storage_unavailable", "object storage is unavailable; try again later"), {"Retry-After": "5"}
    if isinstance(exc, QueueUnavailableError):
        return 503, error_body("queue_unavailable", "the job queue is unavailable; the sync was not started, try again later"), {"Retry-After": "5"}
    if isinstance(exc, AuditUnavailableError):  # an access the log cannot show does not happen
        return 503, error_body("audit_unavailable", "the audit log cannot record this access right now; try again later"), {"Retry-After": "5"}
    if isinstance(exc, (DatabaseError, OperationalError, DisconnectionError, PoolTimeout)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return 503, error_body("database_unavailable", "the database is unavailable; try again later"), {"Retry-After": "5"}
    if isinstance(exc, RouteNotFound):
        return 404, error_body("not_found", "no such path"), {}
    if isinstance(exc, MethodNotAllowedException):
        return 405, error_body("method_not_allowed", "method not allowed for this path"), dict(exc.headers or {})
    if isinstance(exc, HTTPException) and exc.status_code == 400:  # e.g. a body that is not JSON
        detail = str(exc.detail)
        return 400, error_body("invalid", detail, field=_body_field(detail)), {}
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        code = exc.status_code
        return code, error_body(_code_name(code), str(exc.detail)), dict(exc.headers or {})
    return 500, error_body("internal", "internal error; the request id identifies it in the server log"), {}


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """Litestar exception handler for every exception (registered for ``Exception``)."""
    status, body, headers = classify(exc)
    rid = request_id(request)
    body.error.details.request_id = rid
    if status >= 500:
        # The cause goes to the log (with the request id), never to the client.
        # A database error by its class and SQLSTATE only, and without its traceback: its text can quote the values.
        log.error("request %s %s failed: %s", request.method, request.scope.get("path"), _safe(exc), extra={"request_id": rid},
                  exc_info=status == 500 and not isinstance(exc, DBAPIError))
    request.scope["state"]["error_code"] = body.error.code
    return Response(content=body, status_code=status, headers={**headers, REQUEST_ID_HEADER: rid}, media_type=MediaType.JSON)


def _litestar_validation(exc: LitestarValidationError) -> tuple[str | None, str]:
    """Litestar's parameter/body errors carry ``extra=[{"key": …, "message": …, "source": …}]``.

    With an optional body absent and a bad query parameter, Litestar lists a
    spurious ``{"key": "data", "message": "'data'"}`` first; the parameter at
    fault is the next entry.
    """
    extra = exc.extra
    if isinstance(extra, list):
        extra = [e for e in extra if not _absent_optional_body(e)] or extra
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        first = extra[0]
        key = first.get("key")
        message = str(first.get("message") or "invalid value")
        unknown = _UNKNOWN_FIELD.match(message)
        if unknown and first.get("source") == "body":
            return f"body.{unknown.group(1)}", "is not a field of this body"
        if first.get("source") == "body" and key:
            key = f"body.{key}"
        return (str(key) if key else "body" if first.get("source") == "body" else None), plain_message(message)
    detail = str(exc.detail or "invalid request")
    # "Validation failed for POST /x" repeats the URL (patient data may be in it): say less.
    if detail.startswith("Validation failed for"):
        detail = "invalid request"
    return _body_field(detail), detail


_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `([^`]+)`")
# msgspec's wording (the parser behind Litestar's parameters and bodies) -> ours, for people.
_PLAIN = [
    (re.compile(r"Expected `int(?: \| null)?`, got `.*`"), "must be a whole number"),
    (re.compile(r"Expected `int` >= (-?\d+)"), r"must be at least \1"),
    (re.compile(r"Expected `int` <= (-?\d+)"), r"must be at most \1"),
    (re.compile(r"Expected `bool(?: \| null)?`, got `.*`"), "must be true or false"),
    (re.compile(r"Expected `str(?: \| null)?`, got `.*`"), "must be a string"),
    (re.compile(r"Expected `array(?: \| null)?`, got `.*`"), "must be a list"),
    (re.compile(r"Expected `str` of length <= (\d+)"), r"must be at most \1 characters"),
    (re.compile(r"Expected `str` of length >= (\d+)"), r"must be at least \1 characters"),
    (re.compile(r"Invalid RFC3339 encoded date"), "must be a date, YYYY-MM-DD"),
    (re.compile(r"Invalid RFC3339 encoded datetime"), "must be a date-time, RFC 3339 (2026-11-22T08:00:00Z)"),
    (re.compile(r"Invalid UUID"), "must be a UUID"),
]


def plain_message(message: str) -> str:
    """A parser's message in words a frontend developer can show (``limit: must be a whole number``).

    msgspec says ``Expected `int | null`, got `str```; the field is named
    either way, and a message not in the table passes through unchanged.
    """
    core = message.split(" - at ")[0]  # msgspec appends where in the document; the field is named already
    for pattern, replacement in _PLAIN:
        if pattern.fullmatch(core):
            return pattern.sub(replacement, core)
    return message


def _body_field(detail: str) -> str | None:
    """``body`` when an error's text is about the request body (Litestar names no field for those)."""
    lowered = detail.lower()
    return "body" if "body" in lowered or "json" in lowered else None


def _absent_optional_body(entry: object) -> bool:
    return isinstance(entry, dict) and entry.get("source") == "body" and entry.get("key") == "data" and entry.get("message") == "'data'"


def _code_name(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def _safe(exc: BaseException) -> str:
    """Exception text for the log: a database error as ``logs.describe_failure`` gives it, others by their first line."""
    if isinstance(exc, DBAPIError):
        return describe_failure(exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
