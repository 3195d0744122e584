"""A DICOM node killed mid-operation (SIGKILL: no handler runs) leaves a ``started`` audit entry naming whose data
had left, and the spool files of its C-MOVE are swept when it starts again. The node runs as in production,
``python -m app serve dicom`` in a process of its own, over the test's database and embedded S3."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from dicom_fixtures import NODE_AE, Audited, Files, audit_entries, free_port, load_index, walk
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification
from scu import FIND, MOVE, identifier
from sqlalchemy import Engine, insert

from devtools.waiting import eventually, port_open
from imaging_sync.config import DatabaseConfig, DicomConfig, DicomDestination, DicomPeer, LoggingConfig, Settings
from imaging_sync.config_toml import dumps
from imaging_sync.db.models import Study, Subject
from imaging_sync.ids import new_id

REPO = Path(__file__).resolve().parents[2]
BULK_STUDIES = 20_000  # far more matches than a peer that stopped reading can hold in its socket buffers


@dataclass
class NodeProcess:
    """``serve dicom`` as a child process: start, SIGKILL, start again with the same settings."""

    config: Path
    environ: dict[str, str]
    port: int
    store_port: int  # the C-MOVE destination PYSTORE
    spool: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "app", "serve", "dicom"], cwd=REPO, env=self.environ, stdout=log, stderr=log)
        eventually(lambda: self.process is not None and (self.process.poll() is not None or port_open(self.port)), timeout=60, what="the node listening")
        assert self.process.poll() is None, self.log.read_text()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def spool_files(self) -> list[str]:
        folder = self.spool / f"imaging-sync-dicom-{self.port}"
        return sorted(p.name for p in folder.iterdir() if p.name.startswith("isync-")) if folder.is_dir() else []


@pytest.fixture
def node_process(engine: Engine, db_url: str, files: Files, tmp_path: Path) -> Iterator[NodeProcess]:
    """The node's settings as a file: this test's database and buckets, TEST_SCU allowed everything, PYSTORE a destination."""
    load_index(engine, files)
    port, store_port = free_port(), free_port()
    spool = tmp_path / "spool"
    spool.mkdir()
    settings = Settings(
        database=DatabaseConfig(url=db_url), logging=LoggingConfig(level="INFO"), storage=files.s3.config,
        dicom=DicomConfig(
            ae_title=NODE_AE, host="127.0.0.1", port=port, spool_dir=str(spool), fetch_concurrency=3, idle_timeout_seconds=120,
            in_memory_object_bytes=0,  # every object spooled: what a kill leaves behind
            peers={"TEST_SCU": DicomPeer(operations=["echo", "find", "move"], addresses=["127.0.0.1"])},
            destinations={"PYSTORE": DicomDestination(host="127.0.0.1", port=store_port)},
        ),
    )
    data = msgspec.to_builtins(settings)
    data.pop("source", None)
    config = tmp_path / "node.toml"
    config.write_text(dumps(data), encoding="utf-8")
    environ = {**os.environ, **files.s3.environ, "IMAGING_SYNC_CONFIG": str(config)}
    environ.pop("IMAGING_SYNC__DATABASE__URL", None)
    node = NodeProcess(config, environ, port, store_port, spool, tmp_path / "node.log")
    node.start()
    yield node
    node.stop()


def _bulk_studies(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    subject_id = new_id()
    with engine.begin() as conn:
        conn.execute(insert(Subject.__table__), [{"id": subject_id, "source_partner": "b", "source_priority": 0, "issuer": "", "patient_id": "BULK",
                                                  "patient_name": "BULK^PATIENT", "patient_name_search": "bulk^patient", "created_at": now, "updated_at": now}])
        conn.execute(insert(Study.__table__), [
            {"id": new_id(), "source_partner": "b", "source_priority": 0, "study_instance_uid": f"1.2.826.0.9.{i}", "subject_id": subject_id,
             "study_date": dt.date(2020, 1, 1), "description": "BULK STUDY WITH A DESCRIPTION OF SOME LENGTH", "created_at": now, "updated_at": now}
            for i in range(BULK_STUDIES)
        ])


def _running(engine: Engine, action: str) -> Audited | None:
    """The operation's entry once it is written and not completed: the node is in the middle of it."""
    entries = audit_entries(engine, action=action)
    return entries[0] if entries and entries[0].started and entries[0]["completion"] is None else None


def test_a_node_killed_mid_c_find_leaves_a_started_entry_naming_what_had_left(engine: Engine, node_process: NodeProcess) -> None:
    _bulk_studies(engine)
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(FIND["STUDY"])
    assoc = ae.associate("127.0.0.1", node_process.port, ae_title=NODE_AE)
    assert assoc.is_established
    # A peer that reads the first match and then nothing more: the node waits on it, mid-C-FIND.
    assoc.dul.socket.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    responses = assoc.send_c_find(identifier("STUDY", PatientID="BULK", StudyInstanceUID="", StudyDescription=""), FIND["STUDY"])
    status, _ = next(responses)
    assert status.Status == 0xFF00
    assoc.dul.kill_dul()
    running = eventually(lambda: _running(engine, "c-find"), what="the C-FIND's started entry, not completed")
    node_process.kill()

    [entry] = audit_entries(engine, action="c-find")
    assert entry["id"] == running["id"] and entry.started and entry["completion"] is None  # the kill left the trace
    assert entry["actor"] == "TEST_SCU" and entry["query"]["PatientID"] == "BULK"
    assert len(entry.disclosed["subject"]) == 1 and len(entry.disclosed["study"]) >= 1


class BlockingStore:
    """A C-MOVE destination that takes the first file and then holds the node's C-STORE until released."""

    def __init__(self, port: int) -> None:
        self.first = threading.Event()
        self.release = threading.Event()
        self.ae = AE(ae_title="PYSTORE")
        self.ae.add_supported_context(Verification)
        for uid in {inst.sop_class for *_, inst in walk()}:
            self.ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        self.server = self.ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: Any) -> int:
        self.first.set()
        self.release.wait(timeout=120)
        return 0x0000

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()


def test_a_node_killed_mid_c_move_leaves_a_started_entry_and_its_spool_is_swept_at_restart(engine: Engine, node_process: NodeProcess) -> None:
    destination = BlockingStore(node_process.store_port)
    study_1 = "1.2.826.0.1.1"  # 6 instances
    mover: Any = None
    try:
        ae = AE(ae_title="TEST_SCU")
        ae.add_requested_context(MOVE["STUDY"])
        mover = ae.associate("127.0.0.1", node_process.port, ae_title=NODE_AE)
        assert mover.is_established
        thread = threading.Thread(target=lambda: list(mover.send_c_move(identifier("STUDY", StudyInstanceUID=study_1), "PYSTORE", MOVE["STUDY"])), daemon=True)
        thread.start()
        assert destination.first.wait(timeout=60), node_process.log.read_text()
        eventually(lambda: _running(engine, "c-move"), what="the C-MOVE's started entry, not completed")
        spooled = eventually(node_process.spool_files, what="spool files of the running C-MOVE")
        node_process.kill()
    finally:
        destination.stop()
        if mover is not None:
            mover.abort()

    [entry] = audit_entries(engine, action="c-move")
    assert entry.started and entry["completion"] is None and entry["query"]["StudyInstanceUID"] == study_1
    assert len(entry.disclosed["study"]) == 1 and len(entry.disclosed["subject"]) == 1
    assert node_process.spool_files() == spooled  # the kill left them

    node_process.start()
    assert node_process.spool_files() == []  # swept before the node listened again
    assert "swept" in node_process.log.read_text()
