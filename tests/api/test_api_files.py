"""Presigned URLs, fetched for real from an embedded S3 with one bucket per region and per-bucket keys."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from api_fixtures import IndexBuilder, Keys, Located
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select

from devtools.storage import EmbeddedStorage
from imaging_sync.core import Core
from imaging_sync.db.models import AuditEntry, Instance, Series


def upload(s3: EmbeddedStorage, bucket_index: int, data: bytes) -> Located:
    bucket = s3.buckets[bucket_index].name
    key = f"studies/{uuid.uuid4()}/IM0001.dcm"
    s3.put(bucket, key, data)
    return Located("b" if bucket_index == 0 else "c", bucket, key)


def fetch(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)


def region_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["X-Amz-Credential"][0].split("/")[2]


@pytest.fixture
def series(index: IndexBuilder) -> uuid.UUID:
    subject = index.subject("P-FILES", "HONG^GILDONG")
    return index.series(index.study(subject, date=dt.date(2025, 1, 2), partners=("b", "c")), partners=("b", "c"))


def url_audits(core: Core, resource_id: uuid.UUID) -> list[AuditEntry]:
    with core.sessions() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.resource_id == str(resource_id)).order_by(AuditEntry.id)))


def test_the_higher_priority_partners_copy_is_signed_and_the_other_one_used_once_it_is_gone(
    client: TestClient[Litestar], keys: Keys, s3: EmbeddedStorage, index: IndexBuilder, series: uuid.UUID, core: Core
) -> None:
    copy_b, copy_c = os.urandom(4096), os.urandom(3000)  # distinct bytes prove which copy was served
    at_b, at_c = upload(s3, 0, copy_b), upload(s3, 1, copy_c)
    instance = index.instance(series, locations=[at_c, at_b])

    first = client.get(f"/api/v1/instances/{instance}/url", headers=keys.headers("viewer"))
    assert first.status_code == 200
    url = first.json()["url"]
    assert region_of(url) == s3.buckets[0].region  # partner b (priority 10) in eu-west-1
    downloaded = fetch(url)
    assert downloaded.status_code == 200 and downloaded.content == copy_b
    assert downloaded.headers["content-type"] == "application/dicom"

    s3.admin_client(at_b.bucket).delete_object(Bucket=at_b.bucket, Key=at_b.key)
    second = client.get(f"/api/v1/instances/{instance}/url", headers=keys.headers("viewer"))
    assert second.status_code == 200
    assert region_of(second.json()["url"]) == s3.buckets[1].region  # partner c in ap-northeast-2
    assert fetch(second.json()["url"]).content == copy_c

    s3.admin_client(at_c.bucket).delete_object(Bucket=at_c.bucket, Key=at_c.key)
    gone = client.get(f"/api/v1/instances/{instance}/url", headers=keys.headers("viewer"))
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"

    audits = url_audits(core, instance)
    assert [(a.action, a.outcome, a.status, a.resource_type) for a in audits] == [("issue_url", "success", 200, "instance")] * 2 + [("issue_url", "not_found", 404, "instance")]
    assert audits[0].detail["partner"] == "b" and audits[1].detail == {**audits[1].detail, "partner": "c", "skipped": ["b"]}
    assert audits[0].actor_key_id == keys.ids["viewer"] and audits[0].actor_role == "viewer"


def test_a_series_is_signed_in_one_batch_in_instance_number_order(
    client: TestClient[Litestar], keys: Keys, s3: EmbeddedStorage, index: IndexBuilder, series: uuid.UUID, core: Core
) -> None:
    contents = {}
    for number in (3, 1, None, 2, 5):
        data = os.urandom(512)
        located = upload(s3, 0 if number != 2 else 1, data)  # instance 2 only at partner c
        contents[index.instance(series, number=number, locations=[located])] = data
    rogue = index.instance(series, number=4, locations=[Located("b", "rogue-bucket-not-registered", "x.dcm")])

    response = client.get(f"/api/v1/series/{series}/urls", headers=keys.headers("viewer"))
    assert response.status_code == 200
    items = response.json()["items"]
    assert [i["instance_number"] for i in items] == [1, 2, 3, 4, 5, None]
    for item in items:
        if item["instance_id"] == str(rogue):
            assert item["url"] is None  # only in a bucket outside the registry: never signed
            continue
        assert fetch(item["url"]).content == contents[uuid.UUID(item["instance_id"])]
    assert "rogue-bucket" not in response.text
    (entry,) = url_audits(core, series)
    assert (entry.action, entry.resource_type, entry.detail["count"], entry.detail["unavailable"]) == ("issue_urls", "series", 5, 1)


def test_a_location_outside_the_bucket_registry_is_refused(
    client: TestClient[Litestar], keys: Keys, index: IndexBuilder, series: uuid.UUID
) -> None:
    instance = index.instance(series, locations=[Located("b", "rogue-bucket-not-registered", "secret/x.dcm")])
    response = client.get(f"/api/v1/instances/{instance}/url", headers=keys.headers("viewer"))
    assert response.status_code == 404
    assert "rogue" not in response.text and "secret/x.dcm" not in response.text


def test_the_file_endpoint_redirects_viewers_to_a_fresh_url(
    client: TestClient[Litestar], keys: Keys, s3: EmbeddedStorage, index: IndexBuilder, series: uuid.UUID
) -> None:
    data = os.urandom(2048)
    instance = index.instance(series, locations=[upload(s3, 1, data)])
    response = client.get(f"/api/v1/instances/{instance}/file", headers=keys.headers("viewer"), follow_redirects=False)
    assert response.status_code == 307
    assert fetch(response.headers["location"]).content == data
    downloaded = fetch(response.headers["location"])
    assert "attachment" in downloaded.headers["content-disposition"]


def test_url_lifetime_is_the_one_asked_for_within_the_configured_maximum(
    client: TestClient[Litestar], keys: Keys, s3: EmbeddedStorage, index: IndexBuilder, series: uuid.UUID
) -> None:
    instance = index.instance(series, locations=[upload(s3, 0, b"DICM")])
    before = dt.datetime.now(dt.UTC)
    short = client.get(f"/api/v1/instances/{instance}/url?expires_in=60", headers=keys.headers("viewer")).json()
    expires_at = dt.datetime.fromisoformat(short["expires_at"].replace("Z", "+00:00"))
    assert dt.timedelta(seconds=58) <= expires_at - before <= dt.timedelta(seconds=62)
    default = client.get(f"/api/v1/instances/{instance}/url", headers=keys.headers("viewer")).json()
    assert parse_qs(urlsplit(default["url"]).query)["X-Amz-Expires"] == ["300"]
    for bad in ("3601", "0", "-5", "soon"):
        response = client.get(f"/api/v1/instances/{instance}/url?expires_in={bad}", headers=keys.headers("viewer"))
        assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "expires_in", (bad, response.text)
        response = client.get(f"/api/v1/series/{series}/urls?expires_in={bad}", headers=keys.headers("viewer"))
        assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "expires_in", (bad, response.text)


def test_deleted_or_unknown_entities_have_no_urls(client: TestClient[Litestar], keys: Keys, s3: EmbeddedStorage, index: IndexBuilder, series: uuid.UUID) -> None:
    instance = index.instance(series, locations=[upload(s3, 0, b"DICM")])
    index.delete(Instance, instance)
    assert client.get(f"/api/v1/instances/{instance}/url", headers=keys.headers("viewer")).status_code == 404
    assert client.get(f"/api/v1/instances/{uuid.uuid4()}/file", headers=keys.headers("viewer")).status_code == 404
    index.delete(Series, series)
    assert client.get(f"/api/v1/series/{series}/urls", headers=keys.headers("viewer")).status_code == 404
