"""The interactive API docs (Swagger UI), served whole by the app: they work without internet.

Hospital networks often have no route to the internet, and a docs page that
loads Swagger UI from a CDN (Litestar's default, jsDelivr) stays blank there.
Here the page, its script, its style sheet and its icon all come from this
app: Swagger UI 5 (which renders OpenAPI 3.1), the served files of npm's
``swagger-ui-dist`` shipped in this package (``api/static/swagger-ui``, with
their licence texts and ``SOURCE.json``: version, registry integrity hash,
each file's SHA-256; refreshed by ``devtools/vendor_swagger_ui.py``). Python
distributions of it were 25 MB of editor bundles and source maps around these
1.9 MB, or Swagger UI 4, which refuses a 3.1 document. Nothing on the page reaches
another host: ``validatorUrl`` is null, so the document is never sent to
validator.swagger.io, and there is no web font.

The files are served from an allowlist under
``/api/v1/docs/assets/<Swagger UI version>/<name>``; a name is looked up,
never joined to a path, so nothing else on disk can be asked for. The version
in the path lets browsers keep the files for a year: upgrading the package
changes the URL. Like the page and the OpenAPI document, the files need no API
key and are not audited (they are public files of a public package).
"""

from __future__ import annotations

import functools
import html
import json
from importlib import resources
from typing import Annotated, Any

from litestar import MediaType, Request, Response, Router, get
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.params import PathParameter

STATIC = resources.files("api") / "static" / "swagger-ui"
SOURCE = json.loads((STATIC / "SOURCE.json").read_text(encoding="utf-8"))
VERSION: str = SOURCE["version"]
CACHE_CONTROL = "public, max-age=31536000, immutable"  # a year: the URL changes with the Swagger UI version

# name -> media type: the only files served (of those in api/static/swagger-ui); Litestar adds
# "; charset=utf-8" to the text types.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",  # RFC 9239
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}

_PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<style>body {{ margin: 0 }}</style>
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({{
  spec: {spec},
  dom_id: "#swagger-ui",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null
}});
</script>
</body>
</html>
"""


class SwaggerUI(OpenAPIRenderPlugin):
    """Swagger UI over the app's OpenAPI document, every file from ``assets_url``.

    An OpenAPI render plugin, so Litestar serves it at ``<schema path>/swagger``
    too; the ``/docs`` page renders the same.
    """

    def __init__(self, assets_url: str, *, path: str = "/swagger") -> None:
        super().__init__(path=path, favicon="", style="")
        self.assets_url = assets_url

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        # "</" inside the inline script would end it early: escaped, as JSON allows.
        spec = self.render_json(request, openapi_schema).replace(b"</", b"<\\/").decode()
        title = html.escape(str(openapi_schema["info"]["title"]))
        return _PAGE.format(title=title, assets=self.assets_url, spec=spec).encode()


def docs_router(prefix: str) -> tuple[Router, SwaggerUI]:
    """The docs page and its files under ``{prefix}/docs``, and the page as a render plugin for ``OpenAPIConfig``."""
    swagger = SwaggerUI(f"{prefix}/docs/assets/{VERSION}")

    @get("/", include_in_schema=False, media_type=MediaType.HTML, sync_to_thread=False)
    def docs_page(request: Request[Any, Any, Any]) -> bytes:
        """Swagger UI over this app's schema (also at ``{prefix}/schema/swagger``)."""
        return swagger.render(request, request.app.openapi_schema.to_schema())

    @get(f"/assets/{VERSION}/{{name:str}}", include_in_schema=False, sync_to_thread=False)
    def docs_asset(name: Annotated[str, PathParameter()]) -> Response[bytes]:
        """One file of the allowlist; any other name is a 404 like an unknown path."""
        media_type = ASSETS.get(name)
        if media_type is None:
            raise NotFoundException()
        return Response(_read(name), media_type=media_type, headers={"Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"})

    return Router(path=f"{prefix}/docs", route_handlers=[docs_page, docs_asset]), swagger


@functools.cache
def _read(name: str) -> bytes:
    """The file's bytes, read once per process (about 1.6 MB for all three)."""
    return (STATIC / name).read_bytes()


__all__ = ["ASSETS", "CACHE_CONTROL", "VERSION", "SwaggerUI", "docs_router"]
