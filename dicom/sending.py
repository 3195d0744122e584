"""Sending stored files as they are: the C-STORE sub-operations of C-MOVE and C-GET.

pynetdicom's retrieve loop hands each yielded Dataset to the association's
``send_c_store``, which would encode it again. For an :class:`EncodedInstance`
we pass the spool file's path instead, and with pynetdicom's
``STORE_SEND_CHUNKED_DATASET`` the bytes after the File Meta Information go to
the peer as stored, in PDU-sized chunks read from disk: the pixel data is never
decoded, converted or held in memory. That needs an accepted presentation
context with exactly the file's transfer syntax; without one the sub-operation
fails (PS3.4 C.4.2.3.1: no conversion is promised).

Each association that sends sub-operations gets this adapter once:
``use_stored_encoding(assoc)`` (the C-MOVE association in
``QueryRetrieveAE.associate``, the requester's own association in the C-GET
handler).
"""

from __future__ import annotations

import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import _config

from dicom.retrieve import EncodedInstance

# pynetdicom's documented switch (pynetdicom._config): send a file path's dataset without decoding it.
_config.STORE_SEND_CHUNKED_DATASET = True


class SubOperationFailed(Exception):
    """Raised inside pynetdicom's loop: it counts the sub-operation as failed and lists its UID."""


def _wait_for_reactor(assoc: Any, timeout: float = 2.0) -> None:
    """Let the association's reactor leave the pause of the previous C-STORE first.

    pynetdicom's ``send_c_store`` pauses the reactor, sends, waits for the
    response, resumes the reactor. Called again at once (we always have the
    next file ready), it may see the reactor still flagged as paused from the
    last call, go ahead, and the waking reactor then takes the C-STORE response
    as an "unexpected C-STORE service message": the sub-operation hangs until
    the DIMSE timeout. Only for associations we requested (C-MOVE): on a C-GET
    we run inside the reactor thread itself.
    """
    deadline = time.monotonic() + timeout
    while getattr(assoc, "_is_paused", False) and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.0001)


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
            if dataset._path is None:
                tally.record(None, 0, uid, dataset._error)
                raise SubOperationFailed(dataset._error or "not fetched")
            if assoc.is_requestor:
                _wait_for_reactor(assoc)
            try:
                status: Dataset = original(dataset._path, msg_id, priority, originator_aet, originator_id)
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
