"""DICOM Q/R node vs Orthanc: the same C-FIND mix and the same C-MOVEs, both driven by DCMTK.

For each size: the same generated studies go into our index (PostgreSQL; files
of the moved studies into an embedded S3 on loopback, two partners' buckets)
and into Orthanc (Debian's ``orthanc``, started here on loopback with its own
temporary config and storage, loaded through its REST API). Our node runs as
``imaging-sync serve dicom`` in its own process. Then DCMTK's findscu runs each
query type ``--repeat`` times against both (a new association per query, as
PACS clients do) and movescu moves ``--moves`` studies from each (interleaved) to a DCMTK storescp.
Prints per query type median and p95 (ms), C-MOVE MB/s and instances/s, and
our/Orthanc ratios.

    python bench/dicom_qr.py --instances 40000

Without Orthanc (``--no-orthanc``) the node is measured alone; with ``--ab OTHER``
a second node runs the code of the tree ``OTHER`` (an export of the commit
before a change, say) beside it, on a copy of the same database stamped with
that tree's schema head (a newer migration only adds what its code does not
read), and every query and move alternates between the two as between the
node and Orthanc:

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from devtools.dicom_files import InstanceSpec, dicom_file
from devtools.storage import embedded_storage
from devtools.waiting import eventually, port_open
from imaging_sync.config import DatabaseConfig
from imaging_sync.db import migrate
from imaging_sync.db.engine import create_db_engine
from imaging_sync.db.models import Instance, InstanceLocation, Series, Study, Subject, SubjectNameToken
from imaging_sync.ids import new_id
from imaging_sync.person_names import name_words, search_form
from imaging_sync.query.names import stored_words

DCMTK = Path("/usr/bin")
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PG_ADMIN = os.environ.get("IMAGING_SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SERIES_PER_STUDY, INSTANCES_PER_SERIES = 4, 10
MODALITIES = ("CT", "MR", "US", "CR", "DX", "PT", "NM", "MG")
SOP = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
FAMILY = ("KIM", "LEE", "PARK", "CHOI", "JUNG", "KANG", "CHO", "YOON", "JANG", "HONG")
GIVEN = ("MINJUN", "SEOYEON", "JIWOO", "HAJUN", "SEOYUN", "DOYUN", "MINJI", "GILDONG")
ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK: no Nagle on the client side (same for both servers)


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
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    engine.dispose()


def fresh_database(name: str) -> str:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
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
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{make_url(db_url).database}"'))
    admin.dispose()
    url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
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


def start_node(work: Path, db_url: str, s3: Any, port: int, store_port: int, tree: Path | None = None, name: str = "node") -> subprocess.Popen[bytes]:
    """``imaging-sync serve dicom`` in its own process: this checkout's code, or the code of ``tree``."""
    lines = [
        "[database]", f'url = "{db_url}"', "pool_size = 10", "",
        "[logging]", 'level = "WARNING"', "",
        "[dicom]", 'ae_title = "ISYNC"', 'host = "127.0.0.1"', f"port = {port}", "fetch_concurrency = 8", "",
        "[dicom.destinations.STORESCP]", 'host = "127.0.0.1"', f"port = {store_port}", "",
    ]
    if _knows_peers(tree):  # a tree from before deny-by-default (issue 14) serves any AE and has no [dicom.peers]
        lines += ["[dicom.peers.BENCH]", 'operations = ["find", "move"]', 'addresses = ["127.0.0.1"]', ""]  # findscu/movescu's -aet BENCH
    for name, cfg in s3.config.buckets.items():
        lines += [f'[storage.buckets."{name}"]', f'region = "{cfg.region}"', f'endpoint_url = "{cfg.endpoint_url}"', 'auth = "keys"',
                  f'access_key_id_env = "{cfg.access_key_id_env}"', f'secret_access_key_env = "{cfg.secret_access_key_env}"', 'addressing_style = "path"', ""]
    config = work / f"{name}.toml"
    config.write_text("\n".join(lines))
    env = {**os.environ, **s3.environ, "IMAGING_SYNC_CONFIG": str(config), **({"PYTHONPATH": str(tree)} if tree else {})}
    command = "app" if tree is None or (tree / "app" / "__main__.py").exists() else "imaging_sync"  # the CLI's package before app/
    proc = subprocess.Popen(
        [sys.executable, "-m", command, "serve", "dicom"], env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "wb")
    )
    wait_port(port)
    return proc


# -- Orthanc ------------------------------------------------------------------------------


def start_orthanc(work: Path, storage: Path, dicom_port: int, http_port: int, store_port: int) -> subprocess.Popen[bytes]:
    config = {
        "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage), "DicomAet": "ORTHANC", "DicomPort": dicom_port,
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomModalities": {"STORESCP": ["STORESCP", "127.0.0.1", store_port]}, "DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True,
        "DicomAlwaysAllowGet": True, "DicomCheckCalledAet": False, "LimitFindResults": 0, "LimitFindInstances": 0, "Plugins": [],
        "StorageCompression": False, "SaveJobs": False, "DicomServerEnabled": True, "HttpServerEnabled": True,
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen([ORTHANC, str(path)], stdout=subprocess.DEVNULL, stderr=open(work / "orthanc.log", "wb"))
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


def findscu(port: int, aec: str, model: str, keys: list[str]) -> tuple[float, int, int]:
    args = [str(DCMTK / "findscu"), model, "-v", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port)]
    for k in keys:
        args += ["-k", k]
    t = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - t
    text_out = out.stdout + out.stderr
    return elapsed, text_out.count("Find Response:"), out.returncode


def query_mix(studies: list[StudyRow], n_patients: int, repeat: int) -> dict[str, list[tuple[str, list[str]]]]:
    picks = [studies[(i * 104729) % len(studies)] for i in range(repeat)]
    return {
        "patient by PatientID": [("-P", ["QueryRetrieveLevel=PATIENT", f"PatientID=PAT{s.patient:06d}", "PatientName", "PatientBirthDate"]) for s in picks],
        "study by name wildcard": [("-S", ["QueryRetrieveLevel=STUDY", f"PatientName={patient_name(s.patient)[:-1]}*", "StudyInstanceUID", "StudyDate", "AccessionNumber"]) for s in picks],
        "study by date range (10 days)": [
            ("-S", ["QueryRetrieveLevel=STUDY", f"StudyDate={s.date:%Y%m%d}-{s.date + dt.timedelta(days=9):%Y%m%d}", "StudyInstanceUID", "PatientName", "ModalitiesInStudy"])
            for s in picks
        ],
        "study by accession": [("-S", ["QueryRetrieveLevel=STUDY", f"AccessionNumber={s.accession}", "StudyInstanceUID", "PatientID", "NumberOfStudyRelatedInstances"]) for s in picks],
        "study by modality + month": [("-S", ["QueryRetrieveLevel=STUDY", "ModalitiesInStudy=MR", f"StudyDate={s.date:%Y%m}01-{s.date:%Y%m}28", "StudyInstanceUID"]) for s in picks],
        "series of a study": [("-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={s.uid}", "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances"]) for s in picks],
        "images of a series": [("-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={s.uid}", f"SeriesInstanceUID={s.uid}.1", "SOPInstanceUID", "InstanceNumber"]) for s in picks],
    }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]


def run_finds(mix: dict[str, list[tuple[str, list[str]]]], targets: dict[str, tuple[int, str]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per query type and server: median and p95 ms, total matches. Each query goes to every server in turn,
    which one first alternating, so a slow moment of a shared machine falls on all of them."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for name, queries in mix.items():
        for port, aec in targets.values():
            findscu(port, aec, *queries[0])  # warm-up
        times: dict[str, list[float]] = {target: [] for target in targets}
        counts: dict[str, int] = {target: 0 for target in targets}
        for i, (model, keys) in enumerate(queries):
            order = list(targets.items())
            for target, (port, aec) in order if i % 2 == 0 else reversed(order):
                elapsed, n, rc = findscu(port, aec, model, keys)
                if rc != 0:
                    raise RuntimeError(f"findscu against {target} failed for {name}")
                times[target].append(elapsed * 1000)
                counts[target] += n
        out[name] = {target: (statistics.median(times[target]), pct(times[target], 0.95), counts[target]) for target in targets}
    return out


def movescu(port: int, aec: str, keys: list[str]) -> None:
    args = [str(DCMTK / "movescu"), "-S", "-aet", "BENCH", "-aec", aec, "-aem", "STORESCP"]
    for key in keys:
        args += ["-k", key]
    out = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, env=ENV)
    if out.returncode != 0:
        raise RuntimeError(f"movescu against {aec} failed: {out.stderr[-500:]}")


def run_moves(targets: dict[str, tuple[int, str]], uids: list[str], received: Path) -> dict[str, tuple[float, int, int]]:
    """Move each study from each server, alternating which goes first; seconds, files and bytes per server.

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
    return {name: (seconds, int(files), int(size)) for name, (seconds, files, size) in totals.items()}


def bench(n_instances: int, repeat: int, moves: int, image_size: int, *, orthanc: bool = True, other: Path | None = None) -> None:
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
        with embedded_storage(["eu-west-1", "ap-northeast-2"]) as s3:
            bucket = s3.buckets[0].name
            t = time.perf_counter()
            db_url = fresh_database("isync_bench_dicom_qr")
            fill_index(db_url, studies, n_patients, bucket)
            print(f"index filled in {time.perf_counter() - t:.0f} s", flush=True)
            other_url = copy_for(other, db_url, "isync_bench_dicom_qr_other") if other is not None else None  # before a node connects

            def blobs(only_moved: bool) -> Any:
                for s in studies:
                    big = s.uid in moved_uids
                    if only_moved and not big:
                        continue
                    for series in range(1, SERIES_PER_STUDY + 1):
                        for number in range(1, INSTANCES_PER_SERIES + 1):
                            yield s, dicom_file(spec(s, series, number, image_size if big else 8))

            t = time.perf_counter()
            for s, blob in blobs(only_moved=True):
                from io import BytesIO

                from pydicom import dcmread

                uid = dcmread(BytesIO(blob), stop_before_pixels=True).SOPInstanceUID
                s3.put(bucket, f"{s.uid}/{uid}.dcm", blob)
            print(f"S3 loaded (moved studies) in {time.perf_counter() - t:.0f} s", flush=True)

            ports = {"node": free_port(), "orthanc": free_port(), "orthanc_http": free_port(), "store": free_port()}
            received = work / "received"
            received.mkdir()
            procs.append(subprocess.Popen([str(DCMTK / "storescp"), "-aet", "STORESCP", "+xa", "-od", str(received), str(ports["store"])],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV))
            targets = {"ours": (ports["node"], "ISYNC")}
            if orthanc:
                procs.append(start_orthanc(work, orthanc_storage, ports["orthanc"], ports["orthanc_http"], ports["store"]))
                t = time.perf_counter()
                loaded = load_orthanc(ports["orthanc_http"], (blob for _, blob in blobs(only_moved=False)))
                print(f"Orthanc loaded with {loaded} instances in {time.perf_counter() - t:.0f} s", flush=True)
                targets["orthanc"] = (ports["orthanc"], "ORTHANC")
            procs.append(start_node(work, db_url, s3, ports["node"], ports["store"]))
            if other is not None and other_url is not None:
                ports["other"] = free_port()
                procs.append(start_node(work, other_url, s3, ports["other"], ports["store"], tree=other, name="other-node"))
                targets["other"] = (ports["other"], "ISYNC")
            results = run_finds(query_mix(studies, n_patients, repeat), targets)
            names = list(targets)
            print(f"\n{'C-FIND (ms)':32} " + " ".join(f"{n + ' med':>12} {'p95':>7}" for n in names) + "  " + " ".join(f"{n}/ours" for n in names[1:]) + "  matches " + "/".join(names))
            for name, r in results.items():
                line = f"{name:32} " + " ".join(f"{r[n][0]:12.1f} {r[n][1]:7.1f}" for n in names)
                line += "  " + " ".join(f"{r[n][0] / r['ours'][0]:{len(n) + 5}.2f}" for n in names[1:])
                print(line + "  " + "/".join(str(r[n][2]) for n in names))
            print(f"\n{'C-MOVE':10} {'s':>7} {'files':>6} {'MB':>7} {'MB/s':>7} {'inst/s':>7}")
            rates = {}
            for target, (elapsed, n, size) in run_moves(targets, [s.uid for s in moved], received).items():
                rates[target] = (size / 1e6 / elapsed, n / elapsed)
                print(f"{target:10} {elapsed:7.2f} {n:6d} {size / 1e6:7.1f} {size / 1e6 / elapsed:7.1f} {n / elapsed:7.1f}")
            for n in names[1:]:
                print(f"ratio ours/{n}: MB/s {rates['ours'][0] / rates[n][0]:.2f}, instances/s {rates['ours'][1] / rates[n][1]:.2f}")
            print("(C-FIND ratio columns: the other server's median / ours, > 1 means ours is faster)")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(orthanc_storage, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, nargs="+", default=[40_000])
    parser.add_argument("--repeat", type=int, default=15, help="queries per type (different values each)")
    parser.add_argument("--moves", type=int, default=10, help="studies moved per server")
    parser.add_argument("--image-size", type=int, default=256, help="rows = columns of the moved studies' 8-bit images")
    parser.add_argument("--no-orthanc", action="store_true", help="measure without Orthanc (not installed, say)")
    parser.add_argument("--ab", type=Path, metavar="OTHER", help="also run a node with the code of the tree OTHER, alternately with ours")
    args = parser.parse_args()
    if not (DCMTK / "findscu").exists():
        sys.exit("needs DCMTK in /usr/bin")
    if not args.no_orthanc and not Path(ORTHANC).exists():
        sys.exit("needs Orthanc (apt-get install orthanc), or --no-orthanc")
    version = "not used" if args.no_orthanc else subprocess.run([ORTHANC, "--version"], capture_output=True, text=True).stdout.split()[1]
    print(f"machine: {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}, Orthanc {version}"
          + (f", A/B against the code of {args.ab}" if args.ab else ""))
    for n in args.instances:
        bench(n, args.repeat, args.moves, args.image_size, orthanc=not args.no_orthanc, other=args.ab.resolve() if args.ab else None)


if __name__ == "__main__":
    main()
