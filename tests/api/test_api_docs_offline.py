"""The docs page works with no internet: Swagger UI comes from the app, and nothing on the page leaves it.

The browser test starts the real app under uvicorn on 127.0.0.1 (``api.service.ApiService``,
a free port) and drives Debian's chromium with Playwright; every request to any other host
is aborted and recorded, as a hospital network without internet would refuse it. Without
chromium or playwright it skips with the reason; ``IMAGING_SYNC_REQUIRE_SERVICES=1`` turns
that skip into a failure. No browser is ever downloaded: Playwright gets chromium's path and
``playwright install`` is never run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest
from api_fixtures import make_settings
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import func, select

from api.docs import ASSETS, CACHE_CONTROL, VERSION
from api.service import ApiService
from app.assembly import api_app, open_core
from devtools.storage import EmbeddedStorage
from imaging_sync.core import Core
from imaging_sync.db.models import AuditEntry
from storage import BucketRegistry

if TYPE_CHECKING:
    from playwright.sync_api import Browser

DOCS_PAGES = ("/api/v1/docs", "/api/v1/schema/swagger")
ASSETS_URL = f"/api/v1/docs/assets/{VERSION}"
TITLE = "imaging-sync API"
CONTENT_TYPES = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8", "favicon-32x32.png": "image/png"}


def audit_count(core: Core) -> int:
    with core.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(AuditEntry)).scalar_one())


# (method, path) of every operation block; Swagger UI breaks long paths with zero-width spaces
OPERATIONS_SHOWN = """blocks => blocks.map(b => [
    b.querySelector('.opblock-summary-method').innerText.trim(),
    b.querySelector('.opblock-summary-path').innerText.replaceAll('\\u200b', '').trim(),
])"""


def published_operations(base_url: str) -> list[tuple[str, str]]:
    schema = httpx.get(f"{base_url}/api/v1/schema/openapi.json", timeout=10).json()
    methods = ("get", "put", "post", "delete", "patch", "head", "options")
    return [(method.upper(), path) for path, item in schema["paths"].items() for method in item if method in methods]


def page_urls(page: str) -> list[str]:
    """Every src= and href= of an HTML page."""
    return re.findall(r'(?:src|href)="([^"]*)"', page)


# --- plain HTTP ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCS_PAGES)
def test_the_docs_page_loads_only_files_the_app_serves(client: TestClient[Litestar], path: str) -> None:
    response = client.get(path)

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert sorted(page_urls(response.text)) == sorted(f"{ASSETS_URL}/{name}" for name in ASSETS)
    assert "https://" not in response.text and "http://" not in response.text
    assert "validatorUrl: null" in response.text, "the document is never sent to validator.swagger.io"
    assert f"<title>{TITLE}</title>" in response.text


def test_each_asset_is_served_with_its_type_and_a_long_cache_lifetime_without_a_key_or_an_audit_entry(client: TestClient[Litestar], core: Core) -> None:
    before = audit_count(core)

    for name, content_type in CONTENT_TYPES.items():
        response = client.get(f"{ASSETS_URL}/{name}", params={"v": "1"})  # a query string is ignored, not a 400

        assert response.status_code == 200, name
        assert response.headers["content-type"] == content_type
        assert response.headers["cache-control"] == CACHE_CONTROL
        assert response.headers["x-content-type-options"] == "nosniff"
        assert len(response.content) > 0
    assert set(CONTENT_TYPES) == set(ASSETS)
    assert audit_count(core) == before


@pytest.mark.parametrize(
    "path",
    [
        f"{ASSETS_URL}/index.html",  # in the package, not on the list
        f"{ASSETS_URL}/swagger-ui-bundle.js.map",
        f"{ASSETS_URL}/..%2F..%2F..%2F..%2Fapi%2Fapp.py",
        f"{ASSETS_URL}/%2e%2e%2fLICENSE",
        f"{ASSETS_URL}/..",
        f"{ASSETS_URL}/",
        "/api/v1/docs/assets/0.0.1/swagger-ui.css",  # another version of the package
        "/api/v1/docs/assets/swagger-ui.css",
    ],
)
def test_an_unknown_name_or_a_path_outside_the_list_is_a_404(client: TestClient[Litestar], path: str) -> None:
    response = client.get(path)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- a real browser, offline ---------------------------------------------------------------


@pytest.fixture
def live_api(sqlite_url: str, s3: EmbeddedStorage, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app under uvicorn on a free port of 127.0.0.1, as `imaging-sync serve` runs it; its base URL."""
    s3.export_environ(monkeypatch.setenv)
    core = open_core(make_settings(sqlite_url, s3.config, [b.name for b in s3.buckets], host="127.0.0.1", port=0), configure_logs=False)
    service = ApiService(api_app(core, BucketRegistry(core.settings.storage)), core.settings.api)
    try:
        service.start()
        yield f"http://127.0.0.1:{service.port}"
    finally:
        service.stop()
        core.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", DOCS_PAGES)
def test_the_docs_page_renders_every_operation_in_a_browser_that_cannot_reach_the_internet(chromium: Browser, live_api: str, path: str) -> None:
    from playwright.sync_api import Route
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    server = urlsplit(live_api).netloc
    left: list[str] = []  # requests that tried to leave the test server
    served: dict[str, int] = {}  # path -> status of everything the test server answered
    errors: list[str] = []

    def offline(route: Route) -> None:
        if urlsplit(route.request.url).netloc == server:
            route.continue_()
        else:
            left.append(route.request.url)
            route.abort("internetdisconnected")

    context = chromium.new_context()
    context.route("**/*", offline)
    page = context.new_page()
    page.on("response", lambda r: served.__setitem__(urlsplit(r.url).path, r.status))
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(live_api + path, wait_until="networkidle")
    try:
        page.wait_for_selector(".opblock", timeout=15_000)
    except PlaywrightTimeoutError:
        pass  # nothing rendered: the assertions below say why
    shown = [tuple(op) for op in page.locator(".opblock").evaluate_all(OPERATIONS_SHOWN)]
    titles = page.locator(".info .title").all_inner_texts()
    page_title = page.title()
    context.close()

    assert left == [], "nothing on the docs page may leave the app's host"
    assert errors == []
    assert ("GET", "/api/v1/studies") in shown
    assert sorted(shown) == sorted(published_operations(live_api)), "every operation of the OpenAPI document is on the page"
    assert len(titles) == 1 and TITLE in titles[0] and page_title == TITLE
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert served.get(f"{ASSETS_URL}/{name}") == 200, name
    assert all(status == 200 for p, status in served.items() if p.startswith("/api/v1/docs/assets/"))


def test_the_vendored_swagger_ui_files_are_the_ones_their_manifest_names() -> None:
    """api/static/swagger-ui/SOURCE.json: each served file (and licence text) with the SHA-256 it had when vendored."""
    import hashlib

    from api.docs import SOURCE, STATIC

    assert set(ASSETS) <= set(SOURCE["files"]), "every served file is vendored with its hash"
    assert {"LICENSE", "NOTICE"} <= set(SOURCE["files"])
    for name, digest in SOURCE["files"].items():
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, f"{name} differs from {SOURCE['purl']}"
    assert SOURCE["purl"] == f"pkg:npm/swagger-ui-dist@{VERSION}" and SOURCE["license"] == "Apache-2.0"
