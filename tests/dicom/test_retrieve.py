"""C-MOVE and C-GET: files from two partners' buckets reach real peers byte for byte, failures are counted."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import msgspec
import pytest
from dicom_fixtures import CT, MISSING_OBJECT_UID, NODE_AE, Files, Node, StoreSCP, audit_entries, load_index, run_tool, running_storescp, start_node, walk
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification
from scu import GET, MOVE, get_ae, identifier, scu
from sqlalchemy import Engine

from devtools.dicom_files import dataset_bytes
from dicom.server import DicomServer, build_services
from storage import BucketRegistry, ObjectReader
from storage.fetch import ObjectFetcher

STUDY_1 = "1.2.826.0.1.1"  # 3 series, 6 instances, partners b and c, 4 transfer syntaxes


def _instances_of(study_uid: str) -> list[str]:
    return [inst.uid for _, std, _, inst in walk() if std.uid == study_uid and not inst.deleted]


def move(node: Node, ds: Dataset, destination: str, model: str = "STUDY") -> tuple[list[Dataset], Dataset]:
    ae = scu()
    assoc = ae.associate(*node.address, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        responses = [status for status, _ in assoc.send_c_move(ds, destination, MOVE[model])]
        return responses[:-1], responses[-1]
    finally:
        assoc.release()


class PyStoreSCP:
    """pynetdicom as the C-MOVE destination PYSTORE: keeps each received data set's bytes.

    ``answer`` (the event, how many files came before) gives the status to answer with, or misbehaves.
    """

    def __init__(self, port: int, answer: Callable[[Any, int], int] | None = None, max_pdu: int = 16382) -> None:
        self.received: dict[str, bytes] = {}
        self.answer = answer
        self.ae = AE(ae_title="PYSTORE")
        self.ae.maximum_pdu_size = max_pdu
        self.ae.add_supported_context(Verification)
        for uid in {inst.sop_class for *_, inst in walk()}:
            self.ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        self.server = self.ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: Any) -> int:
        status = 0x0000 if self.answer is None else self.answer(event, len(self.received))
        self.received[event.request.AffectedSOPInstanceUID] = event.request.DataSet.getvalue()
        return status

    def stop(self) -> None:
        self.server.shutdown()


@pytest.mark.parametrize("in_memory_object_bytes", [1 << 20, 0], ids=["held in memory", "spooled to a file"])
def test_move_of_a_multi_series_study_to_storescp_arrives_byte_identical(node: Node, storescp: StoreSCP, in_memory_object_bytes: int) -> None:
    node.server.services.retriever._in_memory_bytes = in_memory_object_bytes  # dicom.in_memory_object_bytes: both sending paths
    pending, final = move(node, identifier("STUDY", StudyInstanceUID=STUDY_1), "STORESCP")
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 6 and final.NumberOfFailedSuboperations == 0
    assert [p.NumberOfRemainingSuboperations for p in pending] == [5, 4, 3, 2, 1, 0]  # progress as it goes
    received = {dcmread(path).SOPInstanceUID: path for path in storescp.files()}
    assert sorted(received) == sorted(_instances_of(STUDY_1))
    for uid, path in received.items():
        sent = node.files.data[uid]
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(sent), uid  # pixel data never re-encoded
        assert dcmread(path).file_meta.TransferSyntaxUID == dcmread(__import__('io').BytesIO(sent)).file_meta.TransferSyntaxUID


def test_move_with_dcmtk_movescu_reports_the_sub_operations(node: Node, storescp: StoreSCP, dcmtk: Path) -> None:
    out = run_tool(dcmtk, "movescu", "-S", "-aet", "MOVESCU", "-aec", NODE_AE, "-aem", "STORESCP",
                   "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={STUDY_1}", "-k", "SeriesInstanceUID=1.2.826.0.1.1.2",
                   "127.0.0.1", str(node.port), "-v")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Received Final Move Response (Success)" in out.stdout + out.stderr
    assert sorted(dcmread(p).SOPInstanceUID for p in storescp.files()) == ["1.2.826.0.1.1.2.1", "1.2.826.0.1.1.2.2"]


def test_unknown_destination_is_refused_with_a801(node: Node) -> None:
    _, final = move(node, identifier("STUDY", StudyInstanceUID=STUDY_1), "NOWHERE")
    assert final.Status == 0xA801


def test_a_missing_object_fails_its_sub_operation_and_the_rest_are_delivered(node: Node) -> None:
    store = PyStoreSCP(node.ports["PYSTORE"])
    try:
        _, final = move(node, identifier("SERIES", StudyInstanceUID="1.2.826.0.1.4", SeriesInstanceUID="1.2.826.0.1.4.1"), "PYSTORE")
    finally:
        store.stop()
    assert final.Status == 0xB000  # PS3.4 C.4.2.1.5: sub-operations complete, one or more failures
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert sorted(store.received) == ["1.2.826.0.1.4.1.1", "1.2.826.0.1.4.1.3"]
    [row] = audit_entries(node.engine, action="c-move")
    assert (row["actor"], row.outcome, row.status, row["client_addr"]) == ("TEST_SCU", "success", 0xB000, "127.0.0.1")
    assert row.detail["failed"] == 1 and row.detail["completed"] == 2 and row["query"]["SeriesInstanceUID"] == "1.2.826.0.1.4.1"
    assert row.started and len(row.disclosed["study"]) == 1 and len(row.disclosed["subject"]) == 1


def test_when_every_sub_operation_fails_the_move_fails_with_a702(sqlite_node: Node) -> None:
    store = PyStoreSCP(sqlite_node.ports["PYSTORE"])
    try:
        _, final = move(sqlite_node, identifier("IMAGE", StudyInstanceUID="1.2.826.0.1.4", SeriesInstanceUID="1.2.826.0.1.4.1", SOPInstanceUID=MISSING_OBJECT_UID), "PYSTORE")
    finally:
        store.stop()
    assert (final.Status, final.NumberOfFailedSuboperations) == (0xA702, 1)


def test_move_identifier_without_the_unique_key_is_refused(sqlite_node: Node) -> None:
    store = PyStoreSCP(sqlite_node.ports["PYSTORE"])
    try:
        _, final = move(sqlite_node, identifier("SERIES", StudyInstanceUID=STUDY_1), "PYSTORE")
    finally:
        store.stop()
    assert final.Status == 0xA900 and store.received == {}


def test_get_of_a_series_on_the_same_association(node: Node) -> None:
    received: dict[str, bytes] = {}

    def on_store(event: Any) -> int:
        received[event.request.AffectedSOPInstanceUID] = event.request.DataSet.getvalue()
        return 0x0000

    # One context per transfer syntax: files go in their stored syntax, never converted (PS3.4 C.4.3.3.1).
    ae, roles = get_ae([(CT, [ts]) for ts in ALL_TRANSFER_SYNTAXES[:4]])
    assoc = ae.associate(*node.address, ae_title=NODE_AE, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        responses = [s for s, _ in assoc.send_c_get(identifier("SERIES", StudyInstanceUID=STUDY_1, SeriesInstanceUID="1.2.826.0.1.1.1"), GET["STUDY"])]
    finally:
        assoc.release()
    final = responses[-1]
    assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, 3)
    assert sorted(received) == ["1.2.826.0.1.1.1.1", "1.2.826.0.1.1.1.2", "1.2.826.0.1.1.1.3"]
    for uid, data in received.items():
        assert data == dataset_bytes(node.files.data[uid])


def test_get_with_dcmtk_getscu(sqlite_node: Node, dcmtk: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "got"
    out_dir.mkdir()
    # getscu proposes the uncompressed syntaxes in one context per SOP class: a series stored in Explicit VR LE.
    out = run_tool(dcmtk, "getscu", "-S", "-aet", "GETSCU", "-aec", NODE_AE, "-od", str(out_dir),
                   "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={STUDY_1}", "-k", "SeriesInstanceUID=1.2.826.0.1.1.1",
                   "127.0.0.1", str(sqlite_node.port))
    assert out.returncode == 0, out.stdout + out.stderr
    got = {dcmread(p).SOPInstanceUID: p for p in out_dir.iterdir()}
    assert sorted(got) == ["1.2.826.0.1.1.1.1", "1.2.826.0.1.1.1.2", "1.2.826.0.1.1.1.3"]
    for uid, path in got.items():
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(sqlite_node.files.data[uid])


def test_cancel_stops_a_move(sqlite_node: Node) -> None:
    store = PyStoreSCP(sqlite_node.ports["PYSTORE"])
    ae = scu()
    assoc = ae.associate(*sqlite_node.address, ae_title=NODE_AE)
    try:
        responses = []
        for status, _ in assoc.send_c_move(identifier("STUDY", StudyInstanceUID=STUDY_1), "PYSTORE", MOVE["STUDY"]):
            responses.append(status)
            if status.Status == 0xFF00 and len(responses) == 1:
                assoc.send_c_cancel(1, query_model=MOVE["STUDY"])
    finally:
        assoc.release()
        store.stop()
    assert responses[-1].Status == 0xFE00
    assert len(store.received) < 6
    assert sqlite_node.server.spool is not None and sqlite_node.server.spool.files() == []  # what was fetched ahead is gone too


def test_a_retrieve_whose_requester_goes_away_leaves_no_spool_file(sqlite_node: Node) -> None:
    """The peer aborts after the first file of a C-GET: the files fetched ahead for it are deleted."""
    from devtools.waiting import eventually

    ae, roles = get_ae([(CT, [ts]) for ts in ALL_TRANSFER_SYNTAXES[:4]])
    stored: list[str] = []

    def on_store(event: Any) -> int:
        stored.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    assoc = ae.associate(*sqlite_node.address, ae_title=NODE_AE, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    for _ in assoc.send_c_get(identifier("STUDY", StudyInstanceUID=STUDY_1), GET["STUDY"]):
        if stored:
            assoc.abort()
            break
    spool = sqlite_node.server.spool
    assert spool is not None
    eventually(lambda: spool.files() == [], what="the aborted C-GET's spool files deleted")
    eventually(lambda: sqlite_node.server.services.access.open_associations() == 0, what="the aborted association ended")


# -- The C-MOVE line: the destination's socket written and read by the node itself (dicom.sending._Line) --------


@pytest.mark.parametrize("in_memory_object_bytes", [1 << 20, 0], ids=["held in memory", "spooled to a file"])
def test_files_larger_than_the_destinations_pdus_arrive_byte_identical(node: Node, in_memory_object_bytes: int) -> None:
    node.server.services.retriever._in_memory_bytes = in_memory_object_bytes
    store = PyStoreSCP(node.ports["PYSTORE"], max_pdu=4096)  # every file crosses several P-DATA-TF PDUs
    try:
        _, final = move(node, identifier("STUDY", StudyInstanceUID=STUDY_1), "PYSTORE")
    finally:
        store.stop()
    assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, 6)
    assert sorted(store.received) == sorted(_instances_of(STUDY_1))
    assert max(len(data) for data in store.received.values()) > 3 * 4096  # some files cross several PDUs
    for uid, data in store.received.items():
        assert data == dataset_bytes(node.files.data[uid]), uid


@pytest.mark.parametrize("in_memory_object_bytes", [1 << 20, 0], ids=["held in memory", "spooled to a file"])
def test_dcmtk_storescp_with_the_smallest_pdu_receives_every_file_byte_identical(
    node: Node, dcmtk: Path, tmp_path: Path, in_memory_object_bytes: int
) -> None:
    """The line's framing read by an implementation nobody here wrote: DCMTK at 4 KiB PDUs, every file in many."""
    node.server.services.retriever._in_memory_bytes = in_memory_object_bytes
    with running_storescp(dcmtk, node.ports["STORESCP"], tmp_path / "received", "--max-pdu", "4096") as store:
        _, final = move(node, identifier("STUDY", StudyInstanceUID=STUDY_1), "STORESCP")
    assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, 6)
    received = {dcmread(path).SOPInstanceUID: path for path in store.files()}
    assert sorted(received) == sorted(_instances_of(STUDY_1))
    assert max(len(node.files.data[uid]) for uid in received) > 3 * 4096  # some files cross several PDUs
    for uid, path in received.items():
        assert dataset_bytes(path.read_bytes()) == dataset_bytes(node.files.data[uid]), uid


def test_the_destinations_own_statuses_are_counted_file_by_file(node: Node) -> None:
    answers = {1: 0xB000, 3: 0xA700}  # the second file stored with a warning (coercion), the fourth refused (out of resources)
    store = PyStoreSCP(node.ports["PYSTORE"], answer=lambda event, before: answers.get(before, 0x0000))
    try:
        _, final = move(node, identifier("STUDY", StudyInstanceUID=STUDY_1), "PYSTORE")
    finally:
        store.stop()
    assert final.Status == 0xB000
    counts = (final.NumberOfCompletedSuboperations, final.NumberOfWarningSuboperations, final.NumberOfFailedSuboperations)
    assert counts == (4, 1, 1)
    [row] = audit_entries(node.engine, action="c-move")
    assert row.detail["failure_reasons"] == {"peer status 0xA700": 1}


def test_a_destination_that_aborts_mid_transfer_fails_the_rest_and_the_node_moves_on(node: Node) -> None:
    def abort_the_third(event: Any, before: int) -> int:
        if before == 2:
            event.assoc.abort()
        return 0x0000

    store = PyStoreSCP(node.ports["PYSTORE"], answer=abort_the_third)
    try:
        _, final = move(node, identifier("STUDY", StudyInstanceUID=STUDY_1), "PYSTORE")
    finally:
        store.stop()
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 4)
    [row] = audit_entries(node.engine, action="c-move")
    assert row.detail["failure_reasons"] == {"the destination aborted the association": 1, "the association to the destination has ended": 3}
    # Nothing held: the node serves the next move in full.
    store = PyStoreSCP(node.ports["PYSTORE"])
    try:
        _, final = move(node, identifier("STUDY", StudyInstanceUID=STUDY_1), "PYSTORE")
    finally:
        store.stop()
    assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, 6)


@pytest.fixture
def impatient_node(sqlite_engine: Engine, files: Files) -> Iterator[Node]:
    """A node that waits one second for a C-STORE response (dicom.network_timeout_seconds)."""
    load_index(sqlite_engine, files)
    n = start_node(sqlite_engine, files, network_timeout_seconds=1)
    yield n
    n.server.stop()


def test_a_destination_that_stops_answering_is_aborted_after_the_network_timeout(impatient_node: Node) -> None:
    def stall_the_second(event: Any, before: int) -> int:
        if before == 1:
            time.sleep(3)
        return 0x0000

    store = PyStoreSCP(impatient_node.ports["PYSTORE"], answer=stall_the_second)
    try:
        _, final = move(impatient_node, identifier("STUDY", StudyInstanceUID=STUDY_1), "PYSTORE")
    finally:
        store.stop()
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 5)
    [row] = audit_entries(impatient_node.engine, action="c-move")
    assert row.detail["failure_reasons"] == {"TimeoutError on the association to the destination": 1, "the association to the destination has ended": 4}


@pytest.fixture
def quiet_node(sqlite_engine: Engine, files: Files) -> Iterator[Node]:
    """A node at the shipped default of one pending response a second, held back far longer here."""
    load_index(sqlite_engine, files)
    n = start_node(sqlite_engine, files, pending_interval_seconds=60)
    yield n
    n.server.stop()


def test_pending_responses_come_at_most_once_per_interval_and_the_final_one_has_the_counts(quiet_node: Node) -> None:
    store = PyStoreSCP(quiet_node.ports["PYSTORE"])
    try:
        pending, final = move(quiet_node, identifier("STUDY", StudyInstanceUID=STUDY_1), "PYSTORE")
    finally:
        store.stop()
    assert [(p.Status, p.NumberOfRemainingSuboperations, p.NumberOfCompletedSuboperations) for p in pending] == [(0xFF00, 5, 1)]
    assert (final.Status, final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0x0000, 6, 0)
    assert len(store.received) == 6


def test_dcmtk_movescu_takes_a_move_with_one_pending_response_and_the_final_counts(quiet_node: Node, dcmtk: Path, tmp_path: Path) -> None:
    with running_storescp(dcmtk, quiet_node.ports["STORESCP"], tmp_path / "received") as store:
        moved = run_tool(dcmtk, "movescu", "-S", "-aet", "MOVESCU", "-aec", NODE_AE, "-aem", "STORESCP",
                         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY_1}", "127.0.0.1", str(quiet_node.port), "-v")
    text = moved.stdout + moved.stderr
    assert moved.returncode == 0, text
    assert text.count("(Pending)") == 1 and "Received Final Move Response (Success)" in text, text
    assert len(store.files()) == 6


def test_a_c_get_holds_back_its_pending_responses_too(quiet_node: Node) -> None:
    ae, roles = get_ae([(CT, [ts]) for ts in ALL_TRANSFER_SYNTAXES[:4]])
    assoc = ae.associate(*quiet_node.address, ae_title=NODE_AE, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        responses = [s for s, _ in assoc.send_c_get(identifier("SERIES", StudyInstanceUID=STUDY_1, SeriesInstanceUID="1.2.826.0.1.1.1"), GET["STUDY"])]
    finally:
        assoc.release()
    assert [r.Status for r in responses] == [0xFF00, 0x0000]
    assert responses[-1].NumberOfCompletedSuboperations == 3


# -- Faults on the fetch path, end to end: a failed sub-operation each, and the rest go ---------------------------


class FaultyFront(ThreadingHTTPServer):
    """An HTTP front on 127.0.0.1 for a bucket's S3 (moto): GETs pass through, but ``faults[key]`` spoils that
    object's answer: ``"reset"`` sends half the body and resets the connection, ``"checksum"`` sends the body
    with a CRC32 and ETag that are not its own."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _FrontHandler)
        self.upstream = upstream.removeprefix("http://")
        self.faults: dict[str, str] = {}

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # the connections reset on purpose

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultyFront

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=10)
        upstream.request("GET", self.path, headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        answer = upstream.getresponse()
        body = answer.read()
        upstream.close()
        fault = self.server.faults.get(unquote(self.path).rsplit("/", 1)[-1].removesuffix(".dcm"))
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() in ("connection", "transfer-encoding", "content-length", "date", "server"):
                continue
            if fault == "checksum" and name.lower() in ("etag", "x-amz-checksum-crc32"):
                value = '"' + "0" * 32 + '"' if name.lower() == "etag" else "AAAAAA=="
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "reset":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def faulty_node(sqlite_engine: Engine, files: Files) -> Iterator[tuple[Node, FaultyFront]]:
    """A node whose partner-b bucket is reached through a FaultyFront (the index and files as everywhere here)."""
    load_index(sqlite_engine, files)
    front = FaultyFront(files.s3.endpoint_url)
    thread = threading.Thread(target=front.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    bucket = files.bucket("b")
    config = msgspec.structs.replace(files.s3.config, buckets={
        name: msgspec.structs.replace(cfg, endpoint_url=front.url) if name == bucket else cfg for name, cfg in files.s3.config.buckets.items()
    })
    template = start_node(sqlite_engine, files)  # its DICOM configuration and destination ports
    template.server.stop()
    registry = BucketRegistry(config, environ=files.s3.environ)
    services = build_services(template.config, sqlite_engine, ObjectReader(registry, fetcher=ObjectFetcher(registry, backoff_seconds=0.001)))
    server = DicomServer(template.config, services)
    port = server.start()
    yield Node(server, port, sqlite_engine, template.config, files, template.ports), front
    server.stop()
    front.shutdown()
    front.server_close()


def test_a_body_cut_by_a_reset_or_failing_its_checksum_fails_that_file_alone(faulty_node: tuple[Node, FaultyFront]) -> None:
    node, front = faulty_node
    front.faults = {"1.2.826.0.1.1.1.1": "reset", "1.2.826.0.1.1.1.2": "checksum"}  # partner b's, each its only copy
    store = PyStoreSCP(node.ports["PYSTORE"])
    try:
        _, final = move(node, identifier("STUDY", StudyInstanceUID=STUDY_1), "PYSTORE")
    finally:
        store.stop()
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (4, 2)
    assert sorted(store.received) == sorted(set(_instances_of(STUDY_1)) - set(front.faults))
    for uid, data in store.received.items():
        assert data == dataset_bytes(node.files.data[uid]), uid
    [row] = audit_entries(node.engine, action="c-move")
    assert row.detail["failure_reasons"] == {"file storage": 1, "file object_corrupt": 1}
