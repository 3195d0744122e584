"""Fixtures of the API tests: the REST API over real components.

SQLite and PostgreSQL (``db_url``), an embedded S3 with buckets in two
regions and per-bucket keys (``devtools.storage``), real API keys, Litestar's
TestClient. Helpers (settings, index builder, …) are in ``api_fixtures``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from api_fixtures import IndexBuilder, Keys, RecordingLauncher, make_settings
from litestar import Litestar
from litestar.testing import TestClient
from required import require

from api.app import create_app
from app.assembly import open_core
from devtools.storage import EmbeddedStorage, embedded_storage
from imaging_sync import apikeys
from imaging_sync.config import Settings
from imaging_sync.core import Core

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def s3() -> Iterator[EmbeddedStorage]:
    """One embedded S3 for the session: bucket 0 in eu-west-1 (partner b), bucket 1 in ap-northeast-2 (partner c)."""
    with embedded_storage(("eu-west-1", "ap-northeast-2"), presign_default_seconds=300, presign_max_seconds=3600) as storage:
        yield storage


@pytest.fixture
def settings(db_url: str, s3: EmbeddedStorage) -> Settings:
    return make_settings(db_url, s3.config, [b.name for b in s3.buckets])


@pytest.fixture
def core(settings: Settings) -> Iterator[Core]:
    core = open_core(settings, configure_logs=False)
    yield core
    core.close()


@pytest.fixture
def launcher() -> RecordingLauncher:
    return RecordingLauncher()


@pytest.fixture
def app(core: Core, s3: EmbeddedStorage, launcher: RecordingLauncher) -> Litestar:
    return create_app(core, registry=s3.registry(), launcher=launcher)


@pytest.fixture
def client(app: Litestar) -> Iterator[TestClient[Litestar]]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def keys(core: Core) -> Keys:
    tokens, ids = {}, {}
    with core.engine.begin() as conn:
        for role in apikeys.ROLES:
            info, tokens[role] = apikeys.create_key(conn, f"test {role}", role)
            ids[role] = info.id
    return Keys(ids=ids, **tokens)


@pytest.fixture
def index(core: Core) -> IndexBuilder:
    return IndexBuilder(core.engine)


def _browser_problem() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def chromium(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    """Debian's chromium under Playwright, headless, its background services off; skips (or fails) without them.
    Its command line is CHROMIUM_ARGS, or what a test passes indirectly (WEBGL_ARGS for image rendering)."""
    require(_browser_problem())
    monkeypatch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")  # belt and braces: nothing here installs a browser
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=getattr(request, "param", CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()
