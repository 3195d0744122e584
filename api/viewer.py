"""The OHIF Viewer at ``/viewer/`` on the API's own origin, its DICOMweb data source pointed at this server.

The site is the one ``imaging-sync viewer install`` unpacked (``[dicomweb]
viewer_dir``); it is public static files, like any web app's, so no key and
no audit entry: what it shows comes from ``/dicomweb``, where both apply.
``app-config.js`` is not the package's: it is written here, per process
(:func:`app_config`), with the data source at ``/dicomweb`` of the origin the
page was loaded from (so it works behind a proxy at any host), study lazy
loading, WADO-RS rendering, and OHIF's "investigational use" dialog off.

With ``[dicomweb] viewer_key_*`` set (the demo), the config also makes the
page send that key as ``Authorization: Bearer`` on its ``/dicomweb``
requests (XMLHttpRequest and fetch, same origin only): whoever can open the
page reads with that key, which is why only the demo on 127.0.0.1 sets it. A
shared deployment signs users in instead (OHIF's OpenID Connect), see
``docs/dicomweb.md``.

Any other path under ``/viewer/`` that is not a file of the site answers
``index.html``: OHIF routes in the browser (``/viewer/viewer?StudyInstanceUIDs=…``).
"""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from typing import Annotated, Any

from litestar import Response, Router, get
from litestar.exceptions import NotFoundException
from litestar.params import PathParameter
from litestar.response import File

from imaging_sync.config import DicomwebConfig, read_secret
from imaging_sync.errors import ConfigError

MOUNT = "/viewer"
_TYPES = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8", ".wasm": "application/wasm", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".json": "application/json", ".svg": "image/svg+xml", ".woff2": "font/woff2"}
_NO_STORE = {"Cache-Control": "no-store"}


def app_config(key: str | None) -> str:
    """OHIF's ``window.config`` for this server (and, with ``key``, the requests' Authorization header)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "imaging-sync",
        "configuration": {
            "friendlyName": "imaging-sync: the partners' studies",
            "name": "imaging-sync",
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "video,pdf",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": MOUNT,
        "showStudyList": True,
        "investigationalUseDialog": {"option": "never"},
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "maxNumberOfWebWorkers": 3,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "defaultDataSourceName": "imaging-sync",
        "dataSources": [source],
    }
    lines = [
        "// Written by imaging-sync (api/viewer.py) for this server; not the package's own app-config.js.",
        f"window.config = {json.dumps(config, indent=2)};",
        "(function (cfg) {",
        "  var root = window.location.origin + '/dicomweb';",
        "  cfg.qidoRoot = root; cfg.wadoRoot = root; cfg.wadoUriRoot = root + '/wado';",
        "})(window.config.dataSources[0].configuration);",
    ]
    if key is not None:
        lines += [
            "(function (key) {",
            "  function ours(url) {",
            "    var u = new URL(url, window.location.href);",
            "    return u.origin === window.location.origin && u.pathname.indexOf('/dicomweb/') === 0;",
            "  }",
            "  var open = XMLHttpRequest.prototype.open, send = XMLHttpRequest.prototype.send;",
            "  XMLHttpRequest.prototype.open = function (method, url) { this.__imagingSync = ours(url); return open.apply(this, arguments); };",
            "  XMLHttpRequest.prototype.send = function () {",
            "    if (this.__imagingSync) { this.setRequestHeader('Authorization', 'Bearer ' + key); }",
            "    return send.apply(this, arguments);",
            "  };",
            "  var fetch0 = window.fetch.bind(window);",
            "  window.fetch = function (input, init) {",
            "    var url = typeof input === 'string' ? input : input.url;",
            "    if (!ours(url)) { return fetch0(input, init); }",
            "    var headers = new Headers((init && init.headers) || (typeof input === 'string' ? undefined : input.headers));",
            "    headers.set('Authorization', 'Bearer ' + key);",
            "    return fetch0(input, Object.assign({}, init || {}, { headers: headers }));",
            "  };",
            f"}})({json.dumps(key)});",
        ]
    return "\n".join(lines) + "\n"


def viewer_router(directory: Path, *, key: str | None = None) -> Router:
    """``/viewer/``: the installed site from ``directory``, with this server's ``app-config.js``."""
    root = directory.resolve()
    config_js = app_config(key).encode()

    @get("/", include_in_schema=False, sync_to_thread=False)
    def index() -> Response[bytes]:
        return _index(root)

    @get("/{path:path}", include_in_schema=False, sync_to_thread=True)
    def asset(path: Annotated[str, PathParameter(description="A file of the site, or a route of the app.")]) -> Any:
        if path.lstrip("/") == "app-config.js":
            return Response(content=config_js, media_type=_TYPES[".js"], headers=_NO_STORE)
        relative = path.lstrip("/")
        candidate = (root / relative).resolve()
        if relative and candidate.is_relative_to(root) and candidate.is_file() and not candidate.name.startswith("."):
            media_type = _TYPES.get(candidate.suffix) or mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
            return File(path=candidate, media_type=media_type, content_disposition_type="inline", headers={"Cache-Control": "public, max-age=3600"})
        if Path(relative).suffix in (".js", ".css", ".wasm", ".png", ".json", ".ico", ".woff2", ".map"):
            raise NotFoundException("no such file in the viewer")
        return _index(root)  # a route of the single-page app

    return Router(path=MOUNT, route_handlers=[index, asset], include_in_schema=False)


def viewer_for(config: DicomwebConfig) -> Router | None:
    """The viewer ``[dicomweb]`` asks for, or None; ConfigError when ``viewer_dir`` holds no installed viewer."""
    if config.viewer_dir is None:
        return None
    directory = Path(config.viewer_dir)
    if not (directory / "index.html").is_file():
        raise ConfigError("dicomweb.viewer_dir", f"{directory} holds no viewer: run `imaging-sync viewer install --dir {directory}`")
    key = read_secret("dicomweb.viewer_key", config.viewer_key_env, config.viewer_key_file)
    return viewer_router(directory, key=key.reveal() if key is not None else None)


def _index(root: Path) -> Response[bytes]:
    return Response(content=(root / "index.html").read_bytes(), media_type=_TYPES[".html"], headers=_NO_STORE)


__all__ = ["MOUNT", "app_config", "viewer_for", "viewer_router"]
