"""A browser on a configured origin may call the API; other origins, and every origin by default, get no CORS grant."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_fixtures import IndexBuilder, Keys, RecordingLauncher, make_settings
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import func, select

from api.app import create_app
from app.assembly import open_core
from devtools.storage import EmbeddedStorage
from imaging_sync.config import ApiConfig, Settings, load_settings
from imaging_sync.core import Core
from imaging_sync.db.models import AuditEntry
from imaging_sync.errors import ConfigError

PLATFORM = "https://platform.example"
PREFLIGHT = {"Origin": PLATFORM, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}


@pytest.fixture
def settings(db_url: str, s3: EmbeddedStorage) -> Settings:
    """The shared fixtures' settings with two origins allowed: core, app, client and keys follow."""
    return make_settings(db_url, s3.config, [b.name for b in s3.buckets], cors_allowed_origins=[PLATFORM, "http://127.0.0.1:5173"])


def audit_count(core: Core) -> int:
    with core.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(AuditEntry)).scalar_one())


def test_a_preflight_from_a_configured_origin_is_granted_without_a_key_or_an_audit_entry(client: TestClient[Litestar], core: Core) -> None:
    before = audit_count(core)

    response = client.options("/api/v1/studies", headers=PREFLIGHT)

    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == PLATFORM
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert set(response.headers["access-control-allow-methods"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert audit_count(core) == before


def test_the_request_after_it_may_read_the_answer_and_its_request_id(client: TestClient[Litestar], keys: Keys, core: Core, index: IndexBuilder) -> None:
    index.study(index.subject("P-CORS", "KIM^CORS"))
    before = audit_count(core)

    response = client.get("/api/v1/studies", params={"patient_id": "P-CORS"}, headers={"Origin": PLATFORM, **keys.headers("viewer")})

    assert response.status_code == 200 and len(response.json()["items"]) == 1
    assert response.headers["access-control-allow-origin"] == PLATFORM
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-credentials" not in response.headers
    assert audit_count(core) == before + 1


def test_another_origin_gets_no_grant(client: TestClient[Litestar], keys: Keys) -> None:
    other = {"Origin": "https://evil.example"}

    preflight = client.options("/api/v1/studies", headers={**PREFLIGHT, **other})
    response = client.get("/api/v1/studies", headers={**other, **keys.headers("viewer")})

    assert "access-control-allow-origin" not in preflight.headers and preflight.status_code >= 400
    assert "access-control-allow-origin" not in response.headers


def test_no_origin_is_granted_unless_configured(db_url: str, s3: EmbeddedStorage) -> None:
    core = open_core(make_settings(db_url, s3.config, [b.name for b in s3.buckets]), configure_logs=False)
    try:
        with TestClient(create_app(core, registry=s3.registry(), launcher=RecordingLauncher())) as default_client:
            preflight = default_client.options("/api/v1/studies", headers=PREFLIGHT)
            response = default_client.get("/api/v1/studies", headers={"Origin": PLATFORM})
    finally:
        core.close()

    assert preflight.status_code == 401 and response.status_code == 401, "no preflight shortcut: OPTIONS is an API call like any other"
    assert not any(name.startswith("access-control-") for name in (*preflight.headers, *response.headers))


@pytest.mark.parametrize("origin", ["*", "https://platform.example/", "https://*.example", "https://Platform.example", "platform.example"])
def test_an_origin_browsers_would_never_send_is_a_config_error(origin: str) -> None:
    with pytest.raises(ValueError, match="cors_allowed_origins"):
        ApiConfig(cors_allowed_origins=[origin])


def test_the_config_error_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "imaging-sync.toml"
    path.write_text('[api]\ncors_allowed_origins = ["https://platform.example/app"]\n')

    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})

    assert caught.value.key == "api.cors_allowed_origins"


def test_a_dicomweb_viewers_preflight_for_a_quoted_multipart_accept_is_granted(client: TestClient[Litestar], keys: Keys, index: IndexBuilder) -> None:
    """OHIF asking for frames sends ``Accept: multipart/related; type="application/octet-stream"; transfer-syntax=*``:
    not a CORS-safelisted value, so the browser asks first for ``accept, authorization``."""
    preflight = {"Origin": PLATFORM, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "accept, authorization"}
    response = client.options("/dicomweb/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1", headers=preflight)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == PLATFORM
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"accept", "authorization"} <= allowed
    index.study(index.subject("P-CORS-WEB", "KIM^CORS"))
    search = client.get("/dicomweb/studies", headers={**keys.headers("viewer"), "Origin": PLATFORM})
    assert search.status_code == 200 and search.headers["access-control-allow-origin"] == PLATFORM
    assert "warning" in search.headers["access-control-expose-headers"].lower()
