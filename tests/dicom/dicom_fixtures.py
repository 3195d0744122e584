"""Fixtures for the DICOM node: a known index, its files in two partners' buckets, the node, real peers.

The data set (``STUDIES``) is small and every answer to every query in the
tests is known. Rows go straight into the index (SQLAlchemy Core); files are
real Part 10 files (devtools.dicom_files) in an embedded S3 with
one bucket per partner, in different regions.

DCMTK is called by absolute path (/usr/bin/findscu …: the names on PATH are
pynetdicom's own apps). Without DCMTK those tests skip with the reason;
``IMAGING_SYNC_REQUIRE_DCMTK=1`` (CI) turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from sqlalchemy import Engine, insert

from devtools.dicom_files import InstanceSpec, dicom_file
from devtools.ports import free_port
from devtools.storage import EmbeddedStorage, embedded_storage
from devtools.waiting import eventually, port_open
from dicom.server import DicomServer, build_services
from imaging_sync.catalog import facts
from imaging_sync.config import DicomConfig, DicomDestination
from imaging_sync.db.models import Instance, InstanceLocation, Series, Study, Subject
from imaging_sync.ids import new_id
from imaging_sync.person_names import search_form
from storage import ObjectReader

REQUIRE_DCMTK = os.environ.get("IMAGING_SYNC_REQUIRE_DCMTK") == "1"
DCMTK = Path("/usr/bin")
CT, MR, US, SC = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.7"
NODE_AE = "ISYNC_TEST"
MISSING_OBJECT_UID = "1.2.826.0.1.4.1.2"  # indexed, but its object is not in the bucket


# -- the known data set -------------------------------------------------------------


@dataclass
class Inst:
    uid: str
    sop_class: str
    ts: str | None
    number: int
    partner: str = "b"  # b: bucket 0 (eu-west-1), c: bucket 1 (ap-northeast-2)
    deleted: bool = False
    uploaded: bool = True


@dataclass
class Ser:
    uid: str
    modality: str
    number: int
    description: str
    body_part: str | None
    instances: list[Inst]
    deleted: bool = False


@dataclass
class Std:
    uid: str
    accession: str | None
    date: dt.date | None
    time: str | None
    description: str | None
    referring: str | None
    series: list[Ser]
    deleted: bool = False


@dataclass
class Subj:
    patient_id: str
    issuer: str
    name: str | None
    birth: dt.date | None
    sex: str | None
    studies: list[Std] = field(default_factory=list)
    deleted: bool = False


def _i(uid: str, sop: str, ts: str | None, n: int, **kw: Any) -> Inst:
    return Inst(uid, sop, ts, n, **kw)


SUBJECTS = [
    Subj("P001", "HOSP-A", "KIM^MINJUN", dt.date(1980, 5, 17), "M", [
        Std("1.2.826.0.1.1", "ACC001", dt.date(2024, 1, 15), "083000", "CT CHEST", "Smith^John", [
            Ser("1.2.826.0.1.1.1", "CT", 1, "AXIAL 5mm", "CHEST", [
                _i("1.2.826.0.1.1.1.1", CT, ExplicitVRLittleEndian, 1),
                _i("1.2.826.0.1.1.1.2", CT, ExplicitVRLittleEndian, 2),
                _i("1.2.826.0.1.1.1.3", CT, ExplicitVRLittleEndian, 3),
            ]),
            Ser("1.2.826.0.1.1.2", "CT", 2, "CORONAL MPR", "CHEST", [
                _i("1.2.826.0.1.1.2.1", CT, ImplicitVRLittleEndian, 1, partner="c"),
                _i("1.2.826.0.1.1.2.2", CT, RLELossless, 2, partner="c"),
            ]),
            Ser("1.2.826.0.1.1.3", "SR", 3, "REPORT", None, [
                _i("1.2.826.0.1.1.3.1", SC, DeflatedExplicitVRLittleEndian, 1, partner="c"),
            ]),
        ]),
        Std("1.2.826.0.1.2", "ACC002", dt.date(2024, 2, 20), "141500", "MR HEAD", "Smith^Jane", [
            Ser("1.2.826.0.1.2.1", "MR", 1, "AX T1", "HEAD", [
                _i("1.2.826.0.1.2.1.1", MR, ExplicitVRLittleEndian, 1),
                _i("1.2.826.0.1.2.1.2", MR, ExplicitVRLittleEndian, 2),
            ]),
        ]),
    ]),
    Subj("P002", "HOSP-A", "김^민준", dt.date(1975, 1, 2), "F", [
        Std("1.2.826.0.1.3", "ACC003", dt.date(2023, 12, 31), "235959", "CT 흉부", "이^서연", [
            Ser("1.2.826.0.1.3.1", "CT", 1, "AXIAL", "CHEST", [_i("1.2.826.0.1.3.1.1", CT, ExplicitVRLittleEndian, 1)]),
            Ser("1.2.826.0.1.3.2", "MR", 2, "SAG T2", "CSPINE", [_i("1.2.826.0.1.3.2.1", MR, ExplicitVRLittleEndian, 1, partner="c")]),
        ]),
    ]),
    Subj("P003", "HOSP-B", "Lee^Seoyeon", dt.date(1990, 12, 31), "F", [
        Std("1.2.826.0.1.4", "ACC004", dt.date(2024, 1, 31), "000000", "US ABDOMEN", None, [
            Ser("1.2.826.0.1.4.1", "US", 1, "B-MODE", "ABDOMEN", [
                _i("1.2.826.0.1.4.1.1", US, ExplicitVRLittleEndian, 1),
                _i(MISSING_OBJECT_UID, US, ExplicitVRLittleEndian, 2, uploaded=False),
                _i("1.2.826.0.1.4.1.3", US, ExplicitVRLittleEndian, 3),
                _i("1.2.826.0.1.4.1.9", US, ExplicitVRLittleEndian, 9, deleted=True),
            ]),
            Ser("1.2.826.0.1.4.9", "CT", 9, "DELETED SERIES", None, [], deleted=True),
        ]),
        Std("1.2.826.0.1.5", "ACC005", dt.date(2024, 1, 20), "120000", "DELETED STUDY", None, [
            Ser("1.2.826.0.1.5.1", "CT", 1, "X", None, [_i("1.2.826.0.1.5.1.1", CT, ExplicitVRLittleEndian, 1)]),
        ], deleted=True),
    ]),
    Subj("P004", "", "PARK^JIWOO", dt.date(2000, 1, 1), "M", [
        Std("1.2.826.0.1.7", "ACC007", dt.date(2024, 1, 15), "090000", "DELETED PATIENT", None, []),
    ], deleted=True),
    Subj("P%5_", "", "O_NEIL^JO%", None, "O", [
        Std("1.2.826.0.1.6", "AC%_1", None, None, None, None, [
            Ser("1.2.826.0.1.6.1", "OT", 1, "100% [sic]", None, [_i("1.2.826.0.1.6.1.1", SC, None, 1)]),
        ]),
    ]),
]


def file_spec(subj: Subj, std: Std, ser: Ser, inst: Inst) -> InstanceSpec:
    return InstanceSpec(
        sop_instance_uid=inst.uid, series_instance_uid=ser.uid, study_instance_uid=std.uid, sop_class_uid=inst.sop_class,
        transfer_syntax_uid=inst.ts or ExplicitVRLittleEndian, patient_id=subj.patient_id, patient_name=subj.name,
        issuer=subj.issuer or None, birth_date=subj.birth.strftime("%Y%m%d") if subj.birth else None, sex=subj.sex,
        accession_number=std.accession, study_date=std.date.strftime("%Y%m%d") if std.date else None, study_time=std.time,
        study_description=std.description, referring_physician_name=std.referring, modality=ser.modality,
        series_number=ser.number, series_description=ser.description, body_part_examined=ser.body_part, instance_number=inst.number,
        # The first series of the first study: 128 x 128 pixels (16 KiB and more), so a file crosses several PDUs of a peer at 4 KiB.
        **({"rows": 128, "columns": 128} if ser.uid == LARGE_SERIES else {}),
    )


LARGE_SERIES = "1.2.826.0.1.1.1"


def walk() -> Iterator[tuple[Subj, Std, Ser, Inst]]:
    for subj in SUBJECTS:
        for std in subj.studies:
            for ser in std.series:
                for inst in ser.instances:
                    yield subj, std, ser, inst


def object_key(inst: Inst) -> str:
    return f"studies/{inst.uid}.dcm"


@dataclass(frozen=True)
class Files:
    """The embedded S3 and what was uploaded (sop instance uid -> Part 10 bytes)."""

    s3: EmbeddedStorage
    data: dict[str, bytes]

    def bucket(self, partner: str) -> str:
        return self.s3.buckets[0 if partner == "b" else 1].name


@pytest.fixture(scope="session")
def files() -> Iterator[Files]:
    with embedded_storage(["eu-west-1", "ap-northeast-2"]) as s3:
        data: dict[str, bytes] = {}
        for subj, std, ser, inst in walk():
            blob = dicom_file(file_spec(subj, std, ser, inst))
            data[inst.uid] = blob
            if inst.uploaded:
                s3.put(s3.buckets[0 if inst.partner == "b" else 1].name, object_key(inst), blob)
        yield Files(s3, data)


def load_index(engine: Engine, files: Files) -> None:
    """Insert ``SUBJECTS`` into the index (soft-deleted rows included, as the sync leaves them), with the facts a sync keeps."""
    now = dt.datetime.now(dt.UTC)
    rows: dict[Any, list[dict[str, Any]]] = {Subject: [], Study: [], Series: [], Instance: [], InstanceLocation: []}
    common = {"source_partner": "b", "source_priority": 0, "created_at": now, "updated_at": now}

    def gone(flag: bool) -> dict[str, Any]:
        return {"deleted_at": now if flag else None}

    for subj in SUBJECTS:
        subj_id = new_id()
        rows[Subject].append({
            "id": subj_id, **common, **gone(subj.deleted), "issuer": subj.issuer, "patient_id": subj.patient_id,
            "patient_name": subj.name, "patient_name_search": search_form(subj.name), "birth_date": subj.birth, "sex": subj.sex,
        })
        for std in subj.studies:
            study_id = new_id()
            rows[Study].append({
                "id": study_id, **common, **gone(std.deleted), "study_instance_uid": std.uid, "subject_id": subj_id,
                "accession_number": std.accession, "study_date": std.date, "study_time": std.time, "description": std.description,
                "referring_physician_name": std.referring, "referring_physician_name_search": search_form(std.referring),
            })
            for ser in std.series:
                series_id = new_id()
                rows[Series].append({
                    "id": series_id, **common, **gone(ser.deleted), "series_instance_uid": ser.uid, "study_id": study_id,
                    "modality": ser.modality, "series_number": ser.number, "description": ser.description, "body_part_examined": ser.body_part,
                })
                for inst in ser.instances:
                    inst_id = new_id()
                    rows[Instance].append({
                        "id": inst_id, **common, **gone(inst.deleted), "sop_instance_uid": inst.uid, "series_id": series_id,
                        "sop_class_uid": inst.sop_class, "transfer_syntax_uid": inst.ts, "instance_number": inst.number,
                    })
                    rows[InstanceLocation].append({
                        "id": new_id(), "instance_id": inst_id, "partner": inst.partner, "bucket": files.bucket(inst.partner),
                        "key": object_key(inst), "size_bytes": len(files.data[inst.uid]), "sha256": None, "created_at": now, "updated_at": now,
                    })
    with engine.begin() as conn:
        for model, values in rows.items():
            if values:
                conn.execute(insert(model.__table__), values)
        facts.refresh(conn, [row["id"] for row in rows[Study]])  # modalities and counts, as the sync keeps them on each page


# -- the node -----------------------------------------------------------------------------




@dataclass
class Node:
    server: DicomServer
    port: int
    engine: Engine
    config: DicomConfig
    files: Files
    ports: dict[str, int]

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port


# The calling AEs the tests use, each granted everything from this machine (the node serves nobody unlisted).
# DCMTK's tools call themselves ECHOSCU, FINDSCU, MOVESCU and GETSCU unless told otherwise.
TEST_PEERS = ("TEST_SCU", "AUDITED_SCU", "GET_SCU", "ECHOSCU", "FINDSCU", "MOVESCU", "GETSCU", "SCU_P001", "SCU_P002", "SCU_P003", "SCU_P%5_")
ALL_OPERATIONS = ["echo", "find", "move", "get"]


def start_node(engine: Engine, files: Files, **overrides: Any) -> Node:
    """The node over ``engine`` on a free port; ``overrides`` replace [dicom] keys (``peers`` replaces TEST_PEERS)."""
    ports = {"STORESCP": free_port(), "PYSTORE": free_port()}
    config = DicomConfig(
        ae_title=NODE_AE, host="127.0.0.1", port=0, network_timeout_seconds=10,
        destinations={ae: DicomDestination(host="127.0.0.1", port=p) for ae, p in ports.items()}, fetch_concurrency=3,
        pending_interval_seconds=0,  # a pending response after every file: the tests read the progress file by file
    )
    if "peers" not in overrides:
        config = config.with_local_peers({ae: ALL_OPERATIONS for ae in TEST_PEERS})
    config = msgspec.structs.replace(config, **overrides) if overrides else config
    services = build_services(config, engine, ObjectReader(files.s3.registry()), partner_priority={"b": 10, "c": 5})
    server = DicomServer(config, services)
    port = server.start()
    return Node(server, port, engine, config, files, ports)


@pytest.fixture
def node(engine: Engine, files: Files) -> Iterator[Node]:
    """The node over the known index, on SQLite and on PostgreSQL."""
    load_index(engine, files)
    n = start_node(engine, files)
    yield n
    n.server.stop()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    from imaging_sync.config import DatabaseConfig
    from imaging_sync.db.engine import create_db_engine

    engine = create_db_engine(DatabaseConfig(url=sqlite_url))
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_node(sqlite_engine: Engine, files: Files) -> Iterator[Node]:
    """The node over the known index on SQLite only (for tests where the database does not matter)."""
    load_index(sqlite_engine, files)
    n = start_node(sqlite_engine, files)
    yield n
    n.server.stop()


# -- DCMTK ----------------------------------------------------------------------------------


def _dcmtk_problem() -> str | None:
    try:
        out = subprocess.run([str(DCMTK / "findscu"), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"DCMTK not found at {DCMTK} ({type(exc).__name__})"
    if "dcmtk" not in out.stdout.lower():
        return f"{DCMTK / 'findscu'} is not DCMTK's findscu"
    return None


@pytest.fixture(scope="session")
def dcmtk() -> Path:
    """DCMTK's tool directory; skips (or fails, with IMAGING_SYNC_REQUIRE_DCMTK=1) without DCMTK."""
    problem = _dcmtk_problem()
    if problem:
        if REQUIRE_DCMTK:
            pytest.fail(f"{problem} (IMAGING_SYNC_REQUIRE_DCMTK=1 forbids skipping)")
        pytest.skip(problem)
    return DCMTK


@dataclass
class StoreSCP:
    directory: Path
    process: subprocess.Popen[bytes]

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file())


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    eventually(lambda: port_open(port), timeout=timeout, what=f"something listening on port {port}")


@contextlib.contextmanager
def running_storescp(dcmtk: Path, port: int, out: Path, *options: str) -> Iterator[StoreSCP]:
    """DCMTK's storescp as the C-MOVE destination STORESCP on ``port``, writing what it receives into ``out``
    (a new folder); ``options`` are more of storescp's own (``--max-pdu 4096``, say)."""
    out.mkdir()
    # +xa: accept every transfer syntax as proposed; +B: write the data set bit-preserving, as received; -uf: file names from the SOP instance UID.
    process = subprocess.Popen(
        [str(dcmtk / "storescp"), "-aet", "STORESCP", "+xa", "+B", *options, "-od", str(out), "-uf", "-q", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        yield StoreSCP(out, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def storescp(dcmtk: Path, node: Node, tmp_path: Path) -> Iterator[StoreSCP]:
    """DCMTK's storescp as the C-MOVE destination STORESCP, accepting every storage context as proposed."""
    with running_storescp(dcmtk, node.ports["STORESCP"], tmp_path / "received") as store:
        yield store


def run_tool(dcmtk: Path, tool: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(dcmtk / tool), *args], capture_output=True, text=True, timeout=timeout)


def uid_of(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().int % 10**12}"


# -- the audit log ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audited:
    """An audit entry as it ended: a two-step entry (``started``) read with its completion, if it has one."""

    entry: dict[str, Any]
    disclosed: dict[str, list[uuid.UUID]]

    @property
    def started(self) -> bool:
        """Written before the answer (something was disclosed), and completed at the end."""
        return self.entry["outcome"] == "started"

    @property
    def outcome(self) -> str:
        done = self.entry["completion"]
        return done["outcome"] if done else self.entry["outcome"]

    @property
    def status(self) -> int | None:
        done = self.entry["completion"]
        return done["status"] if done else self.entry["status"]

    @property
    def detail(self) -> dict[str, Any]:
        done = self.entry["completion"]
        return (done["detail"] if done else self.entry["detail"]) or {}

    def __getitem__(self, name: str) -> Any:
        return self.entry[name]


def audit_entries(engine: Engine, *, action: str | None = None, actor: str | None = None) -> list[Audited]:
    """The audit entries, oldest first (optionally of one action or actor), with what each disclosed."""
    from imaging_sync import audit

    with engine.connect() as conn:
        entries = [e for e in reversed(audit.search(conn, actor=actor, limit=1000)) if action is None or e["action"] == action]
        return [Audited(e, audit.disclosed_by(conn, e["id"])) for e in entries]
