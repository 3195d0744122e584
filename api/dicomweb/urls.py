"""This server's DICOMweb address as the client reached it, for RetrieveURL and BulkDataURI (PS3.18 10.6.3).

From the request's scheme and ``Host``; behind a proxy listed in
``api.trusted_proxies`` from its ``X-Forwarded-Proto``, ``X-Forwarded-Host``
and ``X-Forwarded-Prefix`` (a viewer reaches ``https://pacs.example/imaging``,
the proxy forwards to ``http://10.0.0.5:8080``). Anybody else's forwarded
headers are ignored: a client must not make the server hand out links to
another host. A host that is not a host name or address with an optional
port is not used.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from litestar import Request

from api.auditing import IpNetwork, peer_is_trusted

MOUNT = "/dicomweb"
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~-]+)*")


def base_url(request: Request[Any, Any, Any], trusted: Sequence[IpNetwork]) -> str:
    """``scheme://host[:port][prefix]/dicomweb`` as this request reached the server."""
    scheme = request.url.scheme
    host = request.headers.get("host", "")
    prefix = request.scope.get("root_path", "") or ""
    if peer_is_trusted(request.scope, trusted):
        scheme = _first(request.headers.get("x-forwarded-proto")) or scheme
        host = _first(request.headers.get("x-forwarded-host")) or host
        prefix = _first(request.headers.get("x-forwarded-prefix")) or prefix
    if scheme not in ("http", "https"):
        scheme = request.url.scheme
    if not _HOST.fullmatch(host):
        server = request.scope.get("server") or ("localhost", None)
        host = server[0] if server[1] in (None, 80, 443) else f"{server[0]}:{server[1]}"
    prefix = prefix.rstrip("/")
    if not _PREFIX.fullmatch(prefix):
        prefix = ""
    return f"{scheme}://{host}{prefix}{MOUNT}"


def _first(value: str | None) -> str | None:
    """The first of a comma list (proxies append theirs), lower-cased where it is a scheme or host."""
    if not value:
        return None
    first = value.split(",")[0].strip()
    return first or None


__all__ = ["MOUNT", "base_url"]
