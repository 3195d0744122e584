"""Sealing and archiving a month of the audit log: how long for N entries, against the 10-minute target for 10 million.

    .venv/bin/python bench/audit_archive.py --entries 10000000

A fresh PostgreSQL database, migrated; one past month's partition filled with
``--entries`` audit entries written by SQL in transactions of 500,000 (an
API search's entry each: path, query, status; about the size of a real one),
then, timed apart:

1. ``seal``: the sealer over all of them (in production it runs every minute
   over what that minute wrote; here it takes the month at once);
2. ``archive``: ``imaging_sync.audit_archive.archive_month`` into a bucket of
   moto's S3 server in its own process: the export (gzip JSON lines), the
   upload, the read-back and recomputation of every seal from what the bucket
   holds, the count check, then detaching and dropping the partitions;
3. ``verify``: ``audit verify`` of what is left, stepping over the archived month.

Prints each phase's seconds and rows per second, the objects' sizes and
the comparison with the target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from s3_servers import open_s3  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from imaging_sync import audit_archive, audit_seals  # noqa: E402
from imaging_sync.config import DatabaseConfig  # noqa: E402
from imaging_sync.db import migrate, partitions  # noqa: E402
from imaging_sync.db.engine import create_db_engine  # noqa: E402
from storage.audit_store import AuditObjectStore  # noqa: E402
from storage.registry import BucketRegistry  # noqa: E402

ADMIN = os.environ.get("IMAGING_SYNC_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MONTH = dt.date(2025, 1, 1)
CHUNK = 500_000
TARGET_SECONDS, TARGET_ENTRIES = 600, 10_000_000


def fresh_database(name: str) -> str:
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return ADMIN.rsplit("/", 1)[0] + f"/{name}"


def fill(engine: object, entries: int) -> float:
    """``entries`` entries spread over MONTH, in transactions of CHUNK; seconds taken."""
    start_ms = int(dt.datetime(MONTH.year, MONTH.month, 1, tzinfo=dt.UTC).timestamp() * 1000)
    span_ms = 28 * 86400 * 1000
    started = time.perf_counter()
    for first in range(0, entries, CHUNK):
        last = min(entries, first + CHUNK)
        with engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(text("""
                INSERT INTO audit_log (id, at, channel, actor, actor_role, client_addr, action, method, path, query, resource_type, outcome, status)
                SELECT (lpad(to_hex(ms), 12, '0') || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
                       to_timestamp(ms / 1000.0), 'http', 'isk_' || lpad((g % 97)::text, 6, '0'), 'viewer', '10.0.' || (g % 250) || '.7',
                       'search', 'GET', '/api/v1/studies', jsonb_build_object('name', 'KIM*', 'modality', 'CT', 'limit', 50),
                       'study', 'success', 200
                  FROM generate_series(:first, :last - 1) AS g,
                       LATERAL (SELECT :start + (g::bigint * :span / :n) AS ms, md5(g::text) AS h) AS x
            """), {"first": first, "last": last, "start": start_ms, "span": span_ms, "n": entries})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    url = fresh_database("isync_bench_audit_archive")
    engine = create_db_engine(DatabaseConfig(url=url))
    migrate.upgrade(engine)
    with engine.begin() as conn:
        partitions.create_month(conn, MONTH)
    print(f"audit archive benchmark: {args.entries:,} entries in {MONTH:%Y-%m}; PostgreSQL {url.rsplit('@', 1)[-1]}; {os.cpu_count()} cores")
    filled = fill(engine, args.entries)
    print(f"  fill (SQL):   {filled:7.1f} s")

    started = time.perf_counter()
    sealed = audit_seals.seal_through_now(engine, timeout=3600)
    sealing = time.perf_counter() - started
    print(f"  seal:         {sealing:7.1f} s  {sealed.rows / sealing:9,.0f} rows/s  ({len(sealed.seals)} seal(s), {sealed.rows:,} rows)")

    with open_s3("moto", ["us-east-1"], os.environ) as s3:
        os.environ.update(s3.environ)
        bucket = s3.buckets[0].name
        store = AuditObjectStore(BucketRegistry(s3.config), bucket, "audit-archive/", retention_years=5)
        started = time.perf_counter()
        result = audit_archive.archive_month(engine, store, MONTH)
        archiving = time.perf_counter() - started
        sizes = {name: s3.client("us-east-1").head_object(Bucket=bucket, Key=f"audit-archive/{MONTH:%Y-%m}/{name}")["ContentLength"]
                 for name in (audit_archive.DATA, audit_archive.SEALS, audit_archive.MANIFEST)}
    rows = sum(result.rows.values())
    print(f"  archive:      {archiving:7.1f} s  {rows / archiving:9,.0f} rows/s  (export, upload, read back, every seal recomputed, drop)")
    print("  objects:      " + ", ".join(f"{name} {size / 1e6:,.1f} MB" for name, size in sizes.items()))
    started = time.perf_counter()
    report = audit_seals.verify(engine)
    print(f"  verify after: {time.perf_counter() - started:7.1f} s  ok={report.ok} (the archived month stepped over)")
    projected = archiving * TARGET_ENTRIES / max(rows, 1)
    verdict = "under" if projected < TARGET_SECONDS else "OVER"
    print(f"archive of {TARGET_ENTRIES:,} entries: {projected:,.0f} s {'measured' if rows >= TARGET_ENTRIES else 'projected linearly'}"
          f" — {verdict} the {TARGET_SECONDS} s target")
    engine.dispose()


if __name__ == "__main__":
    main()
