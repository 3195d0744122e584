"""Keyset pagination: a client walking 10 000 studies sees each exactly once while new ones keep arriving."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid

from api_fixtures import Keys
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import Engine, insert

from api.pagination import page_size
from imaging_sync.config import ApiConfig
from imaging_sync.core import Core
from imaging_sync.db.models import Study, Subject, utcnow
from imaging_sync.ids import new_ids

STUDIES = 10_000


def insert_studies(engine: Engine, count: int, subject_ids: list[uuid.UUID], rng: random.Random, prefix: str) -> list[uuid.UUID]:
    """Bulk rows: few distinct dates (many ties on the sort key) and some undated studies."""
    ids = new_ids(count)
    rng.shuffle(ids)  # ids not in date order, so the tie-breaker really matters
    now = utcnow()
    rows = [
        {
            "id": sid, "study_instance_uid": f"1.2.826.0.1.3680043.10.888.{prefix}.{n}", "subject_id": rng.choice(subject_ids),
            "study_date": None if rng.random() < 0.05 else dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(200)),
            "source_partner": "b", "source_priority": 10, "created_at": now, "updated_at": now,
        }
        for n, sid in enumerate(ids)
    ]
    with engine.begin() as conn:
        conn.execute(insert(Study), rows)
    return ids


def test_walking_every_page_sees_each_study_once_while_new_ones_arrive(client: TestClient[Litestar], keys: Keys, core: Core) -> None:
    rng = random.Random(7)
    subject_ids = new_ids(500)
    now = utcnow()
    with core.engine.begin() as conn:
        conn.execute(insert(Subject), [
            {"id": s, "issuer": "", "patient_id": f"PG-{i}", "source_partner": "b", "source_priority": 10, "created_at": now, "updated_at": now}
            for i, s in enumerate(subject_ids)
        ])
    original = set(insert_studies(core.engine, STUDIES, subject_ids, rng, "0"))

    stop = threading.Event()
    inserted: list[uuid.UUID] = []

    def keep_inserting() -> None:
        batch = 0
        while not stop.is_set():
            batch += 1
            inserted.extend(insert_studies(core.engine, 25, subject_ids, random.Random(batch), str(batch)))
            time.sleep(0.005)

    writer = threading.Thread(target=keep_inserting)
    writer.start()
    seen: list[str] = []
    keys_seen: list[tuple[str | None, str]] = []
    try:
        cursor = None
        pages = 0
        while True:
            params = {"limit": 200} | ({"cursor": cursor} if cursor else {})
            response = client.get("/api/v1/studies", params=params, headers=keys.headers("viewer"))
            assert response.status_code == 200, response.text
            body = response.json()
            seen.extend(item["id"] for item in body["items"])
            keys_seen.extend((item["study_date"], item["id"]) for item in body["items"])
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
            assert pages < 500
    finally:
        stop.set()
        writer.join()

    assert len(seen) == len(set(seen)), "a study appeared twice"
    assert original <= {uuid.UUID(s) for s in seen}, "a study that existed throughout was skipped"
    assert inserted, "the concurrent writer never ran"
    # The order is the documented one: date descending, undated last, id descending among equals.
    dated = [(d, i) for d, i in keys_seen if d is not None]
    assert dated == sorted(dated, key=lambda k: (k[0], uuid.UUID(k[1])), reverse=True)
    first_undated = next(n for n, (d, _) in enumerate(keys_seen) if d is None)
    assert all(d is None for d, _ in keys_seen[first_undated:])


def test_a_limit_above_the_configured_maximum_gets_pages_of_that_size(client: TestClient[Litestar], keys: Keys) -> None:
    config = ApiConfig(default_page_size=5, max_page_size=20)
    assert (page_size(None, config), page_size(7, config), page_size(500, config)) == (5, 7, 20)
    assert client.get("/api/v1/studies?limit=1000", headers=keys.headers("viewer")).status_code == 200  # the schema's bound
    refused = client.get("/api/v1/studies?limit=1001", headers=keys.headers("viewer"))
    assert refused.status_code == 400 and refused.json()["error"]["details"]["field"] == "limit"
