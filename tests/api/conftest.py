"""Fixtures of the API tests: the REST API over real components.

SQLite and PostgreSQL (``db_url``), an embedded S3 with buckets in two
regions and per-bucket keys (``devtools.storage``), real API keys, Litestar's
TestClient. Helpers (settings, index builder, …) are in ``api_fixtures``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_fixtures import IndexBuilder, Keys, RecordingLauncher, make_settings
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from app.assembly import open_core
from devtools.storage import EmbeddedStorage, embedded_storage
from imaging_sync import apikeys
from imaging_sync.config import Settings
from imaging_sync.core import Core


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
