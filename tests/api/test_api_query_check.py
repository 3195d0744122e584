"""A query parameter an endpoint does not take, or a single one given twice, is a 400 naming it."""

from __future__ import annotations

import pytest
from api_fixtures import IndexBuilder, Keys
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select

from api.app import API_PREFIX
from api.query_check import allowed_query_parameters
from imaging_sync.core import Core
from imaging_sync.db.models import AuditEntry


def last_entry(core: Core) -> AuditEntry:
    with core.sessions() as session:
        return session.scalars(select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(1)).one()


def test_a_misspelt_filter_is_refused_instead_of_listing_every_study(client: TestClient[Litestar], keys: Keys, index: IndexBuilder, core: Core) -> None:
    for patient in ("P-1", "P-2"):
        index.study(index.subject(patient, "KIM^MINJI"))

    response = client.get("/api/v1/studies", params={"patientid": "P-1"}, headers=keys.headers("viewer"))

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["details"]["field"] == "patientid"
    assert error["message"].startswith("patientid: is not a parameter of this endpoint") and "patient_id" in error["message"]
    entry = last_entry(core)
    assert (entry.outcome, entry.status, entry.detail["error"]) == ("error", 400, "invalid")


def test_a_single_valued_parameter_given_twice_is_refused(client: TestClient[Litestar], keys: Keys) -> None:
    response = client.get("/api/v1/studies?limit=10&limit=100", headers=keys.headers("viewer"))

    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "limit"
    assert response.json()["error"]["message"] == "limit: must be given at most once"


def test_an_endpoint_without_query_parameters_refuses_any(client: TestClient[Litestar], keys: Keys, index: IndexBuilder) -> None:
    study = index.study(index.subject("P-3", "LEE^A"))

    response = client.get(f"/api/v1/studies/{study}?expand=series", headers=keys.headers("viewer"))

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "expand: is not a parameter of this endpoint (it takes: none)"
    assert client.get(f"/api/v1/studies/{study}", headers=keys.headers("viewer")).status_code == 200


def test_declared_parameters_still_work_together(client: TestClient[Litestar], keys: Keys, index: IndexBuilder) -> None:
    index.study(index.subject("P-4", "PARK^JI"))

    response = client.get("/api/v1/studies", params={"patient_id": "P-4", "name": "park*", "limit": 5}, headers=keys.headers("viewer"))

    assert response.status_code == 200 and len(response.json()["items"]) == 1


def test_authentication_and_roles_are_decided_before_parameters(client: TestClient[Litestar], keys: Keys) -> None:
    assert client.get("/api/v1/studies?bogus=1").status_code == 401
    assert client.get("/api/v1/studies?bogus=1", headers=keys.headers("auditor")).status_code == 403


@pytest.mark.parametrize("path", ["/health", "/ready", "/api/v1/schema/openapi.json"])
def test_probes_and_the_schema_ignore_what_a_balancer_or_browser_appends(client: TestClient[Litestar], path: str) -> None:
    assert client.get(path, params={"_": "1700000000"}).status_code == 200


def test_every_published_operation_has_its_parameters_in_the_table(app: Litestar) -> None:
    allowed = allowed_query_parameters(app.openapi_schema, API_PREFIX)

    assert allowed[("GET", "/api/v1/studies")].keys() >= {"patient_id", "name", "accession", "modality", "date_from", "date_to", "partner", "limit", "cursor"}
    assert allowed[("GET", "/api/v1/studies/{study_id}")] == {}
    assert set(allowed[("POST", "/api/v1/partners/{name}/sync")]) == {"full", "study_id"}
    assert not any(repeatable for names in allowed.values() for repeatable in names.values()), "no endpoint takes a list yet"
    operations = sum(1 for item in app.openapi_schema.paths.values() for op in (item.get, item.post) if op is not None)
    assert len(allowed) == operations - 2, "every operation but the two probes is under /api/v1"


def test_the_check_holds_without_a_lifespan_start_up(app: Litestar, keys: Keys) -> None:
    with TestClient(app) as started:  # keys and the app's own start-up; then a client that skips it
        assert started.get("/api/v1/studies?patientid=1", headers=keys.headers("viewer")).status_code == 400
    app.state.pop("query_parameters", None)
    unstarted = TestClient(app)  # not entered: no lifespan events

    assert unstarted.get("/api/v1/studies?patientid=1", headers=keys.headers("viewer")).status_code == 400


def test_a_huge_unknown_name_is_named_but_not_echoed_whole(client: TestClient[Litestar], keys: Keys) -> None:
    response = client.get("/api/v1/studies?" + "x" * 5000 + "=1", headers=keys.headers("viewer"))

    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "x" * 64 + "…" and len(response.text) < 1000
