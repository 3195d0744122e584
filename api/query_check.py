"""Query parameters an endpoint does not take are refused, not ignored.

A typo ignored is a wrong answer that looks right: ``/studies?patientid=X``
would list every study rather than one patient's, and ``limit=10&limit=100``
would quietly use one of the two. Both are a 400 naming the parameter, as any
other bad parameter is.

What an endpoint takes is read from the app's OpenAPI document, the same
document clients are generated from, so the check cannot drift from what is
published. Only ``/api/v1`` is checked: probes and the docs ignore whatever a
load balancer or a browser appends.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request
from litestar.openapi.spec import OpenAPI, Parameter, Schema

from imaging_sync.errors import ValidationError

_STATE_KEY = "query_parameters"
_METHODS = ("get", "put", "post", "delete", "patch")
_NAME_SHOWN = 64

# (HTTP method, path template) -> query parameter name -> whether it may be repeated
Allowed = dict[tuple[str, str], dict[str, bool]]


def allowed_query_parameters(schema: OpenAPI, prefix: str) -> Allowed:
    """Every operation under ``prefix`` in ``schema`` with the query parameters it declares."""
    allowed: Allowed = {}
    for path, item in (schema.paths or {}).items():
        if not path.startswith(prefix):
            continue
        for method in _METHODS:
            operation = getattr(item, method, None)
            if operation is None:
                continue
            names = {
                p.name: _repeatable(p)
                for p in (operation.parameters or [])
                if isinstance(p, Parameter) and p.param_in == "query"
            }
            allowed[(method.upper(), path)] = names
    return allowed


def _repeatable(parameter: Parameter) -> bool:
    schema = parameter.schema
    if not isinstance(schema, Schema):
        return False
    variants = [schema, *(s for s in (schema.one_of or []) if isinstance(s, Schema))]
    return any(v.type == "array" or (isinstance(v.type, list) and "array" in v.type) for v in variants)


class QueryCheck:
    """``before_request`` hook of the ``/api/v1`` router; ``load`` (at start-up, else on first use) builds its table.

    A coroutine on purpose: Litestar runs a plain function hook in a worker thread,
    a thread hop per request for a check of a few microseconds. The table lives in
    the app's state: Litestar registers copies of the hook, not this object.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def load(self, app: Litestar) -> None:
        app.state[_STATE_KEY] = allowed_query_parameters(app.openapi_schema, self.prefix)

    async def __call__(self, request: Request[Any, Any, Any]) -> None:
        if not request.scope.get("query_string"):
            return
        allowed: Allowed | None = request.app.state.get(_STATE_KEY)
        if allowed is None:  # served without a lifespan start-up (uvicorn --lifespan off): build it now
            self.load(request.app)
            allowed = request.app.state[_STATE_KEY]
        names = allowed.get((request.method, request.scope["path_template"]))
        if names is None:  # not a published operation: nothing to check against
            return
        seen: set[str] = set()
        for name, _ in request.query_params.multi_items():
            if name not in names:
                takes = ", ".join(sorted(names)) or "none"
                shown = name if len(name) <= _NAME_SHOWN else name[:_NAME_SHOWN] + "…"  # echoed back: bounded
                raise ValidationError(shown, f"is not a parameter of this endpoint (it takes: {takes})")
            if name in seen and not names[name]:
                raise ValidationError(name, "must be given at most once")
            seen.add(name)


__all__ = ["QueryCheck", "allowed_query_parameters"]
