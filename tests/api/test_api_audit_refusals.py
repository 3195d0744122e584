"""Unauthenticated 401s are counted per client address and minute, not one audit entry each; the auditor can list them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from api_fixtures import Keys, make_settings
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import func, select

from api.service import ApiService
from app.assembly import api_app, open_core
from devtools.storage import EmbeddedStorage
from imaging_sync import audit_refusals
from imaging_sync.core import Core
from imaging_sync.db.models import AuditEntry, AuditRefusal
from imaging_sync.errors import AuditUnavailableError
from storage import BucketRegistry

FLOOD = 10_000
CONCURRENCY = 16


def count_rows(core: Core, model: type[Any]) -> int:
    with core.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def test_a_flood_of_10000_unauthenticated_requests_adds_a_bounded_number_of_rows(db_url: str, s3: EmbeddedStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real HTTP to the real app under uvicorn: no key, a garbage key, a key that claims a prefix, searches naming a patient."""
    s3.export_environ(monkeypatch.setenv)
    settings = make_settings(db_url, s3.config, [b.name for b in s3.buckets], host="127.0.0.1", port=0)
    core = open_core(settings, configure_logs=False)
    service = ApiService(api_app(core, BucketRegistry(settings.storage)), settings.api)
    secret = "isk_ab12cd34_" + "S" * 40
    kinds: list[tuple[str, dict[str, str]]] = [
        ("/api/v1/studies?patient_id=P-SECRET-77&name=HONG%5EGILDONG", {}),
        (f"/api/v1/studies/{uuid.uuid4()}", {"Authorization": "Bearer not-a-key"}),
        ("/api/v1/subjects", {"Authorization": f"Bearer {secret}"}),
        ("/api/v1/audit", {"X-API-Key": "x" * 300}),
    ]
    try:
        service.start()
        base = f"http://127.0.0.1:{service.port}"

        async def flood() -> dict[int, int]:
            statuses: dict[int, int] = {}
            sent = iter(range(FLOOD))

            async def worker(client: httpx.AsyncClient) -> None:
                for i in sent:
                    path, headers = kinds[i % len(kinds)]
                    response = await client.get(path, headers=headers)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

            async with httpx.AsyncClient(base_url=base, limits=httpx.Limits(max_connections=CONCURRENCY), timeout=60) as client:
                await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
            return statuses

        assert asyncio.run(flood()) == {401: FLOOD}
    finally:
        service.stop()
    try:
        assert count_rows(core, AuditEntry) == 0
        with core.engine.connect() as conn:
            rows = audit_refusals.search(conn, limit=1000)
        # One row a minute for the one address: the flood takes seconds, so one row, or a few if minutes turned meanwhile.
        assert 1 <= len(rows) <= 3 and {(r["channel"], r["client_addr"]) for r in rows} == {("http", "127.0.0.1")}
        assert sum(r["count"] for r in rows) == FLOOD
        sample = {tried for r in rows for tried in r["sample"]}
        assert all(len(r["sample"]) <= audit_refusals.SAMPLE_SIZE for r in rows)
        assert "GET /api/v1/studies (missing)" in sample and "GET /api/v1/subjects (invalid isk_ab12cd34)" in sample
        assert "GET /api/v1/audit (invalid)" in sample
        flat = " ".join(sample)
        assert "P-SECRET" not in flat and "GILDONG" not in flat and "?" not in flat  # no query string
        assert "S" * 10 not in flat and "not-a-key" not in flat and "x" * 10 not in flat  # never a key
    finally:
        core.close()


def test_a_refused_key_and_no_key_are_counted_while_a_role_refusal_stays_an_entry(client: TestClient[Litestar], keys: Keys, core: Core) -> None:
    assert client.get("/api/v1/studies").status_code == 401
    assert client.get("/api/v1/studies", headers={"Authorization": "Bearer isk_abcdef123456_wrongsecret"}).status_code == 401
    assert count_rows(core, AuditEntry) == 0

    assert client.get("/api/v1/studies", headers=keys.headers("auditor")).status_code == 403
    with core.sessions() as session:
        [denied] = session.scalars(select(AuditEntry))
    assert (denied.outcome, denied.status, denied.actor_role) == ("denied", 403, "auditor")

    with core.engine.connect() as conn:
        [row] = audit_refusals.search(conn)
    assert (row["client_addr"], row["count"]) == ("testclient", 2)
    assert row["sample"] == ["GET /api/v1/studies (missing)", "GET /api/v1/studies (invalid isk_abcdef123456)"]


def test_the_auditor_lists_refusals_by_address_and_time_and_the_listing_is_audited(client: TestClient[Litestar], keys: Keys, core: Core) -> None:
    for _ in range(3):
        client.get("/api/v1/partners")
    auditor = keys.headers("auditor")

    page = client.get("/api/v1/audit/refusals", headers=auditor)
    assert page.status_code == 200, page.text
    [item] = page.json()["items"]
    assert (item["channel"], item["client_addr"], item["count"], item["sample"]) == ("http", "testclient", 3, ["GET /api/v1/partners (missing)"])
    assert page.json()["next_cursor"] is None
    assert client.get("/api/v1/audit/refusals", params={"client_addr": "192.0.2.1"}, headers=auditor).json()["items"] == []
    assert client.get("/api/v1/audit/refusals", params={"from": "2999-01-01"}, headers=auditor).json()["items"] == []
    assert client.get("/api/v1/audit/refusals", params={"channel": "cli"}, headers=auditor).status_code == 400
    assert client.get("/api/v1/audit/refusals", headers=keys.headers("viewer")).status_code == 403

    with core.sessions() as session:
        reads = session.scalars(select(AuditEntry).where(AuditEntry.resource_type == "audit_refusal").order_by(AuditEntry.at, AuditEntry.id)).all()
    assert [(r.action, r.status, r.outcome) for r in reads] == [("read_audit", 200, "success")] * 3 + [("read_audit", 400, "error"), ("read_audit", 403, "denied")]


def test_the_refusal_listing_pages_by_cursor(client: TestClient[Litestar], keys: Keys, core: Core) -> None:
    with core.engine.begin() as conn:
        for addr in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            audit_refusals.count(conn, audit_refusals.Refusal("http", addr, "GET /api/v1/studies (missing)"))
    auditor = keys.headers("auditor")
    first = client.get("/api/v1/audit/refusals", params={"limit": 2}, headers=auditor).json()
    second = client.get("/api/v1/audit/refusals", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auditor).json()
    assert [i["client_addr"] for i in first["items"] + second["items"]] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert second["next_cursor"] is None


def test_a_401_that_cannot_be_counted_is_a_503(client: TestClient[Litestar], core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(conn: Any, refusal: Any) -> None:
        raise AuditUnavailableError("the audit log could not count the refusal: OperationalError")

    monkeypatch.setattr(audit_refusals, "count", broken)
    response = client.get("/api/v1/studies")
    assert response.status_code == 503 and response.json()["error"]["code"] == "audit_unavailable"
    assert count_rows(core, AuditRefusal) == 0 and count_rows(core, AuditEntry) == 0
