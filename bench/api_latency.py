"""REST API latency under load: 100k studies / 1M instances in PostgreSQL, uvicorn workers, 200 req/s.

1. A PostgreSQL database of its own (``imaging_sync_bench_api``), generated once with COPY and
   kept for later runs (``--rebuild`` regenerates it): 50k subjects (a third with Hangul names),
   100k studies over ten years, 2 series × 5 instances each, one series of 500 instances,
   entity links and a location per instance (bucket ``bench-dicom``), then ANALYZE.
2. An embedded S3 (moto, in this process) holding that bucket; signing never contacts it, one
   URL is fetched as a check.
3. ``imaging-sync serve api --workers N`` in a subprocess, with a config file naming both.
4. From this process, per scenario: an open-loop schedule of ``--rate`` requests/s over at most
   ``--concurrency`` keep-alive connections (bench/http_load.py, loopback), ``--requests`` requests after a warm-up;
   latency is measured from the scheduled send to the end of the body. The series-URL scenario
   (500 URLs per request) runs at ``--urls-rate`` requests/s while patient searches run at
   ``--rate`` beside it: each request is measured under the search load.

Prints p50/p99 per scenario and whether p99 < 50 ms (searches, detail) and < 100 ms (500 URLs),
with the machine's idle and steal time over the scenario (a shared VM's host takes its share).

    python bench/api_latency.py [--workers 2] [--rate 200] [--requests 2000] [--rebuild]
    python bench/api_latency.py --profile "search by name words"   # pyinstrument over in-process requests first
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import http_load
import httpx
import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from devtools.index_state import stale_facts
from imaging_sync import apikeys
from imaging_sync.catalog.facts import join_modalities
from imaging_sync.db import migrate
from imaging_sync.ids import new_ids
from imaging_sync.person_names import name_words, search_form
from imaging_sync.query.names import stored_words

ADMIN_URL = os.environ.get("IMAGING_SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DB_NAME = "imaging_sync_bench_api"
DATASET = "api-latency v4 (stored facts, study names, name words): 50000 subjects, 100000 studies, 2x5 instances, one 500-instance series"
SUBJECTS, STUDIES, SERIES_PER_STUDY, INSTANCES_PER_SERIES, BIG_SERIES = 50_000, 100_000, 2, 5, 500
BUCKET, REGION, PARTNER = "bench-dicom", "eu-west-1", "bench"
POOL_SIZE = 10  # per worker
KEY_ENV, SECRET_ENV, PARTNER_KEY_ENV = "BENCH_S3_ACCESS_KEY_ID", "BENCH_S3_SECRET_ACCESS_KEY", "BENCH_PARTNER_KEY"
FAMILY = [("김", "KIM"), ("이", "LEE"), ("박", "PARK"), ("최", "CHOI"), ("정", "JUNG"), ("강", "KANG"), ("조", "CHO"), ("윤", "YOON"), ("장", "JANG"), ("홍", "HONG")]
GIVEN = [
    ("민준", "MINJUN"), ("서연", "SEOYEON"), ("지우", "JIWOO"), ("하준", "HAJUN"), ("서윤", "SEOYUN"), ("도윤", "DOYUN"),
    ("민지", "MINJI"), ("길동", "GILDONG"), ("예은", "YEEUN"), ("현우", "HYUNWOO"), ("민호", "MINHO"), ("수아", "SUA"),
]
MODALITIES = ["CT", "MR", "CR", "US", "DX", "PT", "MG", "NM"]
FIRST_DATE = dt.date(2016, 1, 1)
UID_ROOT = "1.2.826.0.1.3680043.10.999"
T = TypeVar("T")


# -- the database ---------------------------------------------------------------------


def bench_url() -> str:
    return make_url(ADMIN_URL).set(database=DB_NAME).render_as_string(hide_password=False)


def database_ready() -> bool:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            comment = conn.execute(
                text("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :n"), {"n": DB_NAME}
            ).scalar_one_or_none()
    finally:
        admin.dispose()
    if comment != DATASET:
        return False
    engine = create_engine(bench_url())
    try:
        return migrate.is_current(engine)
    finally:
        engine.dispose()


def build_database() -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
    admin.dispose()
    engine = create_engine(bench_url())
    migrate.upgrade(engine)
    engine.dispose()
    started = time.monotonic()
    with psycopg.connect(make_url(bench_url()).set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        load(conn)
        conn.commit()
        engine = create_engine(bench_url())
        stale = stale_facts(engine)
        engine.dispose()
        assert not stale, stale[:3]
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        conn.execute(f"COMMENT ON DATABASE \"{DB_NAME}\" IS '{DATASET}'")
    print(f"generated {STUDIES} studies, {instance_total()} instances in {time.monotonic() - started:.0f}s", file=sys.stderr)


def instance_total() -> int:
    return STUDIES * SERIES_PER_STUDY * INSTANCES_PER_SERIES - INSTANCES_PER_SERIES + BIG_SERIES


def load(conn: psycopg.Connection) -> None:
    rng = random.Random(42)
    now = dt.datetime.now(dt.UTC)
    entity = ("source_partner", "source_priority", "created_at", "updated_at")
    link_cols = "id, partner, entity_type, entity_id, partner_entity_id, partner_study_id, content_hash, attrs, created_at, updated_at"
    subject_ids = new_ids(SUBJECTS)
    names: list[str] = []
    with conn.cursor() as cur:
        with cur.copy(f"COPY subject (id, issuer, patient_id, patient_name, patient_name_search, patient_name_words, birth_date, sex, {', '.join(entity)}) FROM STDIN") as copy:
            for n, sid in enumerate(subject_ids):
                (fk, fe), (gk, ge) = rng.choice(FAMILY), rng.choice(GIVEN)
                names.append(f"{fk}^{gk}" if rng.random() < 0.3 else f"{fe}^{ge}")
                birth = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(33000))
                copy.write_row((sid, "HOSP-A" if n % 2 else "HOSP-B", f"BP{n:07d}", names[-1], search_form(names[-1]), stored_words(names[-1]), birth, rng.choice("MFO"), PARTNER, 0, now, now))
        with cur.copy("COPY subject_name_token (token, subject_id) FROM STDIN") as copy:
            for name, sid in zip(names, subject_ids, strict=True):
                for word in name_words(name):
                    copy.write_row((word, sid))
        study_ids = new_ids(STUDIES)
        series_ids = new_ids(STUDIES * SERIES_PER_STUDY)
        counts = [BIG_SERIES if n == 0 else INSTANCES_PER_SERIES for n in range(len(series_ids))]
        # The facts catalog.facts keeps (checked against the rows by stale_facts after the load).
        study_facts = "patient_name_search, patient_name_words, modalities, series_count, instance_count, partners"
        with cur.copy(f"COPY study (id, study_instance_uid, subject_id, accession_number, study_date, study_time, description, {study_facts}, {', '.join(entity)}) FROM STDIN") as copy:
            for n, sid in enumerate(study_ids):
                date = None if rng.random() < 0.02 else FIRST_DATE + dt.timedelta(days=rng.randrange(3650))
                own = range(n * SERIES_PER_STUDY, (n + 1) * SERIES_PER_STUDY)
                modalities = join_modalities(MODALITIES[k % len(MODALITIES)] for k in own)
                copy.write_row((sid, f"{UID_ROOT}.{n}", subject_ids[n % SUBJECTS], f"A{n:08d}", date, "101500", "CT CHEST W/O CONTRAST",
                                search_form(names[n % SUBJECTS]), stored_words(names[n % SUBJECTS]), modalities, SERIES_PER_STUDY, sum(counts[k] for k in own), PARTNER, PARTNER, 0, now, now))
        with cur.copy(f"COPY series (id, series_instance_uid, study_id, modality, series_number, description, body_part_examined, instance_count, partners, {', '.join(entity)}) FROM STDIN") as copy:
            for n, sid in enumerate(series_ids):
                copy.write_row((sid, f"{UID_ROOT}.{n // SERIES_PER_STUDY}.{n % SERIES_PER_STUDY + 1}", study_ids[n // SERIES_PER_STUDY], MODALITIES[n % len(MODALITIES)],
                                n % SERIES_PER_STUDY + 1, "AXIAL", "CHEST", counts[n], PARTNER, PARTNER, 0, now, now))
        instance_ids = new_ids(sum(counts))
        with cur.copy(f"COPY instance (id, sop_instance_uid, series_id, sop_class_uid, transfer_syntax_uid, instance_number, {', '.join(entity)}) FROM STDIN") as copy:
            i = 0
            for n, series in enumerate(series_ids):
                for k in range(counts[n]):
                    uid = f"{UID_ROOT}.{n // SERIES_PER_STUDY}.{n % SERIES_PER_STUDY + 1}.{k + 1}"
                    copy.write_row((instance_ids[i], uid, series, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", k + 1, PARTNER, 0, now, now))
                    i += 1
        with cur.copy("COPY instance_location (id, instance_id, partner, bucket, key, size_bytes, created_at, updated_at) FROM STDIN") as copy:
            for _, iid in enumerate(instance_ids):
                copy.write_row((iid, iid, PARTNER, BUCKET, f"studies/{iid}.dcm", 524_288, now, now))
        link_ids = iter(new_ids(len(study_ids) + len(series_ids) + len(instance_ids) + len(subject_ids)))
        with cur.copy(f"COPY entity_link ({link_cols}) FROM STDIN") as copy:
            for n, sid in enumerate(subject_ids):
                copy.write_row((next(link_ids), PARTNER, "subject", sid, f"P{n}", f"S{n}", "h", "{}", now, now))
            for n, sid in enumerate(study_ids):
                copy.write_row((next(link_ids), PARTNER, "study", sid, f"S{n}", f"S{n}", "h", "{}", now, now))
            for n, sid in enumerate(series_ids):
                copy.write_row((next(link_ids), PARTNER, "series", sid, f"E{n}", f"S{n // SERIES_PER_STUDY}", "h", "{}", now, now))
            i = 0
            for n, _series in enumerate(series_ids):
                for _ in range(counts[n]):
                    copy.write_row((next(link_ids), PARTNER, "instance", instance_ids[i], f"I{i}", f"S{n // SERIES_PER_STUDY}", "h", "{}", now, now))
                    i += 1


# -- the server -------------------------------------------------------------------------


def write_config(path: Path, endpoint: str) -> Path:
    path.write_text(
        f"""[database]
url = "{bench_url()}"
pool_size = {POOL_SIZE}

[logging]
level = "WARNING"

[api]
default_page_size = 50
max_page_size = 200

[storage]
presign_default_seconds = 300

[storage.buckets.{BUCKET}]
region = "{REGION}"
endpoint_url = "{endpoint}"
auth = "keys"
access_key_id_env = "{KEY_ENV}"
secret_access_key_env = "{SECRET_ENV}"
addressing_style = "path"

[partners.{PARTNER}]
base_url = "http://127.0.0.1:9"
api_key_env = "{PARTNER_KEY_ENV}"
default_bucket = "{BUCKET}"
""",
        encoding="utf-8",
    )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def viewer_token() -> str:
    engine = create_engine(bench_url())
    with engine.begin() as conn:
        _, token = apikeys.create_key(conn, "api latency bench", "viewer")
    engine.dispose()
    return token


# -- the load -------------------------------------------------------------------------------


def scenarios(rng: random.Random, sample: dict[str, list[str]]) -> dict[str, tuple[Callable[[], str], float]]:
    """name -> (next request path, p99 target in ms)."""
    # What a search box sends (REST ``name``: word prefixes) and what a DICOM-minded client does (``patient_name``: wildcards).
    words = ["kim min", "홍", "길동", "park s", "lee ye", "민지", "choi", "jung hajun", "gil", "yoon do", "김 민준", "kang"]
    patterns = ["kim^min*", "홍*", "*길동", "park^s*", "lee^ye*", "*^민지", "choi*", "jung^h?jun"]

    def date_window() -> str:
        start = FIRST_DATE + dt.timedelta(days=rng.randrange(3620))
        return f"/api/v1/studies?date_from={start}&date_to={start + dt.timedelta(days=rng.choice((1, 7, 30)))}"

    return {
        "search by patient id": (lambda: f"/api/v1/studies?patient_id=BP{rng.randrange(SUBJECTS):07d}", 50),
        "search by name words": (lambda: "/api/v1/studies?name=" + quote(rng.choice(words)), 50),
        "search by name wildcard": (lambda: "/api/v1/studies?patient_name=" + quote(rng.choice(patterns)), 50),
        "search by date range": (date_window, 50),
        "study detail": (lambda: f"/api/v1/studies/{rng.choice(sample['studies'])}", 50),
        "series/{id}/urls (500)": (lambda: f"/api/v1/series/{sample['big_series'][0]}/urls", 100),
    }


URL_SCENARIO = "series/{id}/urls (500)"


async def urls_under_search_load(
    port: int, auth: dict[str, str], urls: Callable[[], str], searches: Callable[[], str], count: int, urls_rate: float, rate: float, concurrency: int
) -> http_load.Results:
    """``count`` series-URL requests at ``urls_rate``/s while patient searches run at ``rate``/s beside them.

    500 URLs per request is a viewer opening a whole series; 200 of those a second
    would be 100,000 signatures a second, not what the frontend does. The target
    (500 URLs in under 100 ms) is read as: each such request, under the search load.
    """
    seconds = count / urls_rate
    measured, _ = await asyncio.gather(
        http_load.open_loop("127.0.0.1", port, auth, [urls() for _ in range(count)], urls_rate, max(1, concurrency // 4)),
        http_load.open_loop("127.0.0.1", port, auth, [searches() for _ in range(int(seconds * rate))], rate, concurrency),
    )
    return measured


def prewarm() -> str:
    """Load the bench database into PostgreSQL's buffers (pg_prewarm), so that every run measures a warm index.

    This VM drops file cache within seconds (1.66 -> 1.33 GB in 30 s, idle):
    without it a run after a restart, or after another benchmark, read pages
    from disk mid-search. Says what it did, and whether shared_buffers holds it all.
    """
    engine = create_engine(bench_url())
    try:
        with engine.begin() as conn:
            if conn.execute(text("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_prewarm'")).scalar_one() == 0:
                return "pg_prewarm not available: cache as found"
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
            blocks = conn.execute(text(
                "SELECT sum(pg_prewarm(c.oid)) FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'i')"
            )).scalar_one()
            size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
            buffers = conn.execute(text("SELECT setting::bigint * 8192 FROM pg_settings WHERE name = 'shared_buffers'")).scalar_one()
    finally:
        engine.dispose()
    fits = "holds it" if buffers >= size else "does NOT hold it: expect disk reads"
    return f"prewarmed {blocks * 8192 / 2**20:.0f} MB; database {size / 2**20:.0f} MB, shared_buffers {buffers / 2**20:.0f} MB ({fits})"


def wait_for_workers(workers: int, server_log: IO[str], timeout: float = 120.0) -> None:
    """Wait until every worker has opened its connection pool (api.db.open_pool, at each worker's start).

    /ready answers as soon as the first worker listens; the others were still
    starting (importing, on the same two cores) during the first seconds measured.
    """
    engine = create_engine(bench_url())
    deadline = time.monotonic() + timeout
    try:
        with engine.connect() as conn:
            while True:
                opened = conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )).scalar_one()
                if opened >= workers * POOL_SIZE:
                    return
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {opened} of {workers * POOL_SIZE} API connections opened after {timeout:.0f} s; the server said:\n{tail(server_log)}")
                time.sleep(0.2)
    finally:
        engine.dispose()


def tail(log: IO[str], lines: int = 40) -> str:
    """The end of the server's log (a file, not a pipe: nobody reads a pipe mid-run, and a full one blocks the workers)."""
    log.flush()
    log.seek(0)
    return "".join(log.readlines()[-lines:])


def sample_ids() -> dict[str, list[str]]:
    engine = create_engine(bench_url())
    with engine.connect() as conn:
        studies = [str(r[0]) for r in conn.execute(text("SELECT id FROM study TABLESAMPLE SYSTEM (2) LIMIT 2000"))]
        big = conn.execute(text("SELECT series_id FROM instance GROUP BY series_id HAVING count(*) >= :n LIMIT 1"), {"n": BIG_SERIES}).scalar_one()
    engine.dispose()
    return {"studies": studies, "big_series": [str(big)]}


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run the load generator on uvloop when it is installed (less client CPU per request).

    The collector is off while it runs: this process also holds the embedded S3 (moto,
    botocore), and gc callbacks caught full collections of 60-120 ms here mid-scenario,
    every request due meanwhile charged to the server. The heap so far is frozen first,
    so the collection between runs stays short too.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(coroutine)
        return uvloop.run(coroutine)
    finally:
        gc.enable()


def process_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def machine_times() -> list[int]:
    """The machine's CPU time so far, per state (Linux /proc/stat: user nice system idle iowait irq softirq steal)."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def machine_share(before: list[int], after: list[int]) -> str:
    """Idle and steal over an interval, in percent: a p99 missed while the host took the CPU is the host's."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    return f"idle {100 * (delta[3] + delta[4]) / total:.0f} %, steal {100 * delta[7] / total:.0f} %"


def server_pids(root: int) -> list[int]:
    """``root`` and every process below it (uvicorn's supervisor, its workers)."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                pass
    found = {root}
    while True:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            return sorted(found)
        found |= more


def postgres_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _comm(p) == "postgres"]


def _comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def profile(name: str, count: int) -> None:
    """pyinstrument over ``count`` in-process requests of one scenario.

    The app's thread hops (sync handlers, the key check, the audit write) run
    inline here so that one profiler on one thread sees the whole request.
    """
    import anyio.to_thread
    import litestar.concurrency
    from pyinstrument import Profiler

    from app.assembly import api_app_from_environment

    async def inline(fn: Callable[..., object], *args: object, **kwargs: object) -> object:
        return fn(*args, **kwargs)

    litestar.concurrency._run_sync_asyncio = inline  # type: ignore[assignment]
    anyio.to_thread.run_sync = inline  # type: ignore[assignment]
    token = viewer_token()
    next_path, _ = scenarios(random.Random(1), sample_ids())[name]
    app = api_app_from_environment()

    async def run() -> Profiler:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers={"Authorization": f"Bearer {token}"}) as client:
            for _ in range(20):
                await client.get(next_path())
            profiler = Profiler(interval=0.0005, async_mode="disabled")
            profiler.start()
            for _ in range(count):
                assert (await client.get(next_path())).status_code == 200
            profiler.stop()
            return profiler

    profiler = asyncio.run(run())
    print(profiler.output_text(unicode=True, color=False, show_all=bool(os.environ.get("PROFILE_ALL"))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4, help="uvicorn workers (4 on 2 cores: requests spread over more processes while others wait on PostgreSQL)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second per scenario")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per scenario")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--urls-rate", type=float, default=10.0, help="series-URL requests per second, measured under the search load (--rate)")
    parser.add_argument("--url-requests", type=int, default=300, help="measured series-URL requests")
    parser.add_argument("--rebuild", action="store_true", help="regenerate the database even if it is there")
    parser.add_argument("--capacity", action="store_true", help="also measure each scenario's closed-loop throughput and CPU per request (client, API, PostgreSQL)")
    parser.add_argument("--only", metavar="SCENARIO", help="run only the scenarios whose names start with this")
    parser.add_argument("--timeline", action="store_true", help="after each scenario, how many requests over its target were due in each second of the run")
    parser.add_argument("--profile", metavar="SCENARIO", help="profile one scenario in-process (pyinstrument) instead of the load run; prefix of its name")
    args = parser.parse_args()

    names = list(scenarios(random.Random(), {"studies": ["x"], "big_series": ["x"]}))
    if args.only and not any(n.startswith(args.only) for n in names):
        parser.error(f"--only {args.only!r} matches no scenario: {', '.join(names)}")
    if args.rebuild or not database_ready():
        print(f"generating {DB_NAME} ({DATASET}) …", file=sys.stderr)
        build_database()

    from storage.embedded import EmbeddedS3

    os.environ.setdefault(KEY_ENV, "AKIABENCH")
    os.environ.setdefault(SECRET_ENV, "bench-secret")
    os.environ.setdefault(PARTNER_KEY_ENV, "unused")
    with EmbeddedS3(buckets={BUCKET: REGION}) as s3, tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as server_log:
        config = write_config(Path(tmp) / "imaging-sync.toml", s3.endpoint_url)
        os.environ["IMAGING_SYNC_CONFIG"] = str(config)
        if args.profile:
            name = next(n for n in names if n.startswith(args.profile))
            profile(name, 300)
            return
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "api", "--port", str(port), "--workers", str(args.workers)],
            stdout=subprocess.DEVNULL, stderr=server_log,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the API did not start:\n{tail(server_log)}")
                time.sleep(0.2)
            wait_for_workers(args.workers, server_log)
            token = viewer_token()
            rng = random.Random(7)
            sample = sample_ids()
            # Sanity: a signed URL from the run really downloads from the embedded S3.
            first = sample["big_series"][0]
            check = httpx.get(f"{base}/api/v1/series/{first}/urls", headers={"Authorization": f"Bearer {token}"}).json()["items"]
            s3.admin_client(REGION).put_object(Bucket=BUCKET, Key=f"studies/{check[0]['instance_id']}.dcm", Body=b"DICM")
            assert httpx.get(check[0]["url"]).content == b"DICM" and len(check) == BIG_SERIES

            print(f"api latency: {STUDIES:,} studies / {instance_total():,} instances (PostgreSQL), {args.workers} uvicorn workers, "
                  f"{args.rate:.0f} req/s open loop, {args.concurrency} connections, {args.requests} requests per scenario")
            print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
            print(f"postgresql: {prewarm()}")
            print(f"{'scenario':<44}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}  target")
            all_ok = True
            auth = {"Authorization": f"Bearer {token}"}
            for name, (next_path, target) in scenarios(rng, sample).items():
                if args.only and not name.startswith(args.only):
                    continue
                times = machine_times()
                if name == URL_SCENARIO:
                    searches = scenarios(rng, sample)["search by patient id"][0]
                    name = f"{name} at {args.urls_rate:.0f}/s + searches"
                    run(urls_under_search_load(port, auth, next_path, searches, 20, args.urls_rate, args.rate, args.concurrency))
                    measured = run(urls_under_search_load(port, auth, next_path, searches, args.url_requests, args.urls_rate, args.rate, args.concurrency))
                else:
                    run(http_load.open_loop("127.0.0.1", port, auth, [next_path() for _ in range(args.warmup)], args.rate, args.concurrency))
                    measured = run(http_load.open_loop("127.0.0.1", port, auth, [next_path() for _ in range(args.requests)], args.rate, args.concurrency))
                latencies, failures = measured.latencies_ms, measured.failures
                p50, p99 = statistics.median(latencies), percentile(latencies, 99)
                ok = p99 < target and failures == 0
                all_ok &= ok
                print(f"{name:<44}{p50:>9.1f}{p99:>9.1f}{max(latencies):>9.1f}{failures:>8}  p99 < {target} ms: {'yes' if ok else 'NO'}"
                      f"  (machine: {machine_share(times, machine_times())})")
                if args.timeline:
                    slow = measured.slow_seconds(target)
                    print(f"    over {target} ms, by second of the run: " + (", ".join(f"{s}s:{n}" for s, n in sorted(slow.items())) or "none"))
            print(f"all targets met: {'yes' if all_ok else 'no'}")
            if args.capacity:
                print("\ncapacity (closed loop, 8 connections) and CPU per request on this machine:")
                for name, (next_path, _) in scenarios(rng, sample).items():
                    if args.only and not name.startswith(args.only):
                        continue
                    run(http_load.closed_loop("127.0.0.1", port, auth, [next_path() for _ in range(100)], 8))
                    api_pids, pg_pids = server_pids(server.pid), postgres_pids()
                    paths = [next_path() for _ in range(600)]
                    mine, api0, pg0 = time.process_time(), process_cpu(api_pids), process_cpu(pg_pids)
                    rate = run(http_load.closed_loop("127.0.0.1", port, auth, paths, 8))
                    per = lambda seconds: seconds / 600 * 1000  # noqa: E731
                    print(f"{name:<44}{rate:>6.0f} req/s   CPU/request: API {per(process_cpu(api_pids) - api0):.1f} ms, "
                          f"PostgreSQL {per(process_cpu(pg_pids) - pg0):.1f} ms, load generator {per(time.process_time() - mine):.1f} ms")
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
