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

Each association that sends sub-operations gets this adapter once:
``use_stored_encoding(assoc)`` (the C-MOVE association in
``QueryRetrieveAE.associate``, the requester's own association in the C-GET
handler).
"""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pynetdicom import _config
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset

from dicom.retrieve import EncodedInstance

# pynetdicom's documented switch (pynetdicom._config): send a file path's dataset without decoding it.
_config.STORE_SEND_CHUNKED_DATASET = True


class SubOperationFailed(Exception):
    """Raised inside pynetdicom's loop: it counts the sub-operation as failed and lists its UID."""


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


def _file_meta(data: bytes) -> tuple[Dataset, int]:
    """The File Meta Information of a Part 10 file held in memory, and where its data set starts (as pynetdicom's
    ``split_dataset`` does for a path)."""
    fp = BytesIO(data)
    read_preamble(fp, False)
    meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, vr, length: tag.group != 2)
    return meta, fp.tell()


def _send(assoc: Any, item: EncodedInstance, msg_id: int, priority: int, originator_aet: str | None, originator_id: int | None) -> Dataset:
    """pynetdicom's ``send_c_store`` for a stored file (in memory or spooled), the reactor already held or serving
    us: the bytes after the File Meta Information go out as they are, in the file's own transfer syntax (no
    conversion, PS3.4 C.4.2.3.1)."""
    request = C_STORE()
    if item._data is not None:
        file_meta, offset = _file_meta(item._data)
        request.DataSet = BytesIO(item._data[offset:])
    else:
        assert item._path is not None
        file_meta, offset = split_dataset(Path(item._path))
        request._dataset_path = (Path(item._path), offset)
    request.MessageID = msg_id
    request.Priority = priority
    request.MoveOriginatorApplicationEntityTitle = originator_aet
    request.MoveOriginatorMessageID = originator_id
    request.AffectedSOPClassUID = file_meta.MediaStorageSOPClassUID
    request.AffectedSOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    context = assoc._get_valid_context(file_meta.MediaStorageSOPClassUID, file_meta.TransferSyntaxUID, "scu", allow_conversion=False)
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

    def send_c_store(dataset: Any, msg_id: int = 1, priority: int = 2, originator_aet: str | None = None, originator_id: int | None = None) -> Dataset:
        if not isinstance(dataset, EncodedInstance):
            passed_on: Dataset = original(dataset, msg_id, priority, originator_aet, originator_id)
            return passed_on
        tally, uid = dataset._tally, dataset.SOPInstanceUID
        try:
            if dataset._path is None and dataset._data is None:
                tally.record(None, 0, uid, dataset._error)
                raise SubOperationFailed(dataset._error or "not fetched")
            try:
                if assoc.is_requestor:  # C-MOVE: our association to the destination, ours alone while it sends
                    _hold_reactor(assoc)
                # C-GET: the requester's association; we run inside its reactor, which pynetdicom marks paused
                status = _send(assoc, dataset, msg_id, priority, originator_aet, originator_id)
            except ValueError:  # pynetdicom: no accepted context with the file's own transfer syntax
                tally.record(None, 0, uid, "no accepted presentation context for its SOP class and transfer syntax")
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
