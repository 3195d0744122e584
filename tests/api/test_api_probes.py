"""/health and /ready: no key, no audit, and a 503 that names the part that is not ready."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from api_fixtures import RecordingLauncher, make_settings
from litestar.testing import TestClient

from api.app import create_app
from app.assembly import open_core
from devtools.storage import EmbeddedStorage
from imaging_sync.config import BucketConfig, StorageConfig
from storage.registry import BucketRegistry


def ready(settings, registry=None) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    core = open_core(settings, configure_logs=False)
    try:
        with TestClient(create_app(core, registry=registry, launcher=RecordingLauncher())) as client:
            assert client.get("/health").status_code == 200  # alive whatever else is wrong
            response = client.get("/ready")
            return response.status_code, response.json()
    finally:
        core.close()


def test_ready_names_a_schema_that_is_not_migrated(tmp_path: Path, s3: EmbeddedStorage) -> None:
    status, body = ready(make_settings(f"sqlite:///{tmp_path / 'empty.db'}", s3.config, [b.name for b in s3.buckets]), s3.registry())
    assert status == 503 and body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] and not body["checks"]["migrations"]["ok"]
    assert "imaging-sync db upgrade" in body["checks"]["migrations"]["detail"]


def test_ready_names_an_unreachable_database(s3: EmbeddedStorage) -> None:
    status, body = ready(make_settings("postgresql+psycopg://nobody@127.0.0.1:1/none", s3.config, [b.name for b in s3.buckets]), s3.registry())
    assert status == 503 and not body["checks"]["database"]["ok"] and not body["checks"]["migrations"]["ok"]
    assert "nobody" not in str(body)


def test_ready_names_storage_without_credentials(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    storage = StorageConfig(buckets={"bucket-without-keys": BucketConfig(region="eu-west-1", endpoint_url="http://127.0.0.1:1", auth="default")})
    status, body = ready(make_settings(sqlite_url, storage, []), BucketRegistry(storage))
    assert status == 503 and body["checks"]["database"]["ok"] and body["checks"]["migrations"]["ok"]
    assert not body["checks"]["storage"]["ok"] and "1 of 1 bucket" in body["checks"]["storage"]["detail"]
    assert "bucket-without-keys" not in str(body)


def test_the_schema_documents_the_ready_probe_s_503(client: TestClient) -> None:  # type: ignore[type-arg]
    responses = client.get("/api/v1/schema/openapi.json").json()["paths"]["/ready"]["get"]["responses"]
    assert {"200", "503"} <= set(responses)
    assert "checks" in str(responses["503"])
