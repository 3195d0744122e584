"""What the API gives away without meaning to: partner ids that address another resource, 401s that tell key states apart, cacheable answers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from api_fixtures import IndexBuilder, Keys, Located, RecordingLauncher
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select

from api.app import create_app
from api.operations.launcher import ThreadLauncher
from devtools.datagen import DatasetSpec
from devtools.factories import TEST_API_KEY, simulator_partner
from devtools.simulator import PartnerSimulator, SimulatorConfig
from devtools.storage import EmbeddedStorage
from devtools.waiting import eventually
from imaging_sync import apikeys, audit_refusals
from imaging_sync.db.models import RejectedItem
from imaging_sync.sync.runner import SyncRunner

API_PREFIX = "/api/v1"


@pytest.fixture
def client(app: Litestar) -> Iterator[TestClient[Litestar]]:
    with TestClient(app) as test_client:
        yield test_client


# -- partner ids ------------------------------------------------------------------

NOT_AN_ID = [
    (".", "must not be . or .."),
    ("..", "must not be . or .."),
    (" b-study-1", "whitespace"),
    ("b-study-1\n", "whitespace"),
    ("b-\x00study", "control characters"),
    ("b-\x7fstudy", "control characters"),
    ("b-\x85study", "control characters"),
    ("x" * 129, "at most 128"),
]


@pytest.mark.parametrize(("study_id", "reason"), NOT_AN_ID)
def test_a_study_id_that_is_no_partner_id_is_a_400_naming_the_field(client: TestClient[Litestar], keys: Keys, launcher: RecordingLauncher, study_id: str, reason: str) -> None:
    for request in ({"json": {"study_id": study_id}}, {"params": {"study_id": study_id}}):
        response = client.post("/api/v1/partners/b/sync", headers=keys.headers("operator"), **request)  # type: ignore[arg-type]
        assert response.status_code == 400, (request, response.text)
        error = response.json()["error"]
        assert error["details"]["field"] in ("study_id", "body.study_id") and reason in error["message"], error
    assert launcher.calls == []  # nothing was started


@pytest.fixture
def simulator() -> Iterator[PartnerSimulator]:
    with PartnerSimulator(DatasetSpec(partner="b", studies=4, series_per_study=1, instances_per_series=1), SimulatorConfig(api_key=TEST_API_KEY)) as sim:
        yield sim


@pytest.fixture
def live_client(core: Any, s3: EmbeddedStorage, simulator: PartnerSimulator) -> Iterator[TestClient[Litestar]]:
    """The API with partner b at the simulator and the real in-process launcher: a refresh really fetches."""
    settings = msgspec.structs.replace(core.settings, partners={"b": simulator_partner("b", simulator.base_url)})
    runner = SyncRunner(core.engine, settings)
    live = dataclasses.replace(core, settings=settings, runner=runner)
    with TestClient(create_app(live, registry=s3.registry(), launcher=ThreadLauncher(runner, core.engine))) as client:
        yield client


def finished_run(client: TestClient[Litestar], keys: Keys, run_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/api/v1/sync-runs/{run_id}", headers=keys.headers("operator")).json()["run"]
        return run if run["status"] not in ("queued", "running") else None

    return eventually(finished, timeout=30, interval=0.05, what=f"run {run_id} finished")


@pytest.mark.parametrize(("study_id", "segment"), [("a/b", "a%2Fb"), ("%2F", "%252F"), ("%2E%2E", "%252E%252E"), ("../studies", "..%2Fstudies"), ("a?page_size=500", "a%3Fpage_size%3D500")])
def test_a_refreshed_study_id_reaches_the_partner_as_one_encoded_segment_and_never_the_listing(
    live_client: TestClient[Litestar], keys: Keys, simulator: PartnerSimulator, core: Any, study_id: str, segment: str
) -> None:
    started = live_client.post("/api/v1/partners/b/sync", json={"study_id": study_id}, headers=keys.headers("operator"))
    assert started.status_code == 202, started.text
    run = finished_run(live_client, keys, started.json()["run_id"])
    assert (run["status"], run["error_kind"]) == ("failed", "not_found")  # the partner has no such study
    assert [(r.path, r.status) for r in simulator.requests.snapshot()] == [(f"/v1/studies/{segment}", 404)]
    with core.engine.connect() as conn:
        assert conn.execute(select(RejectedItem)).all() == []  # nothing of another resource was stored


def test_a_study_whose_id_holds_a_slash_is_refreshed_from_its_own_resource(live_client: TestClient[Litestar], keys: Keys, simulator: PartnerSimulator) -> None:
    item = simulator.dataset.item(simulator.dataset.spec.study_id(2))
    simulator.dataset.put_study({**item, "id": "ward/7"})
    started = live_client.post("/api/v1/partners/b/sync", params={"study_id": "ward/7"}, headers=keys.headers("operator"))
    run = finished_run(live_client, keys, started.json()["run_id"])
    assert (run["status"], run["fetched"], run["created"]) == ("succeeded", 1, 1)
    assert [r.path for r in simulator.requests.snapshot()] == ["/v1/studies/ward%2F7"]


def test_dot_segments_are_refused_before_any_request_to_the_partner(live_client: TestClient[Litestar], keys: Keys, simulator: PartnerSimulator) -> None:
    for study_id in (".", ".."):
        assert live_client.post("/api/v1/partners/b/sync", json={"study_id": study_id}, headers=keys.headers("operator")).status_code == 400
    assert simulator.requests.snapshot() == []


# -- 401s ---------------------------------------------------------------------------


def test_revoked_expired_and_unknown_keys_get_the_same_401_and_only_the_audit_says_which(client: TestClient[Litestar], core: Any) -> None:
    """Which one it was is in the sample of the address's counted refusals (imaging_sync.audit_refusals), for the auditor only."""
    with core.engine.begin() as conn:
        revoked, revoked_token = apikeys.create_key(conn, "old", "viewer")
        _, expired_token = apikeys.create_key(conn, "temp", "viewer", expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        apikeys.revoke_key(conn, revoked.prefix)
        _, live_token = apikeys.create_key(conn, "live", "viewer")
    unknown = live_token[:-4] + ("AAAA" if not live_token.endswith("AAAA") else "BBBB")
    answers = {}
    for reason, token in (("revoked", revoked_token), ("expired", expired_token), ("invalid", unknown), ("invalid", "isk_nothere_secret")):
        response = client.get("/api/v1/studies", headers={"Authorization": f"Bearer {token}"})
        body = response.json()
        request_id = body["error"]["details"].pop("request_id")
        headers = {k: v for k, v in response.headers.items() if k != "x-request-id"}
        assert response.headers["x-request-id"] == request_id
        answers.setdefault((response.status_code, msgspec.json.encode(body), tuple(sorted(headers.items()))), []).append(reason)
    (answer, reasons), = answers.items()  # one answer for all four
    status, body, headers = answer
    assert status == 401 and msgspec.json.decode(body)["error"] == {"code": "unauthenticated", "message": "invalid API key", "details": {}}
    assert dict(headers)["www-authenticate"] == 'Bearer realm="imaging-sync", error="invalid_token"'

    with core.engine.connect() as conn:
        [counted] = audit_refusals.search(conn)
    assert reasons == ["revoked", "expired", "invalid", "invalid"] and counted["count"] == 4
    assert [tried.split(" (")[1].split(" ")[0] for tried in counted["sample"]] == ["revoked", "expired", "invalid", "invalid"]  # four prefixes: four samples


# -- Cache-Control --------------------------------------------------------------------


@pytest.fixture
def located(index: IndexBuilder, s3: EmbeddedStorage) -> dict[str, uuid.UUID]:
    bucket = s3.buckets[0].name
    key = f"cache/{uuid.uuid4()}.dcm"
    s3.put(bucket, key, b"DICM")
    subject = index.subject("P-CACHE", "KIM^MINJI")
    study = index.study(subject, date=dt.date(2024, 5, 1))
    series = index.series(study)
    instance = index.instance(series, locations=[Located("b", bucket, key)])
    return {"study": study, "series": series, "instance": instance}


def test_every_api_answer_with_patient_data_urls_or_an_error_says_no_store(client: TestClient[Litestar], keys: Keys, located: dict[str, uuid.UUID]) -> None:
    viewer, operator = keys.headers("viewer"), keys.headers("operator")
    answers = {
        "search": client.get("/api/v1/studies?patient_id=P-CACHE", headers=viewer),
        "study detail": client.get(f"/api/v1/studies/{located['study']}", headers=viewer),
        "file url": client.get(f"/api/v1/instances/{located['instance']}/url", headers=viewer),
        "series urls": client.get(f"/api/v1/series/{located['series']}/urls", headers=viewer),
        "file redirect": client.get(f"/api/v1/instances/{located['instance']}/file", headers=viewer, follow_redirects=False),
        "audit log": client.get("/api/v1/audit", headers=keys.headers("auditor")),
        "no key": client.get("/api/v1/studies"),
        "wrong role": client.get("/api/v1/studies", headers=operator),
        "no such study": client.get(f"/api/v1/studies/{uuid.uuid4()}", headers=viewer),
        "no such path": client.get("/api/v1/nothing-here", headers=viewer),
        "bad parameter": client.get("/api/v1/studies?limit=zero", headers=viewer),
    }
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {
        "search": 200, "study detail": 200, "file url": 200, "series urls": 200, "file redirect": 307, "audit log": 200,
        "no key": 401, "wrong role": 403, "no such study": 404, "no such path": 404, "bad parameter": 400,
    }
    assert {name: r.headers.get_list("cache-control") for name, r in answers.items()} == {name: ["no-store"] for name in answers}


def test_the_public_docs_keep_their_own_caching(client: TestClient[Litestar]) -> None:
    schema = client.get("/api/v1/schema/openapi.json")
    assert schema.status_code == 200 and "no-store" not in schema.headers.get("cache-control", "")
    page = client.get("/api/v1/docs")
    asset = next(link for link in page.text.split('"') if "/api/v1/docs/assets/" in link and link.endswith(".css"))
    assert client.get(asset).headers["cache-control"].startswith("public, max-age=")
