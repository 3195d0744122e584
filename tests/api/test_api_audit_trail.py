"""The audit trail: every access to patient data, every privileged action and every refusal, recorded once."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import uuid
from typing import Any

import httpx
import pytest
from api_fixtures import IndexBuilder, Keys, RecordingLauncher, make_settings
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select

from api.app import create_app
from api.auditing import client_address, recorded_in_thread
from devtools.storage import EmbeddedStorage
from imaging_sync import audit_refusals
from imaging_sync.core import Core
from imaging_sync.db.models import AuditEntry


def entries(core: Core) -> list[AuditEntry]:
    with core.sessions() as session:
        return list(session.scalars(select(AuditEntry).order_by(AuditEntry.at, AuditEntry.id)))


def last(core: Core) -> AuditEntry:
    return entries(core)[-1]


def test_reads_searches_refusals_and_privileged_actions_are_each_recorded_once(client: TestClient[Litestar], keys: Keys, core: Core, index: IndexBuilder) -> None:
    study = index.study(index.subject("P-AUD", "KIM^MINJI"), date=dt.date(2024, 3, 3))

    assert client.get(f"/api/v1/studies/{study}", headers=keys.headers("viewer")).status_code == 200
    read = last(core)
    assert (read.channel, read.actor, read.actor_key_id, read.actor_role) == ("http", keys.viewer.split("_")[1], keys.ids["viewer"], "viewer")
    assert (read.action, read.method, read.path, read.resource_type, read.resource_id) == ("read", "GET", f"/api/v1/studies/{study}", "study", str(study))
    assert (read.outcome, read.status, read.client_addr) == ("success", 200, "testclient")

    client.get("/api/v1/studies", params={"name": "kim*", "date_from": "2024-01-01"}, headers=keys.headers("viewer"))
    searched = last(core)
    assert (searched.action, searched.resource_type, searched.resource_id) == ("search", "study", None)
    assert searched.query == {"name": "kim*", "date_from": "2024-01-01"} and searched.detail["results"] == 1

    client.get(f"/api/v1/studies/{study}", headers=keys.headers("auditor"))
    denied = last(core)
    assert (denied.outcome, denied.status, denied.actor_role, denied.resource_id) == ("denied", 403, "auditor", str(study))

    before = len(entries(core))
    client.get(f"/api/v1/studies/{study}", headers={"Authorization": "Bearer isk_abcdef123456_wrongsecret"})
    assert len(entries(core)) == before  # unauthenticated: counted per address and minute, not an entry (test_api_audit_refusals)
    with core.engine.connect() as conn:
        [counted] = audit_refusals.search(conn)
    assert (counted["client_addr"], counted["count"], counted["sample"]) == ("testclient", 1, [f"GET /api/v1/studies/{study} (invalid isk_abcdef123456)"])

    client.get(f"/api/v1/studies/{uuid.uuid4()}", headers=keys.headers("viewer"))
    assert (last(core).outcome, last(core).status) == ("not_found", 404)
    client.get("/api/v1/studies?limit=0", headers=keys.headers("viewer"))
    assert (last(core).outcome, last(core).status, last(core).detail["error"]) == ("error", 400, "invalid")

    accepted = client.post("/api/v1/partners/b/sync", json={"full": True}, headers=keys.headers("operator"))
    triggered = last(core)
    assert (triggered.action, triggered.resource_type, triggered.resource_id, triggered.outcome, triggered.status) == ("trigger_sync", "partner", "b", "success", 202)
    assert triggered.detail["run_id"] == accepted.json()["run_id"] and triggered.detail["full"] is True

    before = len(entries(core))
    client.get("/health"), client.get("/ready"), client.get("/api/v1/schema/openapi.json")
    assert len(entries(core)) == before, "probes and the schema carry no patient data and are not audited"
    request_ids = [e.detail["request_id"] for e in entries(core)]
    assert len(set(request_ids)) == len(request_ids)


def test_auditors_search_the_log_by_actor_resource_and_time(client: TestClient[Litestar], keys: Keys, core: Core, index: IndexBuilder) -> None:
    study = index.study(index.subject("P-AUD2", "LEE^SUA"))
    for _ in range(3):
        client.get(f"/api/v1/studies/{study}", headers=keys.headers("viewer"))
    client.get("/api/v1/partners", headers=keys.headers("operator"))
    viewer_prefix = keys.viewer.split("_")[1]
    auditor = keys.headers("auditor")

    page = client.get("/api/v1/audit", params={"resource": f"study:{study}", "limit": 2}, headers=auditor).json()
    assert len(page["items"]) == 2 and all(e["resource_id"] == str(study) for e in page["items"])
    rest = client.get("/api/v1/audit", params={"resource": f"study:{study}", "limit": 2, "cursor": page["next_cursor"]}, headers=auditor).json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    assert len({e["id"] for e in page["items"] + rest["items"]}) == 3

    by_actor = client.get("/api/v1/audit", params={"actor": viewer_prefix}, headers=auditor).json()["items"]
    assert {e["actor_role"] for e in by_actor} == {"viewer"} and len(by_actor) == 3
    by_key_id = client.get("/api/v1/audit", params={"actor": by_actor[0]["actor_key_id"]}, headers=auditor).json()["items"]
    assert [e["id"] for e in by_key_id] == [e["id"] for e in by_actor]
    today = dt.datetime.now(dt.UTC).date().isoformat()
    whole_day = client.get("/api/v1/audit", params={"from": today, "to": today, "actor": viewer_prefix}, headers=auditor)
    assert whole_day.status_code == 200 and len(whole_day.json()["items"]) == 3  # a date as `to` includes that day
    tomorrow = (dt.date.today() + dt.timedelta(days=2)).isoformat()
    assert client.get("/api/v1/audit", params={"from": tomorrow}, headers=auditor).json()["items"] == []
    assert len(client.get("/api/v1/audit", params={"to": tomorrow, "resource": "partner"}, headers=auditor).json()["items"]) == 1
    assert last(core).action == "read_audit" and last(core).actor_role == "auditor"


def test_an_access_that_cannot_be_recorded_is_refused(client: TestClient[Litestar], keys: Keys, index: IndexBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    study = index.study(index.subject("P-FAIL", "CHOI^JIWOO"))

    def broken(*_: Any) -> None:
        raise RuntimeError("audit table unavailable")

    monkeypatch.setattr("api.auditing.audit.record", broken)
    response = client.get(f"/api/v1/studies/{study}", headers=keys.headers("viewer"))
    assert response.status_code == 503 and response.json()["error"]["code"] == "audit_unavailable"
    assert "CHOI" not in response.text and "P-FAIL" not in response.text


def test_a_success_is_recorded_in_the_handlers_thread_and_a_response_that_then_fails_is_recorded_again(
    client: TestClient[Litestar], keys: Keys, core: Core, index: IndexBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = index.study(index.subject("P-TWICE", "KANG^SEOYUN"))
    assert client.get(f"/api/v1/studies/{study}", headers=keys.headers("viewer")).status_code == 200
    assert [(e.outcome, e.status) for e in entries(core)] == [("success", 200)]  # once: the middleware saw it written

    monkeypatch.setattr("api.studies.controllers.to_schema", lambda *_: object())  # a body that cannot be serialised
    failed = client.get(f"/api/v1/studies/{study}", headers=keys.headers("viewer"))

    assert failed.status_code == 500
    rid = failed.headers["x-request-id"]
    assert [(e.outcome, e.status) for e in entries(core) if e.detail["request_id"] == rid] == [("success", 200), ("error", 500)]


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(core: Core, s3: EmbeddedStorage, keys: Keys, db_url: str) -> None:
    settings = make_settings(db_url, s3.config, [b.name for b in s3.buckets], trusted_proxies=["10.0.0.0/8"])
    app = create_app(dataclasses.replace(core, settings=settings), registry=s3.registry(), launcher=RecordingLauncher())

    async def from_peer(peer: str) -> None:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            response = await http.get("/api/v1/studies", headers={**keys.headers("viewer"), "X-Forwarded-For": "203.0.113.9, 10.1.1.1"})
            assert response.status_code == 200

    asyncio.run(from_peer("10.2.3.4"))
    assert last(core).client_addr == "203.0.113.9"
    asyncio.run(from_peer("198.51.100.7"))  # not a proxy we trust: its header proves nothing
    assert last(core).client_addr == "198.51.100.7"


@pytest.mark.parametrize(
    "peer,forwarded,expected",
    [
        ("10.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.1", "198.51.100.1, 10.0.0.2", "198.51.100.1"),
        ("10.0.0.1", "spoofed, 198.51.100.1", "198.51.100.1"),
        ("10.0.0.1", "garbage", "10.0.0.1"),
        ("10.0.0.1", None, "10.0.0.1"),
        ("192.0.2.5", "198.51.100.1", "192.0.2.5"),
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),
    ],
)
def test_client_address_reads_the_forwarded_chain_right_to_left(peer: str, forwarded: str | None, expected: str) -> None:
    headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
    scope: Any = {"client": (peer, 1234), "headers": headers}
    assert client_address(scope, [ipaddress.ip_network("10.0.0.0/8")]) == expected


def test_recording_in_the_handlers_thread_needs_the_requests_connection() -> None:
    def handler(study_id: str) -> None: ...

    with pytest.raises(TypeError, match="conn"):
        recorded_in_thread(handler)  # at import time, not at the first request
