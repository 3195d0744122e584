"""``Cache-Control: no-store`` on every response of the protected API, errors included.

What ``/api/v1`` answers is patient data, presigned URLs (bearer tokens to a
patient's files until they expire), sync runs with rejected items' payloads,
or the audit log. None of it may be kept by a browser's cache, a proxy or a
CDN between two people using one machine or one network (RFC 9111 §5.2.2.5:
``no-store``; a shared cache otherwise may keep a 200 or a 307 and serve it
to the next caller). The rule is by path, not by route, so it covers what no
handler produces: a guard's 401 or 403, a 400 for a parameter, a 404 for an
unknown path, the audit log's 503, a 307 to a presigned URL; an existing
``Cache-Control`` on such a response is replaced.

Left alone: the public documentation under ``/api/v1`` (the OpenAPI
description and the Swagger UI page and its assets: no key, nothing private,
and the assets are made to be cached for a year, see ``api.docs``), and
everything outside ``/api/v1`` (the probes set their own).

Wired in the app's ``before_send`` hooks, after any other hook that adds
headers::

    before_send=[_request_id_header, NoStore(API_PREFIX, public=(f"{API_PREFIX}/schema", f"{API_PREFIX}/docs"))]
"""

from __future__ import annotations

from collections.abc import Sequence

from litestar.types import Message, Scope

CACHE_CONTROL = b"cache-control"
NO_STORE = b"no-store"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


class NoStore:
    """A ``before_send`` hook: ``Cache-Control: no-store`` on every response under ``prefix`` but the ``public`` paths."""

    def __init__(self, prefix: str, *, public: Sequence[str] = ()) -> None:
        self.prefix = prefix
        self.public = tuple(public)

    def applies_to(self, path: str) -> bool:
        return _under(path, self.prefix) and not any(_under(path, p) for p in self.public)

    async def __call__(self, message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or not self.applies_to(scope.get("path", "")):
            return
        headers = [(name, value) for name, value in message.get("headers", ()) if name.lower() != CACHE_CONTROL]
        headers.append((CACHE_CONTROL, NO_STORE))
        message["headers"] = headers


__all__ = ["NoStore"]
