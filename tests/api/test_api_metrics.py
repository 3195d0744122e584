"""/metrics exposes the named series after a sync, read from the database."""

from __future__ import annotations

import msgspec
from api_fixtures import Keys
from litestar.testing import TestClient

from app.assembly import api_app, open_core
from devtools.datagen import DatasetSpec
from devtools.factories import TEST_API_KEY, UNREACHED_WEBHOOK, simulator_partner
from devtools.simulator import PartnerSimulator, SimulatorConfig
from devtools.storage import EmbeddedStorage
from imaging_sync.config import OutboxConfig, WebhookConfig
from imaging_sync.core import Core


def test_metrics_after_a_sync_and_some_requests(core: Core, s3: EmbeddedStorage, keys: Keys) -> None:
    with PartnerSimulator(DatasetSpec(partner="b", studies=4), SimulatorConfig(api_key=TEST_API_KEY)) as sim:
        outbox = OutboxConfig(webhook=WebhookConfig(url=UNREACHED_WEBHOOK))  # the sync writes events only for a sink
        settings = msgspec.structs.replace(core.settings, partners={"b": simulator_partner("b", sim.base_url)}, outbox=outbox)
        live = open_core(settings, configure_logs=False)
        try:
            assert live.runner.sync("b").ok
            with TestClient(api_app(live, s3.registry())) as client:
                assert client.get("/api/v1/studies", headers=keys.headers("viewer")).status_code == 200
                unknown = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
                assert client.get(f"/api/v1/studies/{unknown}", headers=keys.headers("viewer")).status_code == 404
                response = client.get("/metrics")
        finally:
            live.close()
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'imaging_sync_sync_runs_total{partner="b",status="succeeded"} 1.0' in text
    assert 'imaging_sync_sync_items_total{outcome="created",partner="b"} 4.0' in text or 'imaging_sync_sync_items_total{partner="b",outcome="created"} 4.0' in text
    assert "imaging_sync_sync_run_duration_seconds_bucket" in text
    assert 'imaging_sync_outbox_events{status="pending"} 4.0' in text
    assert "imaging_sync_outbox_oldest_pending_age_seconds" in text
    assert "imaging_sync_dicom_operations_total" in text or "# TYPE imaging_sync_dicom_operations counter" in text
    assert "imaging_sync_api_request_duration_seconds" in text and "/api/v1/studies" in text
    # Labelled by route template, never by the concrete path (one series per route, not per id).
    assert 'method="GET",path="/api/v1/studies/{study_id}",status_code="404"' in text
    assert unknown not in text
