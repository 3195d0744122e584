"""DICOM Q/R node vs Orthanc: the same C-FIND/C-ECHO mix and the same C-MOVEs, both driven by DCMTK, both measured alike.

For each size: the same generated studies go into our index (PostgreSQL; files
of the moved studies into an S3-compatible server, two partners' buckets) and
into Orthanc (Debian's ``orthanc``, started here with its own temporary config
and storage, loaded through its REST API). Our node runs as ``python -m app
serve dicom`` in its own process. Then DCMTK's findscu/echoscu run each query
type ``--repeat`` times against both (a new process and association per query,
as PACS clients do) and movescu moves ``--moves`` studies from each to a DCMTK
storescp. Prints per query type median and p95 (ms), matches, the CPU each
server spent per query, and the ratio ours ÷ Orthanc (≤ 1.00: ours at least as
fast); for C-MOVE instances/s, MB/s and CPU per instance.

What makes the comparison fair:

- Nagle off on both sides. Debian's DCMTK (Orthanc's DICOM layer and the
  DCMTK tools) leaves Nagle's algorithm on unless ``TCP_NODELAY=1`` is in the
  environment, while our node turns it off on its own sockets. Orthanc, our
  node, storescp and every client run with ``TCP_NODELAY=1`` (as packaged
  deployments of Orthanc should run it); without it Orthanc loses 40-55 ms
  per query to delayed ACKs.
- The same clients: DCMTK's tools by absolute path (``/usr/bin/findscu`` ...),
  not pynetdicom's scripts of the same names in the venv's ``bin``.
- Orthanc as configured out of the box for finds: its default
  ``StorageAccessOnFind`` and result limits (nothing set here changes what or
  how it answers); index and files on tmpfs, which if anything helps it.
- One network: everything (S3 server, Orthanc, our node, the DCMTK tools)
  runs in a loopback-only network namespace the script creates (and deletes):
  it re-executes itself under ``ip netns exec``. Orthanc 1.10 cannot bind
  127.0.0.1 alone, so this also keeps it off the machine's real interfaces.
  PostgreSQL (root namespace) is reached through its Unix socket.
  ``--no-netns`` runs in the current namespace instead.
- Warm servers: each node is measured once its start-up work is done (its CPU idle
  for a second: it builds its S3 clients after the port opens), and each query type
  and the moves start with an untimed request to every server.
- Alternation: each query and each move goes to every server in turn, which
  one first alternating, so a slow moment of the shared machine falls on all.
- CPU from ``/proc/<pid>/stat`` (utime + stime of the server process, all its
  threads and any children) over each query type and over the moves: our
  node, the PostgreSQL backends connected to the bench database (separate
  processes, so shown apart), Orthanc, and the S3 server (its own process).
- Large answers as well as point lookups: name wildcards matching a fifth of
  all patients at patient and study level, a whole year at study level,
  beside lookups by ID, accession, UID; C-ECHO (process + association) as
  the floor every row pays.

    python bench/dicom_qr.py --instances 40000 200000 --out dicom_qr-$(date +%F).txt

``--s3 moto`` (the default and, so far, the only one: see ``bench/s3_servers.py``
for adding a faster S3-compatible server) picks the server that holds the files
our node moves. Without Orthanc (``--no-orthanc``) the node is measured alone;
with ``--ab OTHER`` a second node runs the code of the tree ``OTHER`` (an export
of the commit before a change, say) beside it, on a copy of the same database
stamped with that tree's schema head (a newer migration only adds what its code
does not read), and every query and move alternates between the two as between
the node and Orthanc:

    python bench/dicom_qr.py --instances 40000 --no-orthanc --ab /tmp/before
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread
from s3_servers import S3_SERVERS, BenchS3, open_s3  # bench/s3_servers.py, beside this script
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from devtools.dicom_files import InstanceSpec, dicom_file
from devtools.waiting import eventually, port_open
from imaging_sync.catalog import facts
from imaging_sync.config import DatabaseConfig
from imaging_sync.db import migrate
from imaging_sync.db.engine import create_db_engine
from imaging_sync.db.models import Instance, InstanceLocation, Series, Study, Subject, SubjectNameToken
from imaging_sync.ids import new_id
from imaging_sync.person_names import name_words, search_form
from imaging_sync.query.names import stored_words

# DCMTK's tools by absolute path: pynetdicom puts scripts named findscu, movescu, storescp, echoscu in the venv's bin.
FINDSCU, MOVESCU, STORESCP, ECHOSCU = "/usr/bin/findscu", "/usr/bin/movescu", "/usr/bin/storescp", "/usr/bin/echoscu"
ORTHANC = "/usr/sbin/Orthanc"
ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK reads it: no Nagle in Orthanc, storescp and the clients (our node sets it itself)
NETNS_VAR = "DICOM_QR_BENCH_NETNS"  # set when this process runs inside the namespace it (its parent) made
NETNS = "isync-dicom-bench"
PG_SOCKET_URL = "postgresql+psycopg://postgres@/postgres?host=/var/run/postgresql"
PG_ADMIN = os.environ.get("IMAGING_SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")  # main() may change it
DB_NAME, OTHER_DB_NAME = "isync_bench_dicom_qr", "isync_bench_dicom_qr_other"
SERIES_PER_STUDY, INSTANCES_PER_SERIES = 2, 10  # 20 instances a study: 2,000 studies at 40k, as the review measured
MODALITIES = ("CT", "MR", "US", "CR", "DX", "PT", "NM", "MG")
SOP = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
FAMILY = ("KIM", "LEE", "PARK", "KIM", "CHOI", "JUNG", "KANG", "CHO", "YOON", "JANG")  # KIM a fifth of the patients, as in Korea
GIVEN = ("MINJUN", "SEOYEON", "JIWOO", "HAJUN", "SEOYUN", "DOYUN", "MINJI", "GILDONG")


# -- CPU from /proc ------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def _proc_stats() -> dict[int, tuple[int, str, float]]:
    """Every process: pid -> (parent pid, comm, utime + stime in seconds, all its threads)."""
    out: dict[int, tuple[int, str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        comm = data[data.index("(") + 1:data.rindex(")")]
        rest = data[data.rindex(")") + 2:].split()  # rest[0] is field 3 (state); utime, stime are fields 14, 15
        out[int(entry.name)] = (int(rest[1]), comm, (int(rest[11]) + int(rest[12])) / TICK)
    return out


def wait_idle(pid: int, *, quiet: float = 1.0, timeout: float = 60.0) -> None:
    """Until process ``pid`` spends (almost) no CPU for ``quiet`` seconds: its start-up work done.

    Our node opens its port first and then builds its buckets' S3 clients and
    freezes its heap in the background (about a second of CPU): measured
    without this wait, that landed on the first query type, C-ECHO.
    """
    def cpu() -> float:
        with open(f"/proc/{pid}/stat", "rb") as f:
            rest = f.read().decode(errors="replace").rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / TICK

    deadline, last = time.monotonic() + timeout, cpu()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu()
        if now - last < 0.02 * quiet:
            return
        last = now


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").split()
    except OSError:
        return []


def process_tree(pid: int) -> Callable[[dict[int, tuple[int, str, float]]], dict[int, float]]:
    """CPU seconds of ``pid`` and its descendants, by pid."""
    def read(stats: dict[int, tuple[int, str, float]]) -> dict[int, float]:
        pids, frontier = {pid}, [pid]
        while frontier:
            parent = frontier.pop()
            children = [p for p, (ppid, _, _) in stats.items() if ppid == parent and p not in pids]
            pids.update(children)
            frontier += children
        return {p: stats[p][2] for p in pids if p in stats}
    return read


def postgres_backends(database: str) -> Callable[[dict[int, tuple[int, str, float]]], dict[int, float]]:
    """CPU seconds of the PostgreSQL backends connected to ``database`` (their title names it), by pid."""
    def read(stats: dict[int, tuple[int, str, float]]) -> dict[int, float]:
        return {p: cpu for p, (_, comm, cpu) in stats.items() if comm == "postgres" and database in _cmdline(p)}
    return read


class CpuMeter:
    """CPU seconds per named source between two snapshots (a process that ended in between takes its CPU with it)."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[dict[int, tuple[int, str, float]]], dict[int, float]]] = {}

    def snapshot(self) -> dict[str, dict[int, float]]:
        stats = _proc_stats()
        return {name: read(stats) for name, read in self.sources.items()}

    @staticmethod
    def used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
        return {name: sum(cpu - before.get(name, {}).get(pid, 0.0) for pid, cpu in now.items()) for name, now in after.items()}


@dataclass(frozen=True)
class StudyRow:
    index: int
    patient: int
    uid: str
    accession: str
    date: dt.date
    time: str
    modality: str


def study(i: int, n_patients: int) -> StudyRow:
    return StudyRow(
        index=i, patient=(i * 7919) % n_patients, uid=f"1.2.826.0.1.3680043.10.99.{i + 1}", accession=f"ACC{i + 1:08d}",
        date=dt.date(2016, 1, 1) + dt.timedelta(days=(i * 37) % 3650), time=f"{8 + i % 10:02d}{(i * 13) % 60:02d}00", modality=MODALITIES[i % 2],
    )


def patient_name(p: int) -> str:
    return f"{FAMILY[p % len(FAMILY)]}^{GIVEN[(p // len(FAMILY)) % len(GIVEN)]}{p}"


def spec(s: StudyRow, series: int, number: int, size: int) -> InstanceSpec:
    return InstanceSpec(
        sop_instance_uid=f"{s.uid}.{series}.{number}", series_instance_uid=f"{s.uid}.{series}", study_instance_uid=s.uid,
        sop_class_uid=SOP[s.modality], patient_id=f"PAT{s.patient:06d}", patient_name=patient_name(s.patient),
        birth_date="19700101", sex="MF"[s.patient % 2], accession_number=s.accession, study_date=s.date.strftime("%Y%m%d"),
        study_time=s.time, study_description=f"{s.modality} STUDY", modality=s.modality, series_number=series,
        series_description=f"SERIES {series}", instance_number=number, rows=size, columns=size,
    )


# -- our side -----------------------------------------------------------------------------


def fill_index(db_url: str, studies: list[StudyRow], n_patients: int, bucket: str) -> None:
    engine = create_db_engine(DatabaseConfig(url=db_url))
    now = dt.datetime.now(dt.UTC)
    common = {"source_partner": "b", "source_priority": 0, "created_at": now, "updated_at": now, "deleted_at": None}
    subject_ids = [new_id() for _ in range(n_patients)]
    name_forms = [{"patient_name_search": search_form(patient_name(p)), "patient_name_words": stored_words(patient_name(p))} for p in range(n_patients)]
    with engine.begin() as conn:
        conn.execute(insert(Subject.__table__), [
            {"id": subject_ids[p], **common, "issuer": "", "patient_id": f"PAT{p:06d}", "patient_name": patient_name(p),
             **name_forms[p], "birth_date": dt.date(1970, 1, 1), "sex": "MF"[p % 2]}
            for p in range(n_patients)
        ])
        conn.execute(insert(SubjectNameToken.__table__), [
            {"token": word, "subject_id": subject_ids[p]} for p in range(n_patients) for word in name_words(patient_name(p))
        ])
    for chunk in range(0, len(studies), 500):
        st_rows, se_rows, in_rows, loc_rows = [], [], [], []
        for s in studies[chunk:chunk + 500]:
            sid = new_id()
            st_rows.append({"id": sid, **common, "study_instance_uid": s.uid, "subject_id": subject_ids[s.patient], "accession_number": s.accession,
                            "study_date": s.date, "study_time": s.time, "description": f"{s.modality} STUDY", "referring_physician_name": None,
                            **name_forms[s.patient]})
            for series in range(1, SERIES_PER_STUDY + 1):
                seid = new_id()
                se_rows.append({"id": seid, **common, "series_instance_uid": f"{s.uid}.{series}", "study_id": sid, "modality": s.modality,
                                "series_number": series, "description": f"SERIES {series}", "body_part_examined": None})
                for number in range(1, INSTANCES_PER_SERIES + 1):
                    iid = new_id()
                    uid = f"{s.uid}.{series}.{number}"
                    in_rows.append({"id": iid, **common, "sop_instance_uid": uid, "series_id": seid, "sop_class_uid": SOP[s.modality],
                                    "transfer_syntax_uid": "1.2.840.10008.1.2.1", "instance_number": number})
                    loc_rows.append({"id": new_id(), "instance_id": iid, "partner": "b", "bucket": bucket, "key": f"{s.uid}/{uid}.dcm",
                                     "size_bytes": None, "sha256": None, "created_at": now, "updated_at": now})
        with engine.begin() as conn:
            for model, rows in ((Study, st_rows), (Series, se_rows), (Instance, in_rows), (InstanceLocation, loc_rows)):
                conn.execute(insert(model.__table__), rows)
            facts.refresh(conn, [row["id"] for row in st_rows])  # modalities and counts, kept on the rows as a sync keeps them
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    engine.dispose()


def _recreate_database(name: str, template: str | None = None) -> str:
    """Drop ``name`` if it exists, create it (a copy of ``template`` if given); its URL."""
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    admin.dispose()
    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)


def fresh_database(name: str) -> str:
    url = _recreate_database(name)
    engine = create_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


def copy_for(tree: Path, db_url: str, name: str) -> str:
    """A copy of the database at ``db_url`` for the code of ``tree``: the same rows, stamped with that tree's schema head."""
    head = subprocess.run(
        [sys.executable, "-c", "from imaging_sync.db import migrate; print(migrate.head_revision())"],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True,
    ).stdout.strip()
    url = _recreate_database(name, template=make_url(db_url).database)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": head})
        conn.execute(text("ANALYZE"))
    engine.dispose()
    return url



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 120) -> None:
    eventually(lambda: port_open(port), timeout=timeout, interval=0.1, what=f"port {port} open")


def _knows_peers(tree: Path | None) -> bool:
    """Does the code (this checkout's, or ``tree``'s) read ``[dicom.peers]``?"""
    config = (tree or Path(__file__).parents[1]) / "imaging_sync" / "config.py"
    return "peers" in config.read_text(encoding="utf-8")


def start_node(work: Path, db_url: str, s3: BenchS3, port: int, store_port: int, tree: Path | None = None, name: str = "node") -> subprocess.Popen[bytes]:
    """``python -m app serve dicom`` in its own process: this checkout's code, or the code of ``tree``."""
    lines = [
        "[database]", f'url = "{db_url}"', "pool_size = 10", "",
        "[logging]", 'level = "WARNING"', "",
        "[dicom]", 'ae_title = "ISYNC"', 'host = "127.0.0.1"', f"port = {port}", "fetch_concurrency = 8", "",
        "[dicom.destinations.STORESCP]", 'host = "127.0.0.1"', f"port = {store_port}", "",
    ]
    if _knows_peers(tree):  # a tree from before deny-by-default (issue 14) serves any AE and has no [dicom.peers]
        lines += ["[dicom.peers.BENCH]", 'operations = ["echo", "find", "move"]', 'addresses = ["127.0.0.1"]', ""]  # the tools' -aet BENCH
    for bucket, cfg in s3.config.buckets.items():
        lines += [f'[storage.buckets."{bucket}"]', f'region = "{cfg.region}"', f'endpoint_url = "{cfg.endpoint_url}"', 'auth = "keys"',
                  f'access_key_id_env = "{cfg.access_key_id_env}"', f'secret_access_key_env = "{cfg.secret_access_key_env}"', 'addressing_style = "path"', ""]
    config = work / f"{name}.toml"
    config.write_text("\n".join(lines))
    env = {**ENV, **s3.environ, "IMAGING_SYNC_CONFIG": str(config), **({"PYTHONPATH": str(tree)} if tree else {})}
    command = "app" if tree is None or (tree / "app" / "__main__.py").exists() else "imaging_sync"  # the CLI's package before app/
    proc = subprocess.Popen(
        [sys.executable, "-m", command, "serve", "dicom"], env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "wb")
    )
    wait_port(port)
    wait_idle(proc.pid)
    return proc


# -- Orthanc ------------------------------------------------------------------------------


def start_orthanc(work: Path, storage: Path, dicom_port: int, http_port: int, store_port: int) -> subprocess.Popen[bytes]:
    """Orthanc with ``TCP_NODELAY=1``; nothing set that changes how it answers a C-FIND (StorageAccessOnFind, LimitFind*: defaults)."""
    config = {
        "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage), "DicomAet": "ORTHANC", "DicomPort": dicom_port,
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomModalities": {"STORESCP": ["STORESCP", "127.0.0.1", store_port]}, "DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True,
        "DicomAlwaysAllowGet": True, "DicomAlwaysAllowEcho": True, "Plugins": [],
        "SaveJobs": False, "DicomServerEnabled": True, "HttpServerEnabled": True,
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen([ORTHANC, str(path)], stdout=subprocess.DEVNULL, stderr=open(work / "orthanc.log", "wb"), env=ENV)
    wait_port(http_port)
    wait_port(dicom_port)
    return proc


def load_orthanc(http_port: int, blobs: Any, workers: int = 4, attempts: int = 5) -> int:
    """POST every file to Orthanc's REST API; a dropped connection is retried on a fresh one.

    Orthanc closes idle keep-alive connections and, deep into a large load, sometimes
    drops one mid-request ("server disconnected without sending a response"). A
    re-POST of a stored instance is harmless (Orthanc answers AlreadyStored), so a
    failed upload is simply sent again, up to ``attempts`` times.
    """
    local = threading.local()

    def post(blob: bytes) -> None:
        for attempt in range(attempts):
            client = getattr(local, "client", None) or httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120)
            local.client = client
            try:
                client.post("/instances", content=blob).raise_for_status()
                return
            except (httpx.TransportError, httpx.HTTPStatusError):
                client.close()
                local.client = None
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))

    n = 0
    in_flight = threading.BoundedSemaphore(workers * 4)  # generate files only as fast as Orthanc takes them
    with ThreadPoolExecutor(workers) as pool:
        futures = []
        for blob in blobs:
            in_flight.acquire()
            future = pool.submit(post, blob)
            future.add_done_callback(lambda _: in_flight.release())
            futures.append(future)
            if len(futures) % 50_000 == 0:
                print(f"  Orthanc: {len(futures)} instances sent", flush=True)
        for future in futures:
            future.result()
            n += 1
    return n



# -- the runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    tool: str  # findscu or echoscu
    model: str = ""  # -P (Patient Root) or -S (Study Root)
    keys: tuple[str, ...] = ()


def run_tool(port: int, aec: str, q: Query) -> tuple[float, int, int, str]:
    """One query in its own DCMTK process: seconds, matches (pending responses), return code, output."""
    args = [ECHOSCU if q.tool == "echoscu" else FINDSCU, *([q.model, "-v"] if q.tool == "findscu" else []), "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port)]
    for k in q.keys:
        args += ["-k", k]
    t = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - t
    text_out = out.stdout + out.stderr
    if q.tool == "findscu" and "Received Final Find Response (Success)" not in text_out:
        return elapsed, 0, out.returncode or 1, text_out  # findscu exits 0 on a failure status too: not a valid answer
    return elapsed, text_out.count("Find Response:"), out.returncode, text_out


def query_mix(studies: list[StudyRow], n_patients: int, repeat: int) -> dict[str, list[Query]]:
    picks = [studies[(i * 104729) % len(studies)] for i in range(repeat)]
    family = ["KIM"] * repeat  # a fifth of all patients: the large answers (400 studies at 40k, 2,000 at 200k)
    years = [2016 + (4 + i) % 10 for i in range(repeat)]  # 2020 first; the studies span 2016-2025
    return {
        "C-ECHO (echoscu)": [Query("echoscu") for _ in range(repeat)],
        "patient by PatientID": [Query("findscu", "-P", ("QueryRetrieveLevel=PATIENT", f"PatientID=PAT{s.patient:06d}", "PatientName", "PatientBirthDate")) for s in picks],
        "patient by name KIM* (P root)": [Query("findscu", "-P", ("QueryRetrieveLevel=PATIENT", f"PatientName={f}*", "PatientID", "PatientBirthDate")) for f in family],
        "study by name wildcard (1 pat.)": [
            Query("findscu", "-S", ("QueryRetrieveLevel=STUDY", f"PatientName={patient_name(s.patient)[:-1]}*", "StudyInstanceUID", "StudyDate", "AccessionNumber")) for s in picks
        ],
        "study by name KIM*": [Query("findscu", "-S", ("QueryRetrieveLevel=STUDY", f"PatientName={f}*", "StudyInstanceUID", "StudyDate", "AccessionNumber", "PatientID")) for f in family],
        "study by date range (10 days)": [
            Query("findscu", "-S", ("QueryRetrieveLevel=STUDY", f"StudyDate={s.date:%Y%m%d}-{s.date + dt.timedelta(days=9):%Y%m%d}", "StudyInstanceUID", "PatientName", "ModalitiesInStudy"))
            for s in picks
        ],
        "study by date range (a year)": [
            Query("findscu", "-S", ("QueryRetrieveLevel=STUDY", f"StudyDate={y}0101-{y}1231", "StudyInstanceUID", "PatientName", "ModalitiesInStudy")) for y in years
        ],
        "study by accession": [Query("findscu", "-S", ("QueryRetrieveLevel=STUDY", f"AccessionNumber={s.accession}", "StudyInstanceUID", "PatientID", "NumberOfStudyRelatedInstances")) for s in picks],
        "study by modality + month": [Query("findscu", "-S", ("QueryRetrieveLevel=STUDY", "ModalitiesInStudy=MR", f"StudyDate={s.date:%Y%m}01-{s.date:%Y%m}28", "StudyInstanceUID")) for s in picks],
        "series of a study": [Query("findscu", "-S", ("QueryRetrieveLevel=SERIES", f"StudyInstanceUID={s.uid}", "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")) for s in picks],
        "images of a series": [Query("findscu", "-S", ("QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={s.uid}", f"SeriesInstanceUID={s.uid}.1", "SOPInstanceUID", "InstanceNumber")) for s in picks],
    }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]


@dataclass
class FindResult:
    ms: dict[str, list[float]]  # per target, each query's wall time
    matches: dict[str, list[int]]  # per target, each query's matches
    cpu: dict[str, float]  # per CPU source, seconds over the type (all its queries, to every target)


def run_finds(mix: dict[str, list[Query]], targets: dict[str, tuple[int, str]], meter: CpuMeter) -> dict[str, FindResult]:
    """Each query goes to every server in turn, which one first alternating, so a slow moment of a shared
    machine falls on all of them; CPU is read before and after each type (after its untimed warm-up)."""
    out: dict[str, FindResult] = {}
    for name, queries in mix.items():
        for port, aec in targets.values():
            run_tool(port, aec, queries[0])  # warm-up
        result = FindResult({t: [] for t in targets}, {t: [] for t in targets}, {})
        before = meter.snapshot()
        for i, q in enumerate(queries):
            order = list(targets.items())
            for target, (port, aec) in order if i % 2 == 0 else reversed(order):
                elapsed, n, rc, output = run_tool(port, aec, q)
                if rc != 0:
                    raise RuntimeError(f"{q.tool} against {target} failed for {name} {q.keys}: {output[-800:]}")
                result.ms[target].append(elapsed * 1000)
                result.matches[target].append(n)
        result.cpu = meter.used(before, meter.snapshot())
        out[name] = result
    return out


def movescu(port: int, aec: str, keys: list[str]) -> None:
    args = [MOVESCU, "-S", "-aet", "BENCH", "-aec", aec, "-aem", "STORESCP"]
    for key in keys:
        args += ["-k", key]
    out = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, env=ENV)
    if out.returncode != 0:
        raise RuntimeError(f"movescu against {aec} failed: {out.stderr[-500:]}")


def run_moves(
    targets: dict[str, tuple[int, str]], uids: list[str], received: Path, meter: CpuMeter, s3_requests: Callable[[], dict[str, int] | None]
) -> tuple[dict[str, tuple[float, int, int]], dict[str, float], int | None]:
    """Move each study from each server, alternating which goes first; seconds, files and bytes per server, CPU per source, S3 GETs.

    Interleaved so that a slow patch of a shared machine falls on both servers
    alike. Each server first moves one untimed series (a warm-up, as for C-FIND).
    """
    def clear() -> tuple[int, int]:
        files = list(received.iterdir())
        size = sum(f.stat().st_size for f in files)
        for f in files:
            f.unlink()
        return len(files), size

    for port, aec in targets.values():
        movescu(port, aec, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={uids[0]}", f"SeriesInstanceUID={uids[0]}.1"])
    clear()
    totals = {name: [0.0, 0, 0] for name in targets}
    requests_before = s3_requests()
    before = meter.snapshot()
    for i, uid in enumerate(uids):
        order = list(targets.items())
        for name, (port, aec) in order if i % 2 == 0 else reversed(order):
            t = time.perf_counter()
            movescu(port, aec, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}"])
            elapsed = time.perf_counter() - t
            files, size = clear()
            totals[name][0] += elapsed
            totals[name][1] += files
            totals[name][2] += size
    cpu = meter.used(before, meter.snapshot())
    requests_after = s3_requests()
    gets = requests_after.get("GET", 0) - requests_before.get("GET", 0) if requests_before is not None and requests_after is not None else None
    return {name: (seconds, int(files), int(size)) for name, (seconds, files, size) in totals.items()}, cpu, gets


def report_finds(results: dict[str, FindResult], names: list[str], pg: dict[str, str]) -> None:
    """The C-FIND table: per server median, p95, CPU ms per query (its PostgreSQL backends apart); ours ÷ each other server; matches."""
    others = names[1:]
    head = f"{'query type (n each)':32}"
    for n in names:
        head += f" | {n + ' med':>12} {'p95':>6} {'cpu':>5}" + (f" {'pg':>5}" if n in pg else "")
    head += "".join(f" | {'ours÷' + n:>{max(12, len(n) + 5)}}" for n in others) + " | matches/query " + " ".join(names)
    print("\nC-FIND / C-ECHO: ms per query = one DCMTK process + association; cpu, pg = server / its PostgreSQL backends, CPU ms per query")
    print("ratio ours÷X = our median ÷ X's median: ≤ 1.00 means ours is at least as fast")
    print(head)
    mismatches = []
    for name, r in results.items():
        count = len(r.ms["ours"])
        line = f"{name:32}"
        for n in names:
            line += f" | {statistics.median(r.ms[n]):12.1f} {pct(r.ms[n], 0.95):6.1f} {r.cpu[n] * 1000 / count:5.1f}"
            if n in pg:
                line += f" {r.cpu[pg[n]] * 1000 / count:5.1f}"
        line += "".join(f" | {statistics.median(r.ms['ours']) / statistics.median(r.ms[n]):{max(12, len(n) + 5)}.2f}" for n in others)
        line += " | " + " ".join(f"{sum(r.matches[n]) / count:.4g}" for n in names)
        for n in others:
            if r.matches[n] != r.matches["ours"]:
                line += f"  MISMATCH vs {n}"
                mismatches.append(f"{name}: ours {r.matches['ours']} vs {n} {r.matches[n]}")
        print(line, flush=True)
    for m in mismatches:
        print(f"  match counts differ per query, {m}")


def report_moves(moves: dict[str, tuple[float, int, int]], cpu: dict[str, float], names: list[str], pg: dict[str, str], s3: BenchS3, gets: int | None) -> None:
    print("\nC-MOVE (study level, to storescp; CPU ms per instance moved: the server process; pg = its PostgreSQL backends; s3 = the S3 server)")
    print(f"{'server':10} {'s':>7} {'files':>6} {'MB':>7} {'MB/s':>7} {'inst/s':>7} {'ms/inst':>8} {'cpu/inst':>9} {'pg/inst':>8} {'s3/inst':>8}")
    moved_by_nodes = sum(moves[n][1] for n in pg)
    for n in names:
        elapsed, files, size = moves[n]
        per = 1000 / files if files else float("nan")
        s3_cpu = f"{cpu['s3'] * 1000 / moved_by_nodes:8.2f}" if "s3" in cpu and n in pg and moved_by_nodes else f"{'-':>8}"  # shared by the nodes
        pg_cpu = f"{cpu[pg[n]] * per:8.2f}" if n in pg else f"{'-':>8}"
        print(f"{n:10} {elapsed:7.2f} {files:6d} {size / 1e6:7.1f} {size / 1e6 / elapsed:7.1f} {files / elapsed:7.1f} {elapsed * per:8.2f} {cpu[n] * per:9.2f} {pg_cpu} {s3_cpu}")
    for n in names[1:]:
        ours_t, ours_f, _ = moves["ours"]
        t, f, _ = moves[n]
        print(f"ratio ours÷{n}, time per instance: {(ours_t / ours_f) / (t / f):.2f} (≤ 1.00: ours at least as fast)")
    if "s3" in cpu:
        gets_note = f"{gets} GETs, {cpu['s3'] * 1000 / gets:.2f} ms CPU per GET" if gets else "GETs not counted"
        print(f"S3 server ({s3.server.label}, pid {s3.server.pid}) over the moves: {cpu['s3']:.2f} s CPU for {moved_by_nodes} instances moved by our node(s); {gets_note}")
    else:
        print(f"S3 server ({s3.server.label}): not a separate process, its CPU is not separated")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench(n_instances: int, repeat: int, moves: int, image_size: int, *, s3_kind: str, orthanc: bool = True, other: Path | None = None) -> None:
    n_studies = n_instances // (SERIES_PER_STUDY * INSTANCES_PER_SERIES)
    n_patients = max(1, n_studies // 2)
    studies = [study(i, n_patients) for i in range(n_studies)]
    moved = [studies[(i * 7) % n_studies] for i in range(moves)]
    moved_uids = {s.uid for s in moved}
    work = Path(tempfile.mkdtemp(prefix="dicom-qr-bench-"))
    # Orthanc's index and files go on tmpfs when there is one: it loads faster and, if
    # anything, answers faster, which only makes the comparison harder for us.
    shm = Path("/dev/shm")
    orthanc_storage = Path(tempfile.mkdtemp(prefix="orthanc-bench-", dir=shm if shm.is_dir() else work))
    procs: list[subprocess.Popen[bytes]] = []
    print(f"\n== {n_instances} instances ({n_studies} studies, {n_patients} patients); moving {moves} studies of "
          f"{SERIES_PER_STUDY * INSTANCES_PER_SERIES} instances ({image_size}x{image_size} px)", flush=True)
    try:
        with open_s3(s3_kind, ["eu-west-1", "ap-northeast-2"], ENV) as s3:
            bucket = s3.buckets[0].name
            t = time.perf_counter()
            db_url = fresh_database(DB_NAME)
            fill_index(db_url, studies, n_patients, bucket)
            print(f"index filled in {time.perf_counter() - t:.0f} s", flush=True)
            other_url = copy_for(other, db_url, OTHER_DB_NAME) if other is not None else None  # before a node connects

            def blobs(only_moved: bool) -> Iterator[tuple[StudyRow, bytes]]:
                for s in studies:
                    big = s.uid in moved_uids
                    if only_moved and not big:
                        continue
                    for series in range(1, SERIES_PER_STUDY + 1):
                        for number in range(1, INSTANCES_PER_SERIES + 1):
                            yield s, dicom_file(spec(s, series, number, image_size if big else 8))

            t = time.perf_counter()
            for s, blob in blobs(only_moved=True):
                uid = dcmread(BytesIO(blob), stop_before_pixels=True).SOPInstanceUID
                s3.put(bucket, f"{s.uid}/{uid}.dcm", blob)
            print(f"S3 loaded (moved studies) in {time.perf_counter() - t:.0f} s", flush=True)

            ports = {"node": free_port(), "orthanc": free_port(), "orthanc_http": free_port(), "store": free_port()}
            received = work / "received"
            received.mkdir()
            procs.append(subprocess.Popen([STORESCP, "-aet", "STORESCP", "+xa", "-od", str(received), str(ports["store"])],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV))
            meter = CpuMeter()
            targets = {"ours": (ports["node"], "ISYNC")}
            pg = {"ours": "ours pg"}
            if orthanc:
                procs.append(start_orthanc(work, orthanc_storage, ports["orthanc"], ports["orthanc_http"], ports["store"]))
                t = time.perf_counter()
                loaded = load_orthanc(ports["orthanc_http"], (blob for _, blob in blobs(only_moved=False)))
                print(f"Orthanc loaded with {loaded} instances in {time.perf_counter() - t:.0f} s", flush=True)
                targets["orthanc"] = (ports["orthanc"], "ORTHANC")
                meter.sources["orthanc"] = process_tree(procs[-1].pid)
            procs.append(start_node(work, db_url, s3, ports["node"], ports["store"]))
            meter.sources["ours"] = process_tree(procs[-1].pid)
            meter.sources["ours pg"] = postgres_backends(DB_NAME)
            if other is not None and other_url is not None:
                ports["other"] = free_port()
                procs.append(start_node(work, other_url, s3, ports["other"], ports["store"], tree=other, name="other-node"))
                targets["other"] = (ports["other"], "ISYNC")
                meter.sources["other"] = process_tree(procs[-1].pid)
                meter.sources["other pg"] = postgres_backends(OTHER_DB_NAME)
                pg["other"] = "other pg"
            if s3.server.pid is not None:
                meter.sources["s3"] = process_tree(s3.server.pid)
            names = list(targets)
            report_finds(run_finds(query_mix(studies, n_patients, repeat), targets, meter), names, pg)
            moved_result, cpu, gets = run_moves(targets, [s.uid for s in moved], received, meter, s3.server.requests)
            report_moves(moved_result, cpu, names, pg, s3, gets)
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(orthanc_storage, ignore_errors=True)


# -- the namespace, the header, the output file -------------------------------------------------------


def in_netns(argv: list[str], *, netns: str = NETNS, marker: str = NETNS_VAR, script: str = __file__) -> int:
    """Run ``script`` again inside the loopback-only namespace ``netns`` (made here, and deleted after, unless it existed),
    with ``marker`` set in its environment so that it knows it is inside. bench/dicomweb.py runs itself through this too."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        sys.exit("a network namespace needs root and iproute2's ip: run as root, or pass --no-netns")
    existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    created = netns not in existing
    if created:
        subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        return subprocess.call(["ip", "netns", "exec", netns, sys.executable, str(Path(script).resolve()), *argv], env={**os.environ, marker: netns})
    finally:
        if created:
            subprocess.run(["ip", "netns", "delete", netns], check=False)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate the started servers, newest first; kill one that has not gone in 20 s."""
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


class Tee:
    """stdout that also goes to a file (``--out``)."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, data: str) -> int:
        for s in self.streams:
            s.write(data)
        return len(data)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def out_path(name: str) -> Path:
    """A bare file name goes under bench/results/; a path is taken as given."""
    path = Path(name)
    return Path(__file__).resolve().parent / "results" / path if path.parent == Path(".") else path


def header(args: argparse.Namespace) -> None:
    orthanc = "not used" if args.no_orthanc else subprocess.run([ORTHANC, "--version"], capture_output=True, text=True).stdout.split()[1]
    dcmtk = next((w for w in subprocess.run([FINDSCU, "--version"], capture_output=True, text=True).stdout.split() if w.startswith("v")), "?")
    admin = create_engine(PG_ADMIN)
    with admin.connect() as conn:
        pg_version = conn.execute(text("SHOW server_version")).scalar()
    admin.dispose()
    netns = os.environ.get(NETNS_VAR)
    print(f"date: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, load average at start {loadavg()}; Python {platform.python_version()}, PostgreSQL {pg_version}")
    print(f"Orthanc {orthanc} ({ORTHANC}, default StorageAccessOnFind), DCMTK {dcmtk} (/usr/bin), TCP_NODELAY=1 for all DCMTK processes and both servers")
    print(f"network: {'namespace ' + netns + ' (loopback only), PostgreSQL by Unix socket' if netns else 'current namespace (--no-netns)'}; S3: {args.s3}"
          + (f"; A/B against the code of {args.ab}" if args.ab else ""), flush=True)


def main() -> None:
    global PG_ADMIN
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, nargs="+", default=[40_000])
    parser.add_argument("--repeat", type=int, default=15, help="queries per type (different values each)")
    parser.add_argument("--moves", type=int, default=10, help="studies moved per server")
    parser.add_argument("--image-size", type=int, default=256, help="rows = columns of the moved studies' 8-bit images")
    parser.add_argument("--no-orthanc", action="store_true", help="measure without Orthanc (not installed, say)")
    parser.add_argument("--ab", type=Path, metavar="OTHER", help="also run a node with the code of the tree OTHER, alternately with ours")
    parser.add_argument("--s3", choices=sorted(S3_SERVERS), default="moto", help="the S3-compatible server holding the moved files (bench/s3_servers.py)")
    parser.add_argument("--no-netns", action="store_true", help="run in the current network namespace (no ip netns here)")
    parser.add_argument("--out", metavar="FILE", help="also write the output to FILE (a bare name: under bench/results/)")
    args = parser.parse_args()
    for tool in (FINDSCU, MOVESCU, STORESCP, ECHOSCU):
        if not Path(tool).exists():
            sys.exit(f"needs DCMTK's {tool} (apt-get install dcmtk)")
    if not args.no_orthanc and not Path(ORTHANC).exists():
        sys.exit("needs Orthanc (apt-get install orthanc), or --no-orthanc")
    if not args.no_netns and NETNS_VAR not in os.environ:
        sys.exit(in_netns(sys.argv[1:]))
    if NETNS_VAR in os.environ:
        PG_ADMIN = PG_SOCKET_URL  # 127.0.0.1:5432 is the root namespace's
    if args.out:
        path = out_path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout = Tee(sys.stdout, path.open("w", encoding="utf-8"))
    header(args)
    for n in args.instances:
        bench(n, args.repeat, args.moves, args.image_size, s3_kind=args.s3, orthanc=not args.no_orthanc, other=args.ab.resolve() if args.ab else None)
    print(f"\nload average at end {loadavg()}")


if __name__ == "__main__":
    main()
