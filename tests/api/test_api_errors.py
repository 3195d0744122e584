"""Bad input is a 400 naming the field, never a 500; unexpected failures are a 500 with a request id and nothing else."""

from __future__ import annotations

import uuid

import pytest
from api_fixtures import Keys, RecordingLauncher
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy.exc import OperationalError

from api.app import create_app
from api.errors import classify
from devtools.storage import EmbeddedStorage
from imaging_sync.core import Core
from imaging_sync.errors import BucketNotAllowedError, StorageError, SyncLockedError, ValidationError

VIEWER_CASES = [
    ("/api/v1/studies/not-a-uuid", "study_id"),
    ("/api/v1/studies/12345678-1234-1234-1234-12345678901", "study_id"),
    ("/api/v1/subjects/xyz/studies", "subject_id"),
    ("/api/v1/series/%20/instances", "series_id"),
    ("/api/v1/instances/1.2.3/url", "instance_id"),
    ("/api/v1/series/abc/urls", "series_id"),
    ("/api/v1/studies?date_from=2024-13-01", "date_from"),
    ("/api/v1/studies?date_to=yesterday", "date_to"),
    ("/api/v1/studies?date_from=2024-02-02&date_to=2024-02-01", "date_to"),
    ("/api/v1/studies?limit=0", "limit"),
    ("/api/v1/studies?limit=1001", "limit"),
    ("/api/v1/studies?limit=99999999999999999999999", "limit"),
    ("/api/v1/studies?limit=ten", "limit"),
    ("/api/v1/studies?cursor=bm9wZQ", "cursor"),
    ("/api/v1/studies?cursor=!!!", "cursor"),
    ("/api/v1/studies?study_uid=1.02.3", "study_uid"),
    ("/api/v1/studies?modality=C%2FT", "modality"),
    ("/api/v1/studies?partner=Not%20A%20Partner", "partner"),
    ("/api/v1/studies?name=" + "x" * 201, "name"),
    ("/api/v1/studies?patient_id=", "patient_id"),
    ("/api/v1/studies?patient_id=a%00b", "patient_id"),
    ("/api/v1/subjects?limit=-1", "limit"),
    ("/api/v1/series/00000000-0000-0000-0000-000000000000/instances?cursor=WyJzdHVkaWVzIixudWxsLCJ4Il0", "cursor"),
]
OPERATOR_CASES = [
    ("/api/v1/sync-runs?status=finished", "status"),
    ("/api/v1/sync-runs/nope", "run_id"),
    ("/api/v1/sync-runs?limit=0", "limit"),
    ("/api/v1/rejected-items?run=42", "run"),
]
AUDITOR_CASES = [
    ("/api/v1/audit?from=last%20week", "from"),
    ("/api/v1/audit?from=2026-11-02&to=2026-11-01", "to"),
    ("/api/v1/audit?cursor=abc", "cursor"),
    ("/api/v1/audit?resource=:x", "resource"),
]


@pytest.mark.parametrize("role,path,field", [("viewer", p, f) for p, f in VIEWER_CASES] + [("operator", p, f) for p, f in OPERATOR_CASES] + [("auditor", p, f) for p, f in AUDITOR_CASES])
def test_malformed_input_is_400_naming_the_field(client: TestClient[Litestar], keys: Keys, role: str, path: str, field: str) -> None:
    response = client.get(path, headers=keys.headers(role))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["details"]["field"] == field and error["message"].startswith(f"{field}: ")
    assert error["details"]["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    "path,message",
    [
        ("/api/v1/studies?limit=ten", "limit: must be a whole number"),
        ("/api/v1/studies?limit=0", "limit: must be at least 1"),
        ("/api/v1/studies?limit=1001", "limit: must be at most 1000"),
        ("/api/v1/studies?date_to=2024-13-01", "date_to: must be a date, YYYY-MM-DD"),
        ("/api/v1/studies/not-a-uuid", "study_id: must be a UUID"),
        ("/api/v1/studies?accession=" + "1" * 17, "accession: must be at most 16 characters"),
    ],
)
def test_a_400_says_what_the_value_must_be_in_plain_words(client: TestClient[Litestar], keys: Keys, path: str, message: str) -> None:
    assert client.get(path, headers=keys.headers("viewer")).json()["error"]["message"] == message


def test_a_body_field_the_endpoint_does_not_take_is_named(client: TestClient[Litestar], keys: Keys) -> None:
    response = client.post("/api/v1/partners/b/sync", headers=keys.headers("operator"), json={"fulll": True})

    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "body.fulll"
    assert response.json()["error"]["message"] == "body.fulll: is not a field of this body"
    wrong_type = client.post("/api/v1/partners/b/sync", headers=keys.headers("operator"), json={"full": "yes"})
    assert wrong_type.json()["error"]["message"] == "body.full: must be true or false"


def test_a_cursor_from_another_listing_is_refused(client: TestClient[Litestar], keys: Keys, index) -> None:  # type: ignore[no-untyped-def]
    subject = index.subject("P-C", "A^B")
    for _ in range(3):
        index.study(subject)
    cursor = client.get(f"/api/v1/subjects/{subject}/studies?limit=1", headers=keys.headers("viewer")).json()["next_cursor"]
    assert client.get(f"/api/v1/studies?cursor={cursor}", headers=keys.headers("viewer")).status_code == 200  # same listing, same key shape
    response = client.get(f"/api/v1/subjects?cursor={cursor}", headers=keys.headers("viewer"))
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "cursor"


def test_sync_trigger_body_and_unknown_partner(client: TestClient[Litestar], keys: Keys, launcher: RecordingLauncher) -> None:
    headers = keys.headers("operator")
    assert client.post("/api/v1/partners/zz/sync", headers=headers).status_code == 404
    bad = client.post("/api/v1/partners/b/sync", headers=headers, json={"full": "yes please"})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"].endswith("full")
    both = client.post("/api/v1/partners/b/sync", headers=headers, json={"full": True, "study_id": "S1"})
    assert both.status_code == 400 and both.json()["error"]["details"]["field"] == "study_id"
    not_json = client.post("/api/v1/partners/b/sync", headers=headers, content=b"{not json")
    assert not_json.status_code == 400 and not_json.json()["error"]["details"]["field"] == "body"
    for query, field in (("full=maybe", "full"), ("study_id=", "study_id")):  # no body: the query parameter is named
        bad_query = client.post(f"/api/v1/partners/b/sync?{query}", headers=headers)
        assert bad_query.status_code == 400 and bad_query.json()["error"]["details"]["field"] == field, bad_query.text
    accepted = client.post("/api/v1/partners/b/sync?full=true", headers=headers)
    assert accepted.status_code == 202 and accepted.headers["location"] == f"/api/v1/sync-runs/{accepted.json()['run_id']}"
    assert client.post("/api/v1/partners/c/sync", headers=headers, json={"study_id": "S-9"}).status_code == 202
    assert launcher.calls == [("b", True, None), ("c", False, "S-9")]


class ExplodingLauncher(RecordingLauncher):
    def launch(self, partner: str, *, full: bool = False, study_id: str | None = None) -> uuid.UUID:
        raise RuntimeError("boom: password=hunter2 at /secret/path")


class LockedLauncher(RecordingLauncher):
    def launch(self, partner: str, *, full: bool = False, study_id: str | None = None) -> uuid.UUID:
        raise SyncLockedError(partner)


def test_an_unexpected_failure_is_a_500_with_a_request_id_and_no_internals(core: Core, s3: EmbeddedStorage, keys: Keys) -> None:
    with TestClient(create_app(core, registry=s3.registry(), launcher=ExplodingLauncher())) as client:
        response = client.post("/api/v1/partners/b/sync", headers=keys.headers("operator"))
    assert response.status_code == 500
    body = response.json()
    assert body == {"error": {"code": "internal", "message": body["error"]["message"], "details": {"request_id": response.headers["x-request-id"]}}}
    assert "hunter2" not in response.text and "Traceback" not in response.text and "RuntimeError" not in response.text


def test_a_held_sync_lock_is_409(core: Core, s3: EmbeddedStorage, keys: Keys) -> None:
    with TestClient(create_app(core, registry=s3.registry(), launcher=LockedLauncher())) as client:
        response = client.post("/api/v1/partners/b/sync", headers=keys.headers("operator"))
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    "exc,status,code",
    [
        (ValidationError("limit", "too big"), 400, "invalid"),
        (BucketNotAllowedError("secret-bucket"), 502, "storage_refused"),
        (StorageError("endpoint https://s3.secret.example down"), 503, "storage_unavailable"),
        (OperationalError("SELECT 1", {}, Exception("connection refused")), 503, "database_unavailable"),
        (KeyError("x"), 500, "internal"),
    ],
)
def test_the_error_mapping_never_leaks_storage_or_database_details(exc: Exception, status: int, code: str) -> None:
    got_status, body, _ = classify(exc)
    assert (got_status, body.error.code) == (status, code)
    assert "secret" not in body.error.message and "SELECT" not in body.error.message
