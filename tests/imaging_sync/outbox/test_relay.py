"""The relay against a real local HTTP receiver, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, func, select

from devtools.webhook_receiver import WebhookReceiver
from imaging_sync.config import OutboxConfig, Secret, WebhookConfig
from imaging_sync.db.models import OutboxEvent, utcnow
from imaging_sync.ids import new_ids
from imaging_sync.outbox.relay import Relay, prune_done, retry_failed, status
from imaging_sync.outbox.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSink, sign

FAST = OutboxConfig(batch_size=50, lease_seconds=30, max_attempts=3, initial_backoff=0.01, max_backoff=0.02, poll_interval=0.01)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


def sink(receiver: WebhookReceiver, secret: str | None = "s3cret") -> WebhookSink:
    return WebhookSink(WebhookConfig(url=receiver.url, timeout_seconds=5), Secret(secret) if secret else None)


def add_events(engine: Engine, count: int, aggregates: int = 10) -> list[uuid.UUID]:
    now = utcnow()
    studies = [uuid.uuid4() for _ in range(aggregates)]
    ids = new_ids(count)
    rows = [
        {"id": i, "event_type": "study.updated", "aggregate_type": "study", "aggregate_id": studies[n % aggregates], "payload": {"n": n},
         "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now}
        for n, i in enumerate(ids)
    ]
    with engine.begin() as conn:
        conn.execute(OutboxEvent.__table__.insert(), rows)
    return ids


def statuses(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(dict(conn.execute(select(OutboxEvent.status, func.count()).group_by(OutboxEvent.status)).all()))


def test_events_are_delivered_signed_in_order_and_marked_done(engine: Engine, receiver: WebhookReceiver) -> None:
    ids = add_events(engine, 120, aggregates=7)
    result = Relay(engine, [sink(receiver)], FAST).run_until_idle()
    assert result.delivered == 120 and statuses(engine) == {"done": 120}
    received = receiver.events()
    assert sorted(e["id"] for e in received) == sorted(str(i) for i in ids)
    by_aggregate: dict[str, list[int]] = {}
    for event in received:
        by_aggregate.setdefault(event["aggregate_id"], []).append(event["payload"]["n"])
    assert all(ns == sorted(ns) for ns in by_aggregate.values())
    first = receiver.requests[0]
    assert first["headers"][SIGNATURE_HEADER] == sign("s3cret", first["headers"][TIMESTAMP_HEADER], first["body"])


def test_a_failing_receiver_means_backoff_then_failed_with_the_error_kept(engine: Engine, receiver: WebhookReceiver) -> None:
    add_events(engine, 5, aggregates=5)
    receiver.fail_next(100, status=500)
    relay = Relay(engine, [sink(receiver)], FAST)
    assert relay.run_once().retried == 5
    assert statuses(engine) == {"pending": 5}

    def all_failed(_: object) -> bool:  # each event backs off on its own schedule: run until the last one gave up
        relay.run_until_idle()
        return statuses(engine) == {"failed": 5}

    assert receiver.wait_for(all_failed, timeout=10)
    report = status(engine)
    assert report.counts["failed"] == 5 and "HTTP 500" in report.recent_failures[0]["last_error"]

    receiver.fail_next(0)
    assert retry_failed(engine) == 5
    assert relay.run_until_idle().delivered == 5 and statuses(engine) == {"done": 5}


def test_a_relay_killed_after_claiming_leaves_events_for_another_after_the_lease(engine: Engine, receiver: WebhookReceiver) -> None:
    add_events(engine, 10)
    dead = Relay(engine, [sink(receiver)], FAST, relay_id="dead")
    assert len(dead.claim()) == 10  # claimed, then the process "dies": nothing settles
    alive = Relay(engine, [sink(receiver)], FAST, relay_id="alive")
    assert alive.run_once().claimed == 0  # leased to the dead relay
    with engine.begin() as conn:  # the lease runs out (moved into the past rather than waited for)
        conn.execute(OutboxEvent.__table__.update().where(OutboxEvent.claimed_by == "dead").values(claimed_until=utcnow() - dt.timedelta(seconds=1)))
    assert alive.run_until_idle().delivered == 10
    assert sorted(e["payload"]["n"] for e in receiver.events()) == list(range(10))
    assert statuses(engine) == {"done": 10}


@pytest.mark.postgres
def test_two_relays_at_once_deliver_every_event_exactly_once(pg_url: str, receiver: WebhookReceiver) -> None:
    engine = create_engine(pg_url, pool_size=4)
    add_events(engine, 3000, aggregates=200)
    stop = threading.Event()
    relays = [Relay(engine, [sink(receiver)], FAST, relay_id=f"r{i}") for i in range(2)]
    threads = [threading.Thread(target=relay.run_forever, args=(stop,)) for relay in relays]
    for thread in threads:
        thread.start()
    try:
        assert receiver.wait_for(lambda r: len(r.events()) >= 3000, timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    received = Counter(e["id"] for e in receiver.events())
    assert len(received) == 3000 and set(received.values()) == {1}  # none lost, none twice
    by_aggregate: dict[str, list[int]] = {}
    for event in receiver.events():
        by_aggregate.setdefault(event["aggregate_id"], []).append(event["payload"]["n"])
    assert all(ns == sorted(ns) for ns in by_aggregate.values())  # in order per study, across relays
    with engine.connect() as conn:
        workers = Counter(conn.execute(select(OutboxEvent.claimed_by)).scalars())
    assert set(workers) == {"r0", "r1"}  # both relays really took part
    engine.dispose()


def test_done_events_are_pruned_after_their_retention(engine: Engine, receiver: WebhookReceiver) -> None:
    import datetime as dt

    add_events(engine, 4)
    Relay(engine, [sink(receiver, secret=None)], FAST).run_until_idle()
    assert prune_done(engine, dt.timedelta(days=1)) == 0
    assert prune_done(engine, dt.timedelta(seconds=-1)) == 4
    assert statuses(engine) == {}
