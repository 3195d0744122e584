"""REST searches in process: the catalog's study and subject searches on the API benchmark's data, timed per query shape.

A micro-benchmark beside ``api_latency.py`` (which runs the HTTP server under
load): no HTTP, no key check, no audit; only ``catalog.studies.search_studies``
and ``catalog.subjects.search_subjects``, their SQL on PostgreSQL and the rows
they return, on one connection in autocommit as the API has it. The data is
``api_latency.py``'s (100k studies, 50k subjects, a third with Hangul names),
copied once into a database of its own (``isync_bench_search``, from the
template ``imaging_sync_bench_api``; build that first with
``python bench/api_latency.py --only study``) and migrated to this
checkout's head.

``--ab OTHER``: the same query values, alternately through this checkout's
code and through the code of the tree ``OTHER`` (an export of the commit
before a change, say), each run a fresh process on the same database, the
order flipped every round; per scenario the median of each side and their
ratio. A migration newer than ``OTHER`` adds what its code does not read.

    python bench/search_latency.py --rounds 6 --ab /tmp/before
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ADMIN_URL = os.environ.get("IMAGING_SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TEMPLATE, DB_NAME = "imaging_sync_bench_api", "isync_bench_search"
SUBJECTS, STUDIES, FIRST_DATE = 50_000, 100_000, dt.date(2016, 1, 1)
UID_ROOT = "1.2.826.0.1.3680043.10.999"
WORDS = ["kim min", "홍", "길동", "park s", "lee ye", "민지", "choi", "jung hajun", "gil", "yoon do", "김 민준", "kang"]
PATTERNS = ["kim^min*", "홍*", "*길동", "park^s*", "lee^ye*", "*^민지", "choi*", "jung^h?jun"]
MODALITIES = ["CT", "MR", "CR", "US", "DX", "PT", "MG", "NM"]


def scenarios(seed: int, count: int) -> dict[str, list[dict[str, Any]]]:
    """Scenario -> the filters of each query (the same list for both sides of an A/B)."""
    rng = random.Random(seed)

    def day() -> dt.date:
        return FIRST_DATE + dt.timedelta(days=rng.randrange(3620))

    def window(days: int) -> dict[str, Any]:
        start = day()
        return {"date_from": start, "date_to": start + dt.timedelta(days=days)}

    return {
        "studies by patient id": [{"patient_id": f"BP{rng.randrange(SUBJECTS):07d}"} for _ in range(count)],
        "studies by name words": [{"name": rng.choice(WORDS)} for _ in range(count)],
        "studies by name wildcard": [{"patient_name": rng.choice(PATTERNS)} for _ in range(count)],
        "studies by date range": [window(rng.choice((1, 7, 30))) for _ in range(count)],
        "studies by modality + month": [{"modality": rng.choice(MODALITIES), **window(30)} for _ in range(count)],
        "studies by accession": [{"accession": f"A{rng.randrange(STUDIES):08d}"} for _ in range(count)],
        "studies by study uid": [{"study_uid": f"{UID_ROOT}.{rng.randrange(STUDIES)}"} for _ in range(count)],
        "studies, newest": [{} for _ in range(count)],
        "subjects by name wildcard": [{"patient_name": rng.choice(PATTERNS)} for _ in range(count)],
    }


# -- one run, in the code of the tree it is started in ----------------------------------------------


def worker(db_url: str, seed: int, count: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds of each query of each scenario (after ``warmup`` untimed queries of each)."""
    from imaging_sync.catalog.studies import StudyQuery, search_studies
    from imaging_sync.catalog.subjects import search_subjects
    from imaging_sync.config import DatabaseConfig
    from imaging_sync.db.engine import create_db_engine

    engine = create_db_engine(DatabaseConfig(url=db_url))
    timings: dict[str, list[float]] = {}
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")

        def run(name: str, filters: dict[str, Any]) -> None:
            if name.startswith("subjects"):
                search_subjects(conn, limit=50, **filters)
            else:
                search_studies(conn, StudyQuery(**filters), limit=50)

        for name, queries in scenarios(seed, count).items():
            for filters in scenarios(seed + 1, warmup)[name]:
                run(name, filters)
            times = []
            for filters in queries:
                started = time.perf_counter()
                run(name, filters)
                times.append((time.perf_counter() - started) * 1000)
            timings[name] = times
    engine.dispose()
    return timings


# -- the driver --------------------------------------------------------------------------------------


def prepare(rebuild: bool) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from imaging_sync.db import migrate

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": DB_NAME}).first() is not None
        if rebuild or not exists:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": TEMPLATE}).first() is None:
                sys.exit(f"no {TEMPLATE}: build it first (python bench/api_latency.py --only study)")
            print(f"copying {TEMPLATE} into {DB_NAME} …", file=sys.stderr)
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{DB_NAME}" TEMPLATE "{TEMPLATE}"'))
    admin.dispose()
    url = make_url(ADMIN_URL).set(database=DB_NAME).render_as_string(hide_password=False)
    engine = create_engine(url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return url


def run_in(tree: Path, db_url: str, seed: int, count: int, warmup: int) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = [sys.executable, str(Path(__file__).resolve()), "--worker", "--db", db_url, "--seed", str(seed), "--count", str(count), "--warmup", str(warmup)]
    out = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="runs per side (a fresh process each)")
    parser.add_argument("--count", type=int, default=200, help="timed queries per scenario per run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed queries per scenario per run, first")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--ab", type=Path, metavar="OTHER", help="alternate with the code of this tree")
    parser.add_argument("--rebuild", action="store_true", help="copy the template database again")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.db, args.seed, args.count, args.warmup)))
        return

    here = Path(__file__).resolve().parents[1]
    db_url = prepare(args.rebuild)
    sides = {"this": here, **({"other": args.ab.resolve()} if args.ab else {})}
    runs: dict[str, list[dict[str, list[float]]]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        order = list(sides.items()) if round_ % 2 == 0 else list(reversed(sides.items()))
        for side, tree in order:
            # Each round its own query values (the same on both sides): the rounds together cover more of the data.
            runs[side].append(run_in(tree, db_url, args.seed + 100 * round_, args.count, args.warmup))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"REST search in process, {STUDIES:,} studies (PostgreSQL), {args.rounds} runs × {args.count} queries per scenario and side, medians in ms")
    header = f"{'scenario':30} " + " ".join(f"{side:>10}" for side in sides) + ("   this/other   per-run medians this | other" if args.ab else "   per-run medians")
    print(header)
    for name in runs["this"][0]:
        medians = {side: statistics.median(t for run in runs[side] for t in run[name]) for side in sides}
        per_run = {side: [statistics.median(run[name]) for run in runs[side]] for side in sides}
        line = f"{name:30} " + " ".join(f"{medians[side]:10.3f}" for side in sides)
        if args.ab:
            line += f"   {medians['this'] / medians['other']:10.3f}   " + " ".join(f"{m:.2f}" for m in per_run["this"]) + " | " + " ".join(f"{m:.2f}" for m in per_run["other"])
        else:
            line += "   " + " ".join(f"{m:.2f}" for m in per_run["this"])
        print(line)


if __name__ == "__main__":
    main()
