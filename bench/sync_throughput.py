"""End-to-end sync throughput from the partner simulator into PostgreSQL, against the COPY floor.

For each size: a fresh database, the simulator in its own process (as a real
partner would be), then
  1. a full sync (instances/s),
  2. a no-change re-pull with the bookmark reset (must write nothing),
  3. the floor: the same rows COPYed into the same tables (indexes and
     constraints in place), timed alone.
Prints the figures, the sync/COPY ratio (target ≥ 1/3) and the re-pull/full
ratio (target < 25%).

    python bench/sync_throughput.py --instances 100000 1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from devtools.factories import settings_for, simulator_partner
from imaging_sync.config import DatabaseConfig
from imaging_sync.db import migrate
from imaging_sync.db.engine import create_db_engine
from imaging_sync.db.models import Base, Instance
from imaging_sync.sync.runner import SyncRunner

SERIES_PER_STUDY, INSTANCES_PER_SERIES = 2, 5
KEY_ENV = "IMAGING_SYNC_BENCH_KEY"


@contextmanager
def simulator_process(studies: int) -> Iterator[str]:
    env = {**os.environ, KEY_ENV: "bench-key"}
    command = [sys.executable, "-m", "devtools.simulator", "--partner", "bench", "--studies", str(studies),
               "--series", str(SERIES_PER_STUDY), "--instances", str(INSTANCES_PER_SERIES), "--port", "0", "--api-key-env", KEY_ENV]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if "listening on" not in line:
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield line.strip().split()[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)


def fresh_database(admin_url: str, name: str) -> str:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def copy_floor(url: str) -> tuple[float, int]:
    """Seconds to COPY every index row back into the same (emptied) tables; and the row count."""
    tables = [t.name for t in Base.metadata.sorted_tables if t.name in ("subject", "study", "series", "instance", "entity_link", "instance_location")]
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    dumps: dict[str, bytes] = {}
    rows = 0
    with psycopg.connect(dsn) as conn:
        for table in tables:
            buffer = io.BytesIO()
            with conn.cursor().copy(f'COPY "{table}" TO STDOUT (FORMAT binary)') as copy:
                for chunk in copy:
                    buffer.write(chunk)
            dumps[table] = buffer.getvalue()
            rows += conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
        conn.commit()
        started = time.perf_counter()
        for table in tables:  # parents first: foreign keys checked as in the sync
            with conn.cursor().copy(f'COPY "{table}" FROM STDIN (FORMAT binary)') as copy:
                data = dumps[table]
                for offset in range(0, len(data), 1 << 20):
                    copy.write(data[offset : offset + (1 << 20)])
        conn.commit()
        return time.perf_counter() - started, rows


def bench(instances: int, admin_url: str) -> dict[str, float]:
    studies = instances // (SERIES_PER_STUDY * INSTANCES_PER_SERIES)
    url = fresh_database(admin_url, "imaging_sync_bench")
    engine = create_db_engine(DatabaseConfig(url=url, pool_size=2))
    migrate.upgrade(engine)
    os.environ[KEY_ENV] = "bench-key"
    with simulator_process(studies) as base_url:
        partner = simulator_partner("bench", base_url, api_key_env=KEY_ENV, page_size=500, read_timeout=120.0)
        runner = SyncRunner(engine, settings_for(url, partner))
        full = runner.sync("bench")
        assert full.ok, full.error
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(Instance)).scalar_one()
        assert stored == instances, (stored, instances)
        repull = runner.sync("bench", full=True)
        assert repull.ok and repull.counts["unchanged"] == studies, repull.summary()
    engine.dispose()
    copy_seconds, rows = copy_floor(url)
    result = {
        "instances": instances,
        "full_s": full.seconds,
        "full_rate": instances / full.seconds,
        "repull_s": repull.seconds,
        "copy_s": copy_seconds,
        "copy_rate": instances / copy_seconds,
        "rows": rows,
    }
    result["sync_vs_copy"] = result["full_rate"] / result["copy_rate"]
    result["repull_vs_full"] = repull.seconds / full.seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--pg-url", default=os.environ.get("IMAGING_SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    print(f"# sync throughput, {dt.date.today()}, {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"# {SERIES_PER_STUDY} series x {INSTANCES_PER_SERIES} instances per study, page_size 500, simulator in its own process")
    header = f"{'instances':>10} {'full s':>8} {'inst/s':>9} {'re-pull s':>9} {'re-pull/full':>12} {'COPY s':>7} {'COPY inst/s':>11} {'sync/COPY':>9}"
    print(header)
    for size in args.instances:
        r = bench(size, args.pg_url)
        print(
            f"{r['instances']:>10,} {r['full_s']:>8.1f} {r['full_rate']:>9,.0f} {r['repull_s']:>9.1f} {r['repull_vs_full']:>11.0%} "
            f"{r['copy_s']:>7.1f} {r['copy_rate']:>11,.0f} {r['sync_vs_copy']:>9.2f}"
            f"   targets: sync/COPY >= 0.33 {'OK' if r['sync_vs_copy'] >= 1 / 3 else 'MISSED'}, re-pull/full < 25% {'OK' if r['repull_vs_full'] < 0.25 else 'MISSED'}",
            flush=True,
        )


if __name__ == "__main__":
    main()
