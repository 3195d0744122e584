"""DICOMweb vs Orthanc's DICOMweb plugin: the same QIDO-RS and WADO-RS requests, from the same client code, alternately.

The same generated DICOM files go to both servers: ours gets them as index rows
(PostgreSQL) with the files in an S3 stand-in (moto, its own process), Orthanc
(Debian's 1.10 with its DICOMweb plugin 1.7, files and index on tmpfs) through
its REST upload. Our server runs as ``python -m app serve api`` in its own
process (``--workers`` uvicorn workers), with a viewer API key. Searched
studies: ``--studies`` studies of 2 series x 10 small images (16x16), patient
names as in ``dicom_qr.py`` (``KIM*`` a fifth of the patients); viewed: one
series of ``--series-size`` images of ``--image-size``² 8-bit pixels (64 KiB a
frame at 256).

Phases, each request going to both servers in turn (which first alternating):

1. QIDO-RS study searches (``Accept: application/dicom+json``), ``--repeat``
   each: by PatientID, by PatientName ``KIM*``, by StudyDate (a month, a year),
   by ModalitiesInStudy. The answers are compared: the same studies, and the
   same values of the attributes both servers give.
2. WADO-RS metadata of the big series: the first request (ours: no header
   kept, so it reads every file's header from S3 with ranged GETs; its
   ``instance_header`` rows are deleted before each of the ``--first``
   samples; Orthanc has no such cache to drop: it reads its files each time),
   then ``--meta-repeat`` repeated requests.
3. Frames: frame 1 of every instance of the big series as a viewer scrolls it,
   ``--parallel`` requests at once (a thread pool with one keep-alive client
   per server per thread, as a browser's connections), ``Accept:
   multipart/related; type="application/octet-stream"; transfer-syntax=*``.
   The series goes by in chunks of ``--chunk`` frames, alternating servers
   chunk by chunk (so only one server works at a time), ``--passes`` times.
   Every frame's bytes are checked against the file's pixel data.

CPU seconds from ``/proc`` over each phase (helpers of ``dicom_qr.py``): our
server (uvicorn's supervisor and workers), its PostgreSQL backends, Orthanc,
the S3 server; moto's GET count gives our S3 reads per request.

    python bench/dicomweb.py --studies 400 --series-size 500 --out dicomweb-$(date +%F).txt

As ``dicom_qr.py``: run as root, it re-executes itself inside a loopback-only
network namespace (``--no-netns``: stay in the current one); ``--no-orthanc``
measures our server alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import dicom_qr as qr  # bench/dicom_qr.py, beside this script: CPU meter, Orthanc loading, the generated studies
import httpx
from dicom_qr import ENV, CpuMeter, StudyRow, free_port, loadavg, pct, postgres_backends, process_tree, wait_port
from pydicom import dcmread
from s3_servers import BenchS3, open_s3
from sqlalchemy import create_engine, insert, select, text

from devtools.dicom_files import dicom_file
from imaging_sync import apikeys
from imaging_sync.catalog import facts
from imaging_sync.db.models import Instance, InstanceLocation, Series, Study, Subject
from imaging_sync.ids import new_id

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
NETNS_VAR, NETNS = "DICOMWEB_BENCH_NETNS", "isync-dicomweb-bench"
DB_NAME = "isync_bench_dicomweb"
POOL_SIZE = 5  # connections per worker, opened at its start
POOL_WAIT_SECONDS = 60  # for every worker's pool to be open before measuring
SEARCH_IMAGE_SIZE = 16
QIDO_ACCEPT = "application/dicom+json"
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


# -- the data ----------------------------------------------------------------------------------


def big_study(n_studies: int, n_patients: int) -> StudyRow:
    s = qr.study(n_studies, n_patients)
    return StudyRow(s.index, s.patient, s.uid, s.accession, s.date, s.time, "CT")


def files(studies: list[StudyRow], big: StudyRow, series_size: int, image_size: int) -> Iterator[tuple[str, bytes]]:
    """(S3 key, Part 10 file) of every instance: the searched studies' small images, then the big series."""
    for s in studies:
        for series in range(1, qr.SERIES_PER_STUDY + 1):
            for number in range(1, qr.INSTANCES_PER_SERIES + 1):
                yield f"{s.uid}/{s.uid}.{series}.{number}.dcm", dicom_file(qr.spec(s, series, number, SEARCH_IMAGE_SIZE))
    for number in range(1, series_size + 1):
        yield f"{big.uid}/{big.uid}.1.{number}.dcm", dicom_file(qr.spec(big, 1, number, image_size))


def fill_big_series(db_url: str, big: StudyRow, series_size: int, bucket: str) -> None:
    """The big study (one series) in our index, under its patient's subject; then every study's facts and ANALYZE."""
    engine = create_engine(db_url)
    now = dt.datetime.now(dt.UTC)
    common = {"source_partner": "b", "source_priority": 0, "created_at": now, "updated_at": now, "deleted_at": None}
    with engine.begin() as conn:
        subject = conn.execute(select(Subject.id, Subject.patient_name_search, Subject.patient_name_words).where(Subject.patient_id == f"PAT{big.patient:06d}")).one()
        study_id, series_id = new_id(), new_id()
        conn.execute(insert(Study.__table__), [{
            "id": study_id, **common, "study_instance_uid": big.uid, "subject_id": subject.id, "accession_number": big.accession, "study_date": big.date,
            "study_time": big.time, "description": "CT STUDY", "referring_physician_name": None,
            "patient_name_search": subject.patient_name_search, "patient_name_words": subject.patient_name_words,
        }])
        conn.execute(insert(Series.__table__), [{"id": series_id, **common, "series_instance_uid": f"{big.uid}.1", "study_id": study_id, "modality": "CT",
                                                  "series_number": 1, "description": "SERIES 1", "body_part_examined": None}])
        instances, locations = [], []
        for number in range(1, series_size + 1):
            iid, uid = new_id(), f"{big.uid}.1.{number}"
            instances.append({"id": iid, **common, "sop_instance_uid": uid, "series_id": series_id, "sop_class_uid": qr.SOP["CT"],
                              "transfer_syntax_uid": "1.2.840.10008.1.2.1", "instance_number": number})
            locations.append({"id": new_id(), "instance_id": iid, "partner": "b", "bucket": bucket, "key": f"{big.uid}/{uid}.dcm",
                              "size_bytes": None, "sha256": None, "created_at": now, "updated_at": now})
        conn.execute(insert(Instance.__table__), instances)
        conn.execute(insert(InstanceLocation.__table__), locations)
        facts.refresh(conn, conn.execute(select(Study.id)).scalars())  # modalities and counts, as a sync keeps them
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    engine.dispose()


def viewer_key(db_url: str) -> str:
    engine = create_engine(db_url)
    with engine.begin() as conn:
        token = apikeys.create_key(conn, "bench viewer", "viewer")[1]
    engine.dispose()
    return token


def forget_headers(db_url: str) -> None:
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM instance_header"))
    engine.dispose()


# -- the servers -------------------------------------------------------------------------------


def start_ours(work: Path, db_url: str, s3: BenchS3, port: int, workers: int) -> subprocess.Popen[bytes]:
    """``python -m app serve api`` in its own process; returns once every worker has opened its pool and the tree is idle."""
    lines = [
        "[database]", f'url = "{db_url}"', f"pool_size = {POOL_SIZE}", "",
        "[logging]", 'level = "WARNING"', "",
        "[api]", 'host = "127.0.0.1"', f"port = {port}", f"workers = {workers}", "",
        "[dicomweb]", "read_headers_after_sync = false", "",
    ]
    for bucket, cfg in s3.config.buckets.items():
        lines += [f'[storage.buckets."{bucket}"]', f'region = "{cfg.region}"', f'endpoint_url = "{cfg.endpoint_url}"', 'auth = "keys"',
                  f'access_key_id_env = "{cfg.access_key_id_env}"', f'secret_access_key_env = "{cfg.secret_access_key_env}"', 'addressing_style = "path"', ""]
    config = work / "api.toml"
    config.write_text("\n".join(lines))
    log = open(work / "api.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "api"], env={**ENV, **s3.environ, "IMAGING_SYNC_CONFIG": str(config)}, stdout=log, stderr=log)
    wait_port(port)
    engine = create_engine(db_url)
    started = time.monotonic()
    expected = workers * POOL_SIZE
    with engine.connect() as conn:
        while (opened := conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )).scalar_one()) < expected:
            if proc.poll() is not None:
                raise RuntimeError(f"our server exited ({proc.returncode}); its log: {(work / 'api.log').read_text()[-2000:]}")
            if time.monotonic() > started + POOL_WAIT_SECONDS:
                # Seen a few times after the data load: every worker serving (py-spy: idle in its event loop), one
                # worker's pool not open. Its connections then open on first use, in the untimed warm-up requests.
                tree = process_tree(proc.pid)(qr._proc_stats())
                print(f"note: {opened} of our server's {expected} pooled connections open after {POOL_WAIT_SECONDS} s "
                      f"(processes, pid: CPU s: {tree}); the rest open on first use, in the warm-up", file=sys.stderr)
                break
            time.sleep(0.2)
    engine.dispose()
    wait_tree_idle(proc.pid)
    return proc


def wait_tree_idle(pid: int, quiet: float = 1.0, timeout: float = 60.0) -> None:
    """Until ``pid`` and its children spend (almost) no CPU for ``quiet`` seconds: start-up work done."""
    tree = process_tree(pid)
    deadline, last = time.monotonic() + timeout, sum(tree(qr._proc_stats()).values())
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = sum(tree(qr._proc_stats()).values())
        if now - last < 0.02 * quiet:
            return
        last = now


def start_orthanc(work: Path, storage: Path, http_port: int) -> subprocess.Popen[bytes]:
    """Orthanc with its DICOMweb plugin at /dicom-web/, otherwise as packaged (HTTP threads, storage cache, metadata "Full")."""
    config = {
        "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage), "HttpPort": http_port, "DicomPort": free_port(),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomServerEnabled": False, "HttpServerEnabled": True, "SaveJobs": False,
        "Plugins": [PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen([qr.ORTHANC, str(path)], stdout=subprocess.DEVNULL, stderr=open(work / "orthanc.log", "wb"), env=ENV)
    wait_port(http_port)
    return proc


@dataclass(frozen=True)
class Target:
    name: str
    root: str  # http://127.0.0.1:PORT/dicomweb/ (ours) or /dicom-web/ (Orthanc)
    headers: dict[str, str] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.root, headers=self.headers, timeout=300)


def get(client: httpx.Client, target: Target, path: str, accept: str) -> tuple[float, httpx.Response]:
    """One request: seconds, response; anything but a 200 stops the run with the request and the answer."""
    t = time.perf_counter()
    response = client.get(path, headers={"Accept": accept})
    elapsed = time.perf_counter() - t
    if response.status_code != 200:
        raise RuntimeError(f"{target.name}: GET {response.request.url} (Accept: {accept}) -> {response.status_code} "
                           f"{dict(response.headers)} {response.content[:1000]!r}")
    return elapsed, response


def machine_times() -> list[int]:
    """The machine's CPU time so far, per state (/proc/stat: user nice system idle iowait irq softirq steal)."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def idle_share(before: list[int]) -> str:
    delta = [b - a for a, b in zip(before, machine_times(), strict=True)]
    return f"machine idle {100 * (delta[3] + delta[4]) / (sum(delta) or 1):.0f} %, steal {100 * delta[7] / (sum(delta) or 1):.0f} %"


def alternate(targets: list[Target], i: int) -> list[Target]:
    return targets if i % 2 == 0 else targets[::-1]


# -- 1. QIDO-RS --------------------------------------------------------------------------------

COMPARED = {"00100020": "PatientID", "00100010": "PatientName", "00080020": "StudyDate", "00080050": "AccessionNumber",
            "00080061": "ModalitiesInStudy", "00201206": "NumberOfStudyRelatedSeries", "00201208": "NumberOfStudyRelatedInstances"}


def qido_mix(studies: list[StudyRow], repeat: int) -> dict[str, list[str]]:
    picks = [studies[(i * 104729) % len(studies)] for i in range(repeat)]
    years = [2016 + (4 + i) % 10 for i in range(repeat)]
    return {
        "by PatientID": [f"studies?PatientID=PAT{s.patient:06d}" for s in picks],
        "by PatientName KIM*": ["studies?PatientName=KIM*"] * repeat,
        "by StudyDate (a month)": [f"studies?StudyDate={s.date:%Y%m}01-{s.date:%Y%m}28" for s in picks],
        "by StudyDate (a year)": [f"studies?StudyDate={y}0101-{y}1231" for y in years],
        "by ModalitiesInStudy=MR": ["studies?ModalitiesInStudy=MR"] * repeat,
    }


def study_values(answer: list[dict[str, Any]]) -> dict[str, dict[str, tuple[str, ...]]]:
    """Each study's compared attributes (those with a value), by StudyInstanceUID; PN as its Alphabetic group, all as sorted strings."""
    out = {}
    for match in answer:
        values = {}
        for tag in COMPARED:
            value = match.get(tag, {}).get("Value")
            if value:
                values[tag] = tuple(sorted(str(v.get("Alphabetic")) if isinstance(v, dict) else str(v) for v in value))
        out[match["0020000D"]["Value"][0]] = values
    return out


def differences(ours: list[dict[str, Any]], other: list[dict[str, Any]]) -> list[str]:
    a, b = study_values(ours), study_values(other)
    found = [f"studies only ours: {sorted(set(a) - set(b))[:3]}"] if set(a) - set(b) else []
    found += [f"studies only Orthanc: {sorted(set(b) - set(a))[:3]}"] if set(b) - set(a) else []
    for uid in sorted(set(a) & set(b)):
        for tag in sorted(set(a[uid]) & set(b[uid])):
            if a[uid][tag] != b[uid][tag]:
                found.append(f"{uid} {COMPARED[tag]}: ours {a[uid][tag]} Orthanc {b[uid][tag]}")
    return found


@dataclass
class Timed:
    ms: dict[str, list[float]]
    cpu: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, list[int]] = field(default_factory=dict)
    gets: int | None = None  # S3 GETs (ours) over the phase


def run_qido(mix: dict[str, list[str]], targets: list[Target], clients: dict[str, httpx.Client], meter: CpuMeter) -> tuple[dict[str, Timed], list[str]]:
    out: dict[str, Timed] = {}
    problems: list[str] = []
    for name, paths in mix.items():
        for t in targets:
            get(clients[t.name], t, paths[0], QIDO_ACCEPT)  # warm-up
        timed = Timed({t.name: [] for t in targets}, sizes={t.name: [] for t in targets})
        before = meter.snapshot()
        for i, path in enumerate(paths):
            answers = {}
            for t in alternate(targets, i):
                elapsed, response = get(clients[t.name], t, path, QIDO_ACCEPT)
                timed.ms[t.name].append(elapsed * 1000)
                answers[t.name] = response.json()
                timed.sizes[t.name].append(len(answers[t.name]))
            if "orthanc" in answers:
                problems += [f"{name}, {path}: {d}" for d in differences(answers["ours"], answers["orthanc"])[:5]]
        timed.cpu = meter.used(before, meter.snapshot())
        out[name] = timed
    return out, problems


# -- 2. series metadata ------------------------------------------------------------------------


def metadata_check(answers: dict[str, list[dict[str, Any]]], series_size: int) -> list[str]:
    """Every instance in each answer; for the first instance, the tags only one server gives and the values that differ."""
    found = []
    sops = {name: {m["00080018"]["Value"][0]: m for m in answer} for name, answer in answers.items()}
    for name, by_sop in sops.items():
        if len(by_sop) != series_size:
            found.append(f"{name}: {len(by_sop)} instances in the series metadata, not {series_size}")
    if "orthanc" in sops and not found:
        uid = min(sops["ours"])
        ours, other = sops["ours"][uid], sops["orthanc"][uid]
        only_ours, only_other = sorted(set(ours) - set(other)), sorted(set(other) - set(ours))
        if only_ours or only_other:
            found.append(f"note: attributes of one instance: ours {len(ours)}, Orthanc {len(other)}; only ours {only_ours}; only Orthanc {only_other}")
        for tag in sorted(set(ours) & set(other)):
            a, b = ours[tag].get("Value"), other[tag].get("Value")
            if a != b and not ("BulkDataURI" in ours[tag] or "BulkDataURI" in other[tag]):
                found.append(f"{uid} {tag} ({ours[tag].get('vr')}): ours {str(a)[:80]} Orthanc {str(b)[:80]}")
    return found


def run_metadata(
    targets: list[Target], clients: dict[str, httpx.Client], path: str, first: int, repeat: int, meter: CpuMeter, s3: BenchS3, db_url: str, series_size: int
) -> tuple[Timed, Timed, list[str]]:
    """The first request ``first`` times (our header cache emptied before each of ours), then ``repeat`` repeated requests."""
    first_timed = Timed({t.name: [] for t in targets}, sizes={t.name: [] for t in targets})
    cpu: dict[str, float] = {}
    gets = 0
    answers: dict[str, list[dict[str, Any]]] = {}
    for i in range(first):
        for t in alternate(targets, i):
            if t.name == "ours":
                forget_headers(db_url)
            requests_before, before = s3.server.requests(), meter.snapshot()  # per request: the DELETE is not counted
            elapsed, response = get(clients[t.name], t, path, QIDO_ACCEPT)
            used, requests_after = meter.used(before, meter.snapshot()), s3.server.requests()
            for source, seconds in used.items():
                cpu[source] = cpu.get(source, 0.0) + seconds
            if t.name == "ours" and requests_before is not None and requests_after is not None:
                gets += requests_after.get("GET", 0) - requests_before.get("GET", 0)
            first_timed.ms[t.name].append(elapsed * 1000)
            first_timed.sizes[t.name].append(len(response.content))
            answers[t.name] = response.json()
    first_timed.cpu, first_timed.gets = cpu, gets if s3.server.requests() is not None else None
    problems = metadata_check(answers, series_size)
    repeated = Timed({t.name: [] for t in targets}, sizes={t.name: [] for t in targets})
    requests_before, before = s3.server.requests(), meter.snapshot()
    for i in range(repeat):
        for t in alternate(targets, i):
            elapsed, response = get(clients[t.name], t, path, QIDO_ACCEPT)
            repeated.ms[t.name].append(elapsed * 1000)
            repeated.sizes[t.name].append(len(response.content))
    repeated.cpu = meter.used(before, meter.snapshot())
    requests_after = s3.server.requests()
    repeated.gets = requests_after.get("GET", 0) - requests_before.get("GET", 0) if requests_before is not None and requests_after is not None else None
    return first_timed, repeated, problems


# -- 3. frames ---------------------------------------------------------------------------------


def frame_payload(response: httpx.Response) -> bytes:
    """The one part of a multipart/related answer."""
    match = re.search(r'boundary="?([^";]+)"?', response.headers.get("content-type", ""))
    if match is None:
        raise RuntimeError(f"no multipart boundary in {response.headers.get('content-type')!r} ({response.request.url})")
    parts = response.content.split(b"--" + match.group(1).encode())
    payload = parts[1].partition(b"\r\n\r\n")[2]
    return payload[:-2] if payload.endswith(b"\r\n") else payload


@dataclass
class Frames:
    ms: dict[str, list[float]]
    seconds: dict[str, float]
    bytes: dict[str, int]
    cpu: dict[str, float] = field(default_factory=dict)
    gets: int | None = None
    wrong: list[str] = field(default_factory=list)


def run_frames(
    targets: list[Target], frame_paths: list[tuple[str, str]], pixels: dict[str, bytes], parallel: int, chunk: int, passes: int, meter: CpuMeter, s3: BenchS3
) -> Frames:
    """Frame 1 of each instance, ``parallel`` at once, the series in chunks alternating between the servers, ``passes`` times."""
    local = threading.local()
    opened: list[httpx.Client] = []
    lock = threading.Lock()
    result = Frames({t.name: [] for t in targets}, {t.name: 0.0 for t in targets}, {t.name: 0 for t in targets})

    def fetch(target: Target, sop: str, path: str) -> tuple[float, int]:
        clients = local.__dict__.setdefault("clients", {})
        if target.name not in clients:
            clients[target.name] = target.client()
            with lock:
                opened.append(clients[target.name])
        elapsed, response = get(clients[target.name], target, path, FRAME_ACCEPT)
        if frame_payload(response) != pixels[sop]:
            with lock:
                result.wrong.append(f"{target.name}: frame 1 of {sop}: {len(frame_payload(response))} bytes, not the file's {len(pixels[sop])} pixel bytes")
        return elapsed, len(response.content)

    chunks = [frame_paths[i:i + chunk] for i in range(0, len(frame_paths), chunk)]
    try:
        with ThreadPoolExecutor(parallel) as pool:
            for t in targets:  # warm-up: a connection per thread, untimed
                list(pool.map(lambda item, t=t: fetch(t, *item), frame_paths[:parallel]))
            requests_before, before = s3.server.requests(), meter.snapshot()
            for i, part in enumerate(chunk for _ in range(passes) for chunk in chunks):
                for t in alternate(targets, i):
                    start = time.perf_counter()
                    done = list(pool.map(lambda item, t=t: fetch(t, *item), part))
                    result.seconds[t.name] += time.perf_counter() - start
                    result.ms[t.name] += [elapsed * 1000 for elapsed, _ in done]
                    result.bytes[t.name] += sum(size for _, size in done)
            result.cpu = meter.used(before, meter.snapshot())
            requests_after = s3.server.requests()
            if requests_before is not None and requests_after is not None:
                result.gets = requests_after.get("GET", 0) - requests_before.get("GET", 0)
    finally:
        for client in opened:
            client.close()
    return result


# -- the report --------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values)


def row_times(timed: Timed, names: list[str], pg: bool = True) -> str:
    count = len(timed.ms["ours"])
    line = ""
    for n in names:
        line += f" | {med(timed.ms[n]):9.1f} {pct(timed.ms[n], 0.95):8.1f} {timed.cpu.get(n, 0.0) * 1000 / count:7.1f}"
        if n == "ours" and pg:
            line += f" {timed.cpu.get('ours pg', 0.0) * 1000 / count:6.1f} {timed.cpu.get('s3', 0.0) * 1000 / count:6.1f}"
    if "orthanc" in names:
        line += f" | {med(timed.ms['ours']) / med(timed.ms['orthanc']):10.2f}"
    return line


def header_times(first: str, names: list[str]) -> str:
    head = f"{first:28}"
    for n in names:
        head += f" | {n + ' med':>9} {'p95':>8} {'cpu':>7}" + (f" {'pg':>6} {'s3':>6}" if n == "ours" else "")
    return head + (f" | {'ours÷orth.':>10}" if "orthanc" in names else "")


def report(
    qido: dict[str, Timed], first: Timed, repeated: Timed, frames: Frames, names: list[str], series_size: int, problems: list[str], idle: dict[str, str]
) -> None:
    print("\nms per request (median, p95); cpu = CPU ms per request of the server (ours: uvicorn workers; pg: its PostgreSQL backends;")
    print("s3: the moto S3 server), counted over both servers' requests of the row but divided by one server's count;")
    print("ours÷orth. = our median ÷ Orthanc's median (≤ 1.00: ours at least as fast)")
    print("\n1. QIDO-RS study searches (Accept: application/dicom+json); matches = studies per answer, mean")
    print(header_times(f"query (n = {len(next(iter(qido.values())).ms['ours'])} each)", names) + " | matches " + " ".join(names))
    for name, timed in qido.items():
        print(f"{name:28}" + row_times(timed, names) + " | " + " ".join(f"{statistics.mean(timed.sizes[n]):.4g}" for n in names))
    print(f"({idle['qido']})")
    print(f"\n2. WADO-RS metadata of the {series_size}-instance series")
    print(header_times("request", names) + " | MB/answer " + " ".join(names))
    for label, timed in ((f"first (n = {len(first.ms['ours'])})", first), (f"repeated (n = {len(repeated.ms['ours'])})", repeated)):
        print(f"{label:28}" + row_times(timed, names) + " | " + " ".join(f"{statistics.mean(timed.sizes[n]) / 1e6:.2f}" for n in names))
    print(f"({idle['metadata']}); first requests, ms in order: " + "; ".join(f"{n} " + " ".join(f"{v:.0f}" for v in first.ms[n]) for n in names))
    if first.gets is not None:
        print(f"S3 GETs by our server: {first.gets / len(first.ms['ours']):.0f} per first request, {repeated.gets} over the repeated ones")
    print(f"\n3. Frames: frame 1 of each instance of the {series_size}-instance series, {FRAME_ACCEPT}")
    print(f"{'server':10} {'frames':>7} {'s':>7} {'frames/s':>9} {'MB/s':>7} {'med ms':>7} {'p95 ms':>7} {'cpu ms/frame':>13} {'pg ms/frame':>12} {'s3 ms/GET':>10} {'GETs/frame':>11}")
    for n in names:
        count, seconds = len(frames.ms[n]), frames.seconds[n]
        pg = f"{frames.cpu.get('ours pg', 0.0) * 1000 / count:12.2f}" if n == "ours" else f"{'-':>12}"
        s3 = f"{frames.cpu.get('s3', 0.0) * 1000 / frames.gets:10.2f}" if n == "ours" and frames.gets else f"{'-':>10}"
        per_get = f"{frames.gets / count:11.2f}" if n == "ours" and frames.gets is not None else f"{'-':>11}"
        print(f"{n:10} {count:7d} {seconds:7.2f} {count / seconds:9.1f} {frames.bytes[n] / 1e6 / seconds:7.1f} {med(frames.ms[n]):7.1f} "
              f"{pct(frames.ms[n], 0.95):7.1f} {frames.cpu.get(n, 0.0) * 1000 / count:13.2f} {pg} {s3} {per_get}")
    print(f"({idle['frames']})")
    if "orthanc" in names:
        ours_rate, other_rate = len(frames.ms["ours"]) / frames.seconds["ours"], len(frames.ms["orthanc"]) / frames.seconds["orthanc"]
        print(f"ratio ours÷orthanc, frames/s: {ours_rate / other_rate:.2f} (≥ 1.00: ours at least as fast)")
        print("\nTargets")
        for name, timed in qido.items():
            ratio = med(timed.ms["ours"]) / med(timed.ms["orthanc"])
            print(f"  QIDO {name}: ours÷Orthanc {ratio:.2f} (≤ 1.00): {'met' if ratio <= 1 else 'NOT met'}")
        ratio = med(repeated.ms["orthanc"]) / med(repeated.ms["ours"])
        print(f"  repeated series metadata: Orthanc÷ours {ratio:.2f} (≥ 2.00): {'met' if ratio >= 2 else 'NOT met'}")
        print(f"  frame throughput: ours÷Orthanc {ours_rate / other_rate:.2f} (≥ 1.00): {'met' if ours_rate >= other_rate else 'NOT met'}")
    if "orthanc" in names:
        differ = [p for p in problems if not p.startswith("note:")] + frames.wrong
        print("\nAnswers compared: " + ("the same studies, instances and frame bytes; values identical where both give one" if not differ else "DIFFERENCES"))
    elif problems or frames.wrong:
        print("\nAnswers checked:")
    for p in problems + frames.wrong[:10]:
        print(f"  {p}")


# -- the run -----------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> None:
    n_patients = max(1, args.studies // 2)
    studies = [qr.study(i, n_patients) for i in range(args.studies)]
    big = big_study(args.studies, n_patients)
    work = Path(tempfile.mkdtemp(prefix="dicomweb-bench-"))
    shm = Path("/dev/shm")
    orthanc_storage = Path(tempfile.mkdtemp(prefix="orthanc-dicomweb-bench-", dir=shm if shm.is_dir() else work))
    procs: list[subprocess.Popen[bytes]] = []
    n_files = args.studies * qr.SERIES_PER_STUDY * qr.INSTANCES_PER_SERIES + args.series_size
    print(f"\n== {args.studies} studies ({n_patients} patients, {qr.SERIES_PER_STUDY}x{qr.INSTANCES_PER_SERIES} images of {SEARCH_IMAGE_SIZE}x{SEARCH_IMAGE_SIZE}) "
          f"+ one series of {args.series_size} images of {args.image_size}x{args.image_size} 8-bit; {n_files} files", flush=True)
    try:
        with open_s3("moto", ["eu-west-1"], ENV) as s3:
            bucket = s3.buckets[0].name
            t = time.perf_counter()
            db_url = qr.fresh_database(DB_NAME)
            qr.fill_index(db_url, studies, n_patients, bucket)
            fill_big_series(db_url, big, args.series_size, bucket)
            token = viewer_key(db_url)
            print(f"index filled in {time.perf_counter() - t:.0f} s", flush=True)

            ours_port, orthanc_port = free_port(), free_port()
            targets = [Target("ours", f"http://127.0.0.1:{ours_port}/dicomweb/", {"Authorization": f"Bearer {token}"})]
            if not args.no_orthanc:
                procs.append(start_orthanc(work, orthanc_storage, orthanc_port))
                targets.append(Target("orthanc", f"http://127.0.0.1:{orthanc_port}/dicom-web/"))
            pixels: dict[str, bytes] = {}
            t = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                def put(item: tuple[str, bytes]) -> None:
                    s3.put(bucket, *item)

                def to_both() -> Iterator[bytes]:
                    pending = []
                    for key, blob in files(studies, big, args.series_size, args.image_size):
                        if key.startswith(big.uid + "/"):
                            pixels[key.split("/")[1][:-4]] = dcmread(BytesIO(blob)).PixelData
                        pending.append(pool.submit(put, (key, blob)))
                        yield blob
                    for future in pending:
                        future.result()

                if args.no_orthanc:
                    deque(to_both(), maxlen=0)  # S3 only: run the uploads, keep nothing
                else:
                    qr.load_orthanc(orthanc_port, to_both())
            print(f"S3{' and Orthanc' if not args.no_orthanc else ''} loaded in {time.perf_counter() - t:.0f} s", flush=True)

            meter = CpuMeter()
            if not args.no_orthanc:
                wait_tree_idle(procs[-1].pid)
                meter.sources["orthanc"] = process_tree(procs[-1].pid)
                about = httpx.get(f"http://127.0.0.1:{orthanc_port}/system").json()
                plugin = httpx.get(f"http://127.0.0.1:{orthanc_port}/plugins/dicom-web").json()
                print(f"Orthanc {about.get('Version')}, DICOMweb plugin {plugin.get('Version')}", flush=True)
            procs.append(start_ours(work, db_url, s3, ours_port, args.workers))
            meter.sources["ours"] = process_tree(procs[-1].pid)
            meter.sources["ours pg"] = postgres_backends(DB_NAME)
            if s3.server.pid is not None:
                meter.sources["s3"] = process_tree(s3.server.pid)
            names = [t.name for t in targets]
            clients = {t.name: t.client() for t in targets}
            try:
                print(f"load average before measuring {loadavg()}", flush=True)
                idle, times = {}, machine_times()
                qido, problems = run_qido(qido_mix(studies, args.repeat), targets, clients, meter)
                idle["qido"], times = idle_share(times), machine_times()
                series_path = f"studies/{big.uid}/series/{big.uid}.1/metadata"
                first, repeated, meta_problems = run_metadata(targets, clients, series_path, args.first, args.meta_repeat, meter, s3, db_url, args.series_size)
                idle["metadata"], times = idle_share(times), machine_times()
                frame_paths = [(f"{big.uid}.1.{n}", f"studies/{big.uid}/series/{big.uid}.1/instances/{big.uid}.1.{n}/frames/1") for n in range(1, args.series_size + 1)]
                frames = run_frames(targets, frame_paths, pixels, args.parallel, args.chunk, args.passes, meter, s3)
                idle["frames"] = idle_share(times)
            finally:
                for client in clients.values():
                    client.close()
            report(qido, first, repeated, frames, names, args.series_size, problems + meta_problems, idle)
    finally:
        qr.stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(orthanc_storage, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=400, help="searched studies (2 series x 10 small images each)")
    parser.add_argument("--series-size", type=int, default=500, help="instances of the viewed series")
    parser.add_argument("--image-size", type=int, default=256, help="rows = columns of the viewed series' 8-bit images")
    parser.add_argument("--repeat", type=int, default=30, help="requests per QIDO type and server")
    parser.add_argument("--first", type=int, default=3, help="first (uncached) series metadata requests per server")
    parser.add_argument("--meta-repeat", type=int, default=20, help="repeated series metadata requests per server")
    parser.add_argument("--passes", type=int, default=6, help="times each server serves every frame of the series (6: about 10 s each, steadier than 2)")
    parser.add_argument("--parallel", type=int, default=4, help="frame requests at once (a browser's connections)")
    parser.add_argument("--chunk", type=int, default=50, help="frames per turn of a server")
    parser.add_argument("--workers", type=int, default=2, help="our server's uvicorn workers (api.workers; one per core)")
    parser.add_argument("--no-orthanc", action="store_true", help="measure our server alone")
    parser.add_argument("--no-netns", action="store_true", help="run in the current network namespace")
    parser.add_argument("--out", metavar="FILE", help="also write the output to FILE (a bare name: under bench/results/)")
    args = parser.parse_args()
    if not args.no_orthanc and not (Path(qr.ORTHANC).exists() and Path(PLUGIN).exists()):
        sys.exit("needs Orthanc and its DICOMweb plugin (apt-get install orthanc orthanc-dicomweb), or --no-orthanc")
    if not args.no_netns and NETNS_VAR not in os.environ:
        sys.exit(qr.in_netns(sys.argv[1:], netns=NETNS, marker=NETNS_VAR, script=__file__))
    if NETNS_VAR in os.environ:
        qr.PG_ADMIN = qr.PG_SOCKET_URL  # 127.0.0.1:5432 is the root namespace's
    if args.out:
        path = qr.out_path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout = qr.Tee(sys.stdout, path.open("w", encoding="utf-8"))
    admin = create_engine(qr.PG_ADMIN)
    with admin.connect() as conn:
        pg_version = conn.execute(text("SHOW server_version")).scalar()
    admin.dispose()
    netns = os.environ.get(NETNS_VAR)
    print(f"date: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, load average at start {loadavg()}; Python {platform.python_version()}, PostgreSQL {pg_version}")
    print(f"ours: python -m app serve api, {args.workers} uvicorn workers; Orthanc: {'not used' if args.no_orthanc else qr.ORTHANC + ' + ' + PLUGIN} "
          f"(TCP_NODELAY=1, index and files on tmpfs); S3: moto (own process)")
    print(f"network: {'namespace ' + netns + ' (loopback only), PostgreSQL by Unix socket' if netns else 'current namespace (--no-netns)'}; "
          f"client: httpx {httpx.__version__}, one keep-alive client per server (per thread for frames)", flush=True)
    bench(args)
    print(f"\nload average at end {loadavg()}")

if __name__ == "__main__":
    main()
