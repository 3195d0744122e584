"""Who may call what: every endpoint × every role, no key and a bad key (least privilege)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import pytest
from api_fixtures import IndexBuilder, Keys, Located, RecordingLauncher
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import insert

from api.app import create_app
from devtools.storage import EmbeddedStorage
from imaging_sync import apikeys
from imaging_sync.core import Core
from imaging_sync.db.models import SyncRun
from imaging_sync.ids import new_id


@dataclass(frozen=True)
class Ids:
    subject: uuid.UUID
    study: uuid.UUID
    series: uuid.UUID
    instance: uuid.UUID
    run: uuid.UUID


@pytest.fixture
def ids(index: IndexBuilder, s3: EmbeddedStorage, core: Core) -> Ids:
    bucket = s3.buckets[0].name
    key = f"access/{uuid.uuid4()}.dcm"
    s3.put(bucket, key, b"DICM")
    subject = index.subject("P-ACCESS", "KIM^MINJI")
    study = index.study(subject, date=dt.date(2024, 5, 1))
    series = index.series(study)
    instance = index.instance(series, locations=[Located("b", bucket, key)])
    run = new_id()
    with core.engine.begin() as conn:
        conn.execute(insert(SyncRun).values(id=run, partner="b", status="succeeded", trigger="cli", full=False, started_at=dt.datetime.now(dt.UTC)))
    return Ids(subject, study, series, instance, run)


# (method, path template, role allowed, success status)
ENDPOINTS = [
    ("GET", "/api/v1/subjects?patient_id=P-ACCESS", "viewer", 200),
    ("GET", "/api/v1/subjects/{subject}/studies", "viewer", 200),
    ("GET", "/api/v1/studies", "viewer", 200),
    ("GET", "/api/v1/studies/{study}", "viewer", 200),
    ("GET", "/api/v1/series/{series}/instances", "viewer", 200),
    ("GET", "/api/v1/instances/{instance}/url", "viewer", 200),
    ("GET", "/api/v1/instances/{instance}/file", "viewer", 307),
    ("GET", "/api/v1/series/{series}/urls", "viewer", 200),
    ("GET", "/api/v1/partners", "operator", 200),
    ("GET", "/api/v1/sync-runs", "operator", 200),
    ("GET", "/api/v1/sync-runs/{run}", "operator", 200),
    ("GET", "/api/v1/rejected-items", "operator", 200),
    ("POST", "/api/v1/partners/b/sync", "operator", 202),
    ("GET", "/api/v1/audit", "auditor", 200),
]


def call(client: TestClient[Litestar], method: str, path: str, headers: dict[str, str]) -> int:
    return client.request(method, path, headers=headers, follow_redirects=False).status_code


def test_each_role_reaches_only_its_own_endpoints(client: TestClient[Litestar], keys: Keys, ids: Ids) -> None:
    matrix = {}
    for method, template, _, _ in ENDPOINTS:
        path = template.format(**ids.__dict__)
        for role in apikeys.ROLES:
            matrix[(template, role)] = call(client, method, path, keys.headers(role))
    expected = {(t, role): (ok if role == allowed else 403) for _, t, allowed, ok in ENDPOINTS for role in apikeys.ROLES}
    assert matrix == expected


@pytest.mark.parametrize("method,template", [(m, t) for m, t, _, _ in ENDPOINTS])
def test_no_key_or_a_bad_key_is_401_with_a_bearer_challenge(client: TestClient[Litestar], keys: Keys, ids: Ids, method: str, template: str) -> None:
    path = template.format(**ids.__dict__)
    tampered = keys.viewer[:-2] + ("AA" if not keys.viewer.endswith("AA") else "BB")
    for headers in ({}, {"Authorization": f"Bearer {tampered}"}, {"X-API-Key": "isk_nothere_secret"}, {"Authorization": "Basic dXNlcjpwdw=="}):
        response = client.request(method, path, headers=headers, follow_redirects=False)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "unauthenticated"
        assert "Traceback" not in response.text


def test_the_key_may_come_in_either_header(client: TestClient[Litestar], keys: Keys, ids: Ids) -> None:
    assert client.get("/api/v1/studies", headers={"X-API-Key": keys.viewer}).status_code == 200
    assert client.get("/api/v1/studies", headers={"Authorization": f"bearer {keys.viewer}"}).status_code == 200


def test_revoked_and_expired_keys_are_refused(client: TestClient[Litestar], core: Core) -> None:
    with core.engine.begin() as conn:
        revoked, revoked_token = apikeys.create_key(conn, "old", "viewer")
        _, expired_token = apikeys.create_key(conn, "temp", "viewer", expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        apikeys.revoke_key(conn, revoked.prefix)
    for token in (revoked_token, expired_token):
        response = client.get("/api/v1/studies", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401 and response.json()["error"]["message"] == "invalid API key"  # which of the two: the audit's (test_api_hardening)
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_probes_and_docs_need_no_key(client: TestClient[Litestar]) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    schema = client.get("/api/v1/schema/openapi.json")
    assert schema.status_code == 200 and "/api/v1/studies" in schema.json()["paths"]
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_a_revoked_key_stops_working_once_the_key_cache_expires(core: Core, s3: EmbeddedStorage) -> None:
    with core.engine.begin() as conn:
        info, token = apikeys.create_key(conn, "soon revoked", "viewer")
    now = [1000.0]  # the cache's clock, moved by hand: a loaded machine's pauses cannot pass the TTL early
    with TestClient(create_app(core, registry=s3.registry(), launcher=RecordingLauncher(), key_cache_seconds=5)) as client:
        client.app.state["services"].principals.clock = lambda: now[0]
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/studies", headers=headers).status_code == 200
        with core.engine.begin() as conn:
            apikeys.revoke_key(conn, info.prefix)
        now[0] += 5.0
        assert client.get("/api/v1/studies", headers=headers).status_code == 200  # verified 5 s ago: still trusted
        now[0] += 0.01
        assert client.get("/api/v1/studies", headers=headers).status_code == 401
    with TestClient(create_app(core, registry=s3.registry(), launcher=RecordingLauncher(), key_cache_seconds=0)) as client:
        assert client.get("/api/v1/studies", headers=headers).status_code == 401
