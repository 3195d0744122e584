"""Sending stored files as they are: the C-STORE sub-operations of C-MOVE and C-GET.

pynetdicom's retrieve loop hands each yielded Dataset to the association's
``send_c_store``, which would encode it again. An :class:`EncodedInstance` is
sent as stored instead: the bytes after the File Meta Information go to the
peer as they are, in PDU-sized fragments, from memory (a small object) or
read from its spool file (pynetdicom's ``STORE_SEND_CHUNKED_DATASET`` path):
the pixel data is never decoded, converted or, for a large object, held in
memory. That needs an accepted presentation context with exactly the file's
transfer syntax; without one the sub-operation fails (PS3.4 C.4.2.3.1: no
conversion is promised).

On the association a C-MOVE opens to its destination, the C-STOREs do not go
through pynetdicom's DUL and DIMSE threads either (:class:`_Line`): once the
association is established its DUL thread is parked off the socket
(``dicom.reactors.park_dul``) and the handler's thread writes each message's
PDUs to the socket itself, the data set's fragments straight from where they
lie, and reads the C-STORE response itself (``dicom.commands`` frames and
parses both). Each file used to cross three threads and be decoded by
pydicom on its way back; that was most of the node's CPU per moved instance.
Negotiation, release and abort stay pynetdicom's: the DUL gets the socket
back first. Anything unexpected on the line (a timeout, the peer aborting
or closing, a PDU that is not the response) fails that sub-operation and
aborts the association, as pynetdicom does; the rest then fail with the
reason, and the requester gets its final response.

Each association that sends sub-operations gets this adapter once:
``use_stored_encoding(assoc)`` (the C-MOVE association in
``QueryRetrieveAE.associate``, the requester's own association in the C-GET
handler).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pynetdicom import _config
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset

from dicom import commands
from dicom.reactors import park_dul, unpark_dul
from dicom.retrieve import EncodedInstance

# pynetdicom's documented switch (pynetdicom._config): send a file path's dataset without decoding it.
_config.STORE_SEND_CHUNKED_DATASET = True


class SubOperationFailed(Exception):
    """Raised inside pynetdicom's loop: it counts the sub-operation as failed and lists its UID."""


class StoreStatus:
    """What pynetdicom's retrieve loop reads of a C-STORE's outcome (``.Status``), without a pydicom Dataset per file."""

    __slots__ = ("Status",)

    def __init__(self, status: int) -> None:
        self.Status = status

    def get(self, name: str, default: Any = None) -> Any:
        return self.Status if name == "Status" else default


class LineBroken(Exception):
    """The destination association's line failed under :class:`_Line`: the association is aborted."""


PARK_SECONDS = 2.0  # how long the DUL may take to reach its idle wait before we send through it instead
MAX_RESPONSE_PDU = 65536  # a C-STORE-RSP is a command set of some hundred bytes: a longer PDU is not one
IOV_MAX = 1024  # buffers one sendmsg may take (Linux)


class _Line:
    """The socket of a C-MOVE's association to its destination, written and read here while its DUL is parked."""

    def __init__(self, assoc: Any, sock: socket.socket) -> None:
        self._assoc = assoc
        self._sock = sock
        self._timeout = sock.gettimeout()
        sock.settimeout(assoc.dimse_timeout)  # the peer's answer, as pynetdicom waits for it (None: no limit)
        self._buffer = bytearray()
        self._contexts: dict[tuple[str, str], int] = {}  # (SOP class, transfer syntax) -> accepted context ID

    def context_id(self, sop_class_uid: str, transfer_syntax_uid: str) -> int:
        """The accepted context for the file as stored (pynetdicom's lookup, once per pair: it builds UIDs each time)."""
        key = (sop_class_uid, transfer_syntax_uid)
        found = self._contexts.get(key)
        if found is None:
            found = self._contexts[key] = self._assoc._get_valid_context(sop_class_uid, transfer_syntax_uid, "scu", allow_conversion=False).context_id
        return found

    def store(self, context_id: int, command: bytes, data: memoryview | None, path: Path | None, offset: int, msg_id: int) -> int:
        """Send one C-STORE-RQ with its data set (from memory, or from ``path`` at ``offset``); the response's Status."""
        max_pdu = self._assoc.acceptor.maximum_length
        if data is not None:
            buffers: list[bytes | memoryview] = []
            for head, start, end in commands.wire_pdus(context_id, command, len(data), max_pdu):
                buffers += [head, data[start:end]] if end > start else [head]
            self._send(buffers)
        else:
            assert path is not None
            with open(path, "rb") as source:
                size = os.fstat(source.fileno()).st_size - offset
                source.seek(offset)
                for head, start, end in commands.wire_pdus(context_id, command, size, max_pdu):
                    chunk = source.read(end - start)
                    if len(chunk) != end - start:  # part of the message is out: only an abort ends it cleanly
                        raise LineBroken("the spool file is shorter than it was")
                    self._send([head, chunk])
        return self._response(msg_id)

    def _send(self, buffers: list[bytes | memoryview]) -> None:
        views = [memoryview(b) for b in buffers if len(b)]
        first = 0
        while first < len(views):
            sent = self._sock.sendmsg(views[first:first + IOV_MAX])
            while sent:
                if sent >= len(views[first]):
                    sent -= len(views[first])
                    first += 1
                else:
                    views[first] = views[first][sent:]
                    sent = 0

    def _response(self, msg_id: int) -> int:
        command = bytearray()
        while True:
            pdu_type, length = commands.parse_pdu_header(self._read(6))
            if pdu_type == commands.A_ABORT:
                raise LineBroken("the destination aborted the association")
            if pdu_type != commands.P_DATA_TF or length > MAX_RESPONSE_PDU:
                raise LineBroken(f"the destination sent PDU type 0x{pdu_type:02X} ({length} bytes) instead of a C-STORE response")
            for _, control, fragment in commands.pdv_items(self._read(length)):
                if not control & 0x01:
                    raise LineBroken("the destination sent a data set with its C-STORE response")
                command += fragment
                if control & 0x02:
                    responding_to, status = commands.store_response(bytes(command))
                    if responding_to != msg_id:
                        raise LineBroken(f"a C-STORE response to message {responding_to}, not {msg_id}")
                    return status

    def _read(self, n: int) -> bytes:
        """Exactly ``n`` bytes: never past the response, whatever follows it is the DUL's to read."""
        buffer = self._buffer
        while len(buffer) < n:
            chunk = self._sock.recv(n - len(buffer))
            if not chunk:
                raise LineBroken("the destination closed the connection")
            buffer += chunk
        data = bytes(buffer[:n])
        del buffer[:n]
        return data

    def give_back(self, send_abort: bool = False) -> None:
        """Hand the socket back to the DUL (after an A-ABORT-RQ of ours, if the line broke)."""
        if send_abort:
            with contextlib.suppress(OSError):  # a connection the peer already closed: the DUL finds out next
                self._sock.sendall(commands.ABORT_PDU)
        with contextlib.suppress(OSError):
            self._sock.settimeout(self._timeout)
        unpark_dul(self._assoc)


def _line(assoc: Any) -> _Line | None:
    """The association's line, parked on first use; None where pynetdicom sends instead (TLS, the DUL not idle)."""
    line: _Line | None = getattr(assoc, "_line", None)
    if line is not None or getattr(assoc, "_line_refused", False):
        return line
    sock = getattr(assoc.dul.socket, "socket", None)
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket) or not park_dul(assoc, PARK_SECONDS):
        assoc._line_refused = True
        return None
    line = assoc._line = _Line(assoc, sock)
    return line


def _give_back_line(assoc: Any, *, broken: bool = False) -> None:
    line: _Line | None = getattr(assoc, "_line", None)
    if line is not None:
        assoc._line = None
        assoc._line_refused = True  # never parked again: the rest go through pynetdicom (or fail, aborted)
        line.give_back(send_abort=broken)


def _hold_reactor(assoc: Any) -> None:
    """Keep the C-MOVE association's own reactor paused for the whole transfer (pynetdicom's release() resumes it).

    pynetdicom's ``send_c_store`` pauses the association's reactor for each
    C-STORE and resumes it after the response; the reactor then sleeps 1 ms
    before it pauses again, and the next C-STORE waited for that: up to 1 ms
    per file, and a race (a response read by the waking reactor as an
    "unexpected C-STORE service message" hung the sub-operation until the
    DIMSE timeout). Paused once, it stays paused until the association is
    released or aborted (``Association.release``/``kill`` set its checkpoint).
    """
    if getattr(assoc, "_held_for_sending", False):
        return
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + 2.0
    while not assoc._is_paused and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.0001)
    assoc._held_for_sending = True


_LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


@dataclass(frozen=True, slots=True)
class FileMeta:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    offset: int  # where the data set starts


def file_meta(data: bytes) -> FileMeta:
    """The three File Meta elements a C-STORE needs from a Part 10 file in memory, read in one pass (PS3.10 7.1:
    128-byte preamble, "DICM", group 0002 in Explicit VR Little Endian); pydicom reads it when anything is unusual."""
    values: dict[int, str] = {}
    offset = 132
    if data[128:132] == b"DICM":
        while offset + 8 <= len(data):
            group, element = struct.unpack_from("<HH", data, offset)
            if group != 0x0002:
                break
            vr = data[offset + 4:offset + 6]
            if vr in _LONG_LENGTH_VRS:
                (length,) = struct.unpack_from("<I", data, offset + 8)
                start = offset + 12
            else:
                (length,) = struct.unpack_from("<H", data, offset + 6)
                start = offset + 8
            if element in (0x0002, 0x0003, 0x0010):
                values[element] = data[start:start + length].rstrip(b"\x00 ").decode("ascii")
            offset = start + length
    if len(values) == 3:
        return FileMeta(values[0x0002], values[0x0003], values[0x0010], offset)
    fp = BytesIO(data)
    read_preamble(fp, False)
    meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, vr, length: tag.group != 2)
    return FileMeta(str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID), fp.tell())


def _send_on_line(line: _Line, assoc: Any, item: EncodedInstance, msg_id: int, priority: int, originator_aet: str | None,
                  originator_id: int | None) -> int:
    """A stored file (in memory or spooled) as one C-STORE on the line; the Status of the response."""
    if item._data is not None:
        meta = file_meta(item._data)
        data: memoryview | None = memoryview(item._data)[meta.offset:]
        path, offset = None, 0
    else:
        assert item._path is not None
        spooled, offset = split_dataset(Path(item._path))
        meta = FileMeta(spooled.MediaStorageSOPClassUID, spooled.MediaStorageSOPInstanceUID, spooled.TransferSyntaxUID, offset)
        data, path = None, Path(item._path)
    context_id = line.context_id(meta.sop_class_uid, meta.transfer_syntax_uid)
    command = commands.store_request(meta.sop_class_uid, meta.sop_instance_uid, msg_id, priority, originator_aet, originator_id)
    try:
        return line.store(context_id, command, data, path, offset, msg_id)
    except (OSError, ValueError, LineBroken) as exc:  # socket.timeout is an OSError; ValueError: a response we cannot parse
        _give_back_line(assoc, broken=True)
        assoc.abort()
        raise LineBroken(str(exc) if isinstance(exc, LineBroken) else f"{type(exc).__name__} on the association to the destination") from exc


def _send(assoc: Any, item: EncodedInstance, msg_id: int, priority: int, originator_aet: str | None, originator_id: int | None) -> Dataset:
    """pynetdicom's ``send_c_store`` for a stored file (in memory or spooled), the reactor already held or serving
    us: the bytes after the File Meta Information go out as they are, in the file's own transfer syntax (no
    conversion, PS3.4 C.4.2.3.1). A file in memory goes as dicom.commands encodes it; a spooled one through
    pynetdicom's chunked path, read from disk."""
    if item._data is not None:
        meta = file_meta(item._data)
        context = assoc._get_valid_context(meta.sop_class_uid, meta.transfer_syntax_uid, "scu", allow_conversion=False)
        command = commands.store_request(meta.sop_class_uid, meta.sop_instance_uid, msg_id, priority, originator_aet, originator_id)
        data = memoryview(item._data)[meta.offset:]
        for pdata in commands.p_data(context.context_id, command, data, assoc.dimse.maximum_pdu_size):
            assoc.dul.send_pdu(pdata)
    else:
        assert item._path is not None
        spooled, offset = split_dataset(Path(item._path))
        request = C_STORE()
        request._dataset_path = (Path(item._path), offset)
        request.MessageID = msg_id
        request.Priority = priority
        request.MoveOriginatorApplicationEntityTitle = originator_aet
        request.MoveOriginatorMessageID = originator_id
        request.AffectedSOPClassUID = spooled.MediaStorageSOPClassUID
        request.AffectedSOPInstanceUID = spooled.MediaStorageSOPInstanceUID
        context = assoc._get_valid_context(spooled.MediaStorageSOPClassUID, spooled.TransferSyntaxUID, "scu", allow_conversion=False)
        assoc.dimse.send_msg(request, context.context_id)
    _, response = assoc.dimse.get_msg(block=True)
    if response is None:  # the DIMSE timeout: pynetdicom aborts the association
        assoc._handle_no_response()
        return Dataset()
    status: Dataset = assoc._check_received_status(response)
    return status


def use_stored_encoding(assoc: Any) -> None:
    """Make ``assoc.send_c_store`` send an EncodedInstance's stored bytes and record the outcome."""
    if getattr(assoc, "_sends_stored_encoding", False):
        return
    original = assoc.send_c_store
    if assoc.is_requestor:  # the line (if any) goes back to the DUL before pynetdicom releases or aborts
        original_release, original_abort = assoc.release, assoc.abort

        def release() -> None:
            _give_back_line(assoc)
            original_release()

        def abort() -> None:
            _give_back_line(assoc)
            original_abort()

        assoc.release, assoc.abort = release, abort

    def send_c_store(
        dataset: Any, msg_id: int = 1, priority: int = 2, originator_aet: str | None = None, originator_id: int | None = None
    ) -> Dataset | StoreStatus:
        if not isinstance(dataset, EncodedInstance):
            passed_on: Dataset = original(dataset, msg_id, priority, originator_aet, originator_id)
            return passed_on
        tally, uid = dataset._tally, dataset.SOPInstanceUID
        try:
            if dataset._path is None and dataset._data is None:
                tally.record(None, 0, uid, dataset._error)
                raise SubOperationFailed(dataset._error or "not fetched")
            if not assoc.is_established:
                tally.record(None, 0, uid, "the association to the destination has ended")
                raise SubOperationFailed("the association to the destination has ended")
            try:
                line = None
                status: Dataset | StoreStatus
                if assoc.is_requestor:  # C-MOVE: our association to the destination, ours alone while it sends
                    _hold_reactor(assoc)
                    line = _line(assoc)
                if line is not None:
                    status = StoreStatus(_send_on_line(line, assoc, dataset, msg_id, priority, originator_aet, originator_id))
                else:  # C-GET: the requester's association; we run inside its reactor, which pynetdicom marks paused
                    status = _send(assoc, dataset, msg_id, priority, originator_aet, originator_id)
            except ValueError:  # pynetdicom: no accepted context with the file's own transfer syntax
                tally.record(None, 0, uid, "no accepted presentation context for its SOP class and transfer syntax")
                raise
            except LineBroken as exc:
                tally.record(None, 0, uid, str(exc))
                raise
            except Exception as exc:
                tally.record(None, 0, uid, f"send failed ({type(exc).__name__})")
                raise
            tally.record(status.get("Status"), dataset._size, uid)
            return status
        finally:
            dataset.release()

    assoc.send_c_store = send_c_store
    assoc._sends_stored_encoding = True
