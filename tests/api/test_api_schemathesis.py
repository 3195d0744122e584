"""Property-based: every operation in the app's own OpenAPI schema, called with generated input and a
key of the role it is meant for, never answers 5xx, and answers what the schema says: a documented
status, content type, headers and body shape (clients generated from the schema rely on all four).
Bounded (a few dozen examples per operation) so it runs in the normal test run."""

from __future__ import annotations

import datetime as dt

import pytest
import schemathesis
from api_fixtures import IndexBuilder, Keys, Located
from hypothesis import HealthCheck, settings
from litestar import Litestar
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

ROLE_BY_PREFIX = [
    ("/api/v1/audit", "auditor"),
    ("/api/v1/partners", "operator"),
    ("/api/v1/sync-runs", "operator"),
    ("/api/v1/rejected-items", "operator"),
    ("/api/v1/", "viewer"),
]


# Not positive_data_acceptance: a UID's or a cursor's syntax is more than the schema can say, so
# schema-valid values are rightly refused (400 naming the field); the other tests pin those.
CONFORMANCE = [status_code_conformance, content_type_conformance, response_headers_conformance, response_schema_conformance]


def role_for(path: str) -> str | None:
    return next((role for prefix, role in ROLE_BY_PREFIX if path.startswith(prefix)), None)


@pytest.fixture
def api_schema(app: Litestar, keys: Keys, index: IndexBuilder, s3) -> schemathesis.schemas.BaseSchema:  # type: ignore[no-untyped-def]
    # A little data, so searches have rows to summarise and wildcards something to match.
    subject = index.subject("P-FUZZ", "홍^길동=HONG^GILDONG")
    series = index.series(index.study(subject, date=dt.date(2024, 2, 29), accession="ACC-FUZZ"))
    index.instance(series, locations=[Located("b", s3.buckets[0].name, "fuzz/missing.dcm")])
    return schemathesis.openapi.from_asgi("/api/v1/schema/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_operation_answers_5xx(case: schemathesis.Case, keys: Keys) -> None:
    role = role_for(case.path)
    headers = keys.headers(role) if role else {}
    response = case.call(headers=headers)
    assert response.status_code < 500, f"{case.method} {case.formatted_path} {case.query} {case.body!r} -> {response.status_code} {response.text[:300]}"
    case.validate_response(response, checks=CONFORMANCE)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert {"code", "message", "details"} <= set(error) and error["details"]["request_id"], error
