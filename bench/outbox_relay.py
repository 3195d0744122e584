"""Outbox relay throughput on PostgreSQL: events/s delivered to a local webhook receiver.

100k pending events (two per study, so per-study ordering is exercised), then
one relay, then four relays (separate processes, as they would be deployed),
each run from a fresh set of pending events. Prints events/s and the scaling;
target: at least 2,000 events/s with one relay, scaling with relays.

    python bench/outbox_relay.py --events 100000 --relays 1 4
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import platform
import sys
import time
import uuid

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from devtools.webhook_receiver import WebhookReceiver
from imaging_sync.config import DatabaseConfig, OutboxConfig, WebhookConfig
from imaging_sync.db import migrate
from imaging_sync.db.engine import create_db_engine
from imaging_sync.db.models import OutboxEvent
from imaging_sync.ids import new_ids
from imaging_sync.outbox.relay import Relay
from imaging_sync.outbox.webhook import WebhookSink

CONFIG = OutboxConfig(batch_size=200, lease_seconds=60, poll_interval=0.05)


def fresh_database(admin_url: str, name: str) -> str:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def fill(url: str, events: int) -> None:
    engine = create_db_engine(DatabaseConfig(url=url))
    now = dt.datetime.now(dt.UTC)
    studies = [uuid.uuid4() for _ in range(events // 2)]
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE outbox_event"))
        ids = new_ids(events)
        for start in range(0, events, 10_000):
            rows = [
                {"id": ids[n], "event_type": "study.updated", "aggregate_type": "study", "aggregate_id": studies[n % len(studies)],
                 "payload": {"n": n, "study_id": str(studies[n % len(studies)])}, "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now}
                for n in range(start, min(start + 10_000, events))
            ]
            conn.execute(OutboxEvent.__table__.insert(), rows)
        conn.execute(text("ANALYZE outbox_event"))
    engine.dispose()


def relay_process(url: str, hook_url: str, relay_id: str) -> None:
    engine = create_db_engine(DatabaseConfig(url=url, pool_size=2))
    relay = Relay(engine, [WebhookSink(WebhookConfig(url=hook_url), None)], CONFIG, relay_id=relay_id)
    while relay.run_until_idle().claimed:
        pass
    engine.dispose()


def run(url: str, events: int, relays: int) -> float:
    fill(url, events)
    with WebhookReceiver() as receiver:
        started = time.perf_counter()
        processes = [multiprocessing.Process(target=relay_process, args=(url, receiver.url, f"relay-{i}")) for i in range(relays)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        seconds = time.perf_counter() - started
        received = {e["id"] for e in receiver.events()}
    engine = create_engine(url)
    with engine.connect() as conn:
        done = conn.execute(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.status == "done")).scalar_one()
    engine.dispose()
    assert done == events and len(received) == events, (done, len(received), events)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--relays", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--pg-url", default=os.environ.get("IMAGING_SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    url = fresh_database(args.pg_url, "imaging_sync_bench_outbox")
    migrate.upgrade(create_engine(url))
    print(f"# outbox relay, {dt.date.today()}, {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.events:,} events over {args.events // 2:,} studies, batch {CONFIG.batch_size}, webhook receiver on 127.0.0.1")
    print(f"{'relays':>6} {'seconds':>8} {'events/s':>9} {'vs 1 relay':>10}")
    base = None
    for relays in args.relays:
        seconds = run(url, args.events, relays)
        rate = args.events / seconds
        base = base or rate
        verdict = "" if relays != 1 else f"   target >= 2,000 events/s: {'OK' if rate >= 2000 else 'MISSED'}"
        print(f"{relays:>6} {seconds:>8.1f} {rate:>9,.0f} {rate / base:>9.2f}x{verdict}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
