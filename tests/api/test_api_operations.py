"""Operator endpoints: a real background sync against the partner simulator, run history, rejected items."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from api_fixtures import Keys
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import insert, select

from app.assembly import api_app, open_core
from devtools.datagen import DatasetSpec
from devtools.factories import TEST_API_KEY, simulator_partner
from devtools.simulator import PartnerSimulator, SimulatorConfig
from devtools.storage import EmbeddedStorage
from devtools.waiting import eventually
from imaging_sync.core import Core
from imaging_sync.db.models import EntityLink, RejectedItem, SyncRun
from imaging_sync.ids import new_id
from imaging_sync.sync.lock import partner_lock


@pytest.fixture
def simulator() -> Iterator[PartnerSimulator]:
    sim = PartnerSimulator(DatasetSpec(partner="b", studies=6, series_per_study=2, instances_per_series=2), SimulatorConfig(api_key=TEST_API_KEY))
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def live_core(core: Core, simulator: PartnerSimulator) -> Iterator[Core]:
    """The core with partner b pointing at the simulator (and the runner the app factory wires by default)."""
    settings = msgspec.structs.replace(core.settings, partners={"b": simulator_partner("b", simulator.base_url, priority=10)})
    live = open_core(settings, configure_logs=False)
    yield live
    live.close()


@pytest.fixture
def live_client(live_core: Core, s3: EmbeddedStorage) -> Iterator[TestClient[Litestar]]:
    with TestClient(api_app(live_core, s3.registry())) as client:  # the real ThreadLauncher
        yield client


def wait_for_run(client: TestClient[Litestar], keys: Keys, run_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/api/v1/sync-runs/{run_id}", headers=keys.headers("operator")).json()["run"]
        return run if run["status"] != "running" else None

    return eventually(finished, timeout=30, interval=0.05, what=f"run {run_id} finished")


def test_a_triggered_sync_runs_in_the_background_and_its_run_is_visible(live_client: TestClient[Litestar], keys: Keys, live_core: Core) -> None:
    operator = keys.headers("operator")
    started = live_client.post("/api/v1/partners/b/sync", headers=operator)
    assert started.status_code == 202, started.text
    run = wait_for_run(live_client, keys, started.json()["run_id"])
    assert (run["status"], run["trigger"], run["fetched"], run["created"], run["instances"]) == ("succeeded", "api", 6, 6, 24)
    assert len(live_client.get("/api/v1/studies", headers=keys.headers("viewer")).json()["items"]) == 6

    (partner,) = live_client.get("/api/v1/partners", headers=operator).json()
    assert partner["name"] == "b" and partner["state"]["last_run"]["id"] == run["id"] and partner["state"]["bookmark"]
    assert partner["state"]["last_success_at"] is not None
    text = live_client.get("/api/v1/partners", headers=operator).text
    assert TEST_API_KEY not in text and "api_key" not in text  # no secret, nor where it is kept

    with live_core.engine.connect() as conn:
        partner_study = conn.execute(select(EntityLink.partner_entity_id).where(EntityLink.entity_type == "study").limit(1)).scalar_one()
    refresh = live_client.post("/api/v1/partners/b/sync", json={"study_id": partner_study}, headers=operator)
    assert refresh.status_code == 202
    refreshed = wait_for_run(live_client, keys, refresh.json()["run_id"])
    assert (refreshed["status"], refreshed["fetched"], refreshed["unchanged"]) == ("succeeded", 1, 1)


def test_a_sync_while_the_partner_lock_is_held_is_409(live_client: TestClient[Litestar], keys: Keys, live_core: Core) -> None:
    with partner_lock(live_core.engine, "b"):
        response = live_client.post("/api/v1/partners/b/sync", headers=keys.headers("operator"))
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"
    with live_core.engine.connect() as conn:
        assert conn.execute(select(SyncRun.id)).all() == []  # refused before any run was recorded


def test_runs_and_rejected_items_are_filtered_and_paginated(client: TestClient[Litestar], keys: Keys, core: Core) -> None:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    runs = []
    with core.engine.begin() as conn:
        for n in range(7):
            run_id = new_id()
            runs.append(run_id)
            conn.execute(insert(SyncRun).values(id=run_id, partner="b" if n % 2 else "c", status="failed" if n == 3 else "succeeded", trigger="cli", full=False,
                                                started_at=base + dt.timedelta(hours=n)))
        for n in range(5):
            payload = f'{{"id": "S-{n}", "subject": {{"name": "KIM^MINJI"}}}}'
            conn.execute(insert(RejectedItem).values(id=new_id(), run_id=runs[1], partner="b", partner_item_id=f"S-{n}", kind="validation", reason="$.study_date: not a date",
                                                     payload=payload, created_at=base + dt.timedelta(minutes=n)))
    operator = keys.headers("operator")

    listed = client.get("/api/v1/sync-runs", params={"limit": 3}, headers=operator).json()
    assert [r["id"] for r in listed["items"]] == [str(r) for r in reversed(runs[-3:])]
    walked = listed["items"]
    while listed["next_cursor"]:
        listed = client.get("/api/v1/sync-runs", params={"limit": 3, "cursor": listed["next_cursor"]}, headers=operator).json()
        walked += listed["items"]
    assert [r["id"] for r in walked] == [str(r) for r in reversed(runs)]
    assert [r["id"] for r in client.get("/api/v1/sync-runs?status=failed", headers=operator).json()["items"]] == [str(runs[3])]
    assert {r["partner"] for r in client.get("/api/v1/sync-runs?partner=c", headers=operator).json()["items"]} == {"c"}
    detail = client.get(f"/api/v1/sync-runs/{runs[1]}", headers=operator).json()
    assert detail["run"]["id"] == str(runs[1]) and detail["rejected_items"] == 5

    rejected = client.get("/api/v1/rejected-items", params={"run": str(runs[1]), "limit": 4}, headers=operator).json()
    assert [i["partner_item_id"] for i in rejected["items"]] == ["S-4", "S-3", "S-2", "S-1"]
    assert "KIM^MINJI" in rejected["items"][0]["payload"]
    more = client.get("/api/v1/rejected-items", params={"run": str(runs[1]), "limit": 4, "cursor": rejected["next_cursor"]}, headers=operator).json()
    assert [i["partner_item_id"] for i in more["items"]] == ["S-0"] and more["next_cursor"] is None
    assert client.get("/api/v1/rejected-items?partner=c", headers=operator).json()["items"] == []
