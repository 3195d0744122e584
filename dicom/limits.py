"""Limits a hostile peer cannot exceed, enforced as the bytes arrive, before pynetdicom keeps them.

pynetdicom reads a whole PDU into memory whatever length its header claims,
and appends every fragment of a DIMSE message until the last one: a 48 MiB
identifier was accepted and kept 130 MB of memory. Here:

- **PDU length** (PS3.8 9.3.1, 9.3.5): a P-DATA-TF PDU longer than the maximum
  length we announced (``dicom.max_pdu_bytes``), or any other PDU longer than
  :data:`MAX_CONTROL_PDU_BYTES`, is not read: the peer gets an A-ABORT (source
  DICOM UL service-provider, reason invalid-PDU-parameter value, PS3.8 Table
  9-26) and the connection is closed.
- **Request size**: once the fragments of one request's data set pass
  ``dicom.max_identifier_bytes`` they are dropped as they come, the request is
  marked, and when it is complete its handler refuses it (A700 for C-FIND, A701
  for C-MOVE/C-GET, out of resources) without decoding it. Memory stays within
  the limit plus one PDU. A command set that large is no DICOM: A-ABORT.
- **Arrival time**: a request must arrive in full (command and identifier)
  within ``dicom.idle_timeout_seconds`` of its first PDU, so a peer dripping a
  byte at a time cannot hold an association open; after that the next PDU
  aborts the association. A peer that sends nothing at all is aborted by the
  idle timeout (pynetdicom's network timeout, set in dicom.server).

Every refusal is audited by the caller's ``refused`` callback (dicom.handlers).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF

from dicom.session import session
from imaging_sync.config import DicomConfig

log = logging.getLogger("dicom.associations")

# A-ASSOCIATE-RQ/AC/RJ, A-RELEASE, A-ABORT: even a requestor proposing the 128 contexts an association
# may carry, each with many transfer syntaxes and a role selection, stays well below this.
MAX_CONTROL_PDU_BYTES = 256 * 1024
# Peers that count a header or two into the PDU length are not cut off for it.
PDU_SLACK_BYTES = 1024
P_DATA_TF_TYPE = 0x04
# A-ABORT (PS3.8 Table 9-26): source 2 = DICOM UL service-provider, reason 6 = invalid-PDU-parameter value.
ABORT_SOURCE_PROVIDER, ABORT_INVALID_PDU_PARAMETER = 0x02, 0x06
# The DUL's event for "invalid PDU received" (PS3.8 Table 9-10, Evt19): its state machine answers with
# A-ABORT and closes the connection (action AA-8), the standard's answer to a peer breaking the protocol.
EVT_INVALID_PDU = "Evt19"

Refused = Callable[[Any, str, dict[str, Any]], None]  # (association, reason, detail)


@dataclass(frozen=True)
class Limits:
    max_pdu: int  # 0: unlimited (then bounded by the identifier limit)
    max_identifier: int
    max_values: int
    request_seconds: float

    @classmethod
    def of(cls, config: DicomConfig) -> Limits:
        return cls(config.max_pdu_bytes, config.max_identifier_bytes, config.max_values_per_key, config.idle_timeout_seconds)

    def pdu_limit(self, pdu_type: int) -> int:
        if pdu_type == P_DATA_TF_TYPE:
            return (self.max_pdu or self.max_identifier + MAX_CONTROL_PDU_BYTES) + PDU_SLACK_BYTES
        return MAX_CONTROL_PDU_BYTES


class _BoundedReads:
    """Stands in for an AssociationSocket's ``recv``: reads a PDU's body only when its header's length is within the limit.

    pynetdicom's DUL reads each PDU as ``recv(6)`` (type, reserved, length) then
    ``recv(length)``. A header over the limit gets an A-ABORT written to the
    peer and an empty read, which the DUL takes as the connection closing.
    """

    def __init__(self, sock: Any, limits: Limits, refused: Refused) -> None:
        self._sock = sock
        self._recv = sock.recv
        self._limits = limits
        self._refused = refused

    def __call__(self, nr_bytes: int) -> bytearray:
        data: bytearray = self._recv(nr_bytes)  # AssociationSocket.recv (sock is untyped here)
        if nr_bytes != 6 or len(data) != 6:
            return data
        pdu_type, _, length = struct.unpack(">BBL", bytes(data))
        limit = self._limits.pdu_limit(pdu_type)
        if length <= limit:
            return data
        assoc = self._sock.assoc
        log.warning("association %s aborted: PDU of type 0x%02X claims %d bytes, more than the %d accepted", session(assoc).id, pdu_type, length, limit)
        abort = A_ABORT_RQ()
        abort.source, abort.reason_diagnostic = ABORT_SOURCE_PROVIDER, ABORT_INVALID_PDU_PARAMETER
        try:
            self._sock.send(abort.encode())
        except Exception:  # the peer may be gone already; the connection closes either way
            log.debug("A-ABORT not sent (association %s)", session(assoc).id)
        self._refused(assoc, "pdu_too_long", {"pdu_type": pdu_type, "pdu_length": length, "limit": limit})
        return bytearray()


def guard_reads(assoc: Any, limits: Limits, refused: Refused) -> None:
    """Bound every PDU this association reads (EVT_CONN_OPEN: before its first byte is read)."""
    sock = getattr(assoc.dul, "socket", None)
    if sock is not None and not isinstance(sock.recv, _BoundedReads):
        sock.recv = _BoundedReads(sock, limits, refused)


def watch_request(assoc: Any, pdu: Any, limits: Limits, refused: Refused) -> None:
    """EVT_PDU_RECV (in the DUL thread, before the PDU joins its message): request size and arrival time.

    ``assoc.dimse.message`` is the message being assembled from the PDUs
    already processed (None between messages).
    """
    if not isinstance(pdu, P_DATA_TF):
        return
    state = session(assoc)
    message = assoc.dimse.message
    now = time.monotonic()
    if message is None:
        state.request_started = now
    elif now - state.request_started > limits.request_seconds:
        log.warning("association %s aborted: a request still incomplete after %.0f s", state.id, now - state.request_started)
        refused(assoc, "request_too_slow", {"seconds": round(now - state.request_started, 1), "limit": limits.request_seconds})
        assoc.dul.event_queue.put(EVT_INVALID_PDU)
        return
    incoming = sum(max(0, len(item.presentation_data_value or b"") - 1) for item in pdu.presentation_data_value_items)
    held = 0 if message is None else message.encoded_command_set.tell() + (message.data_set.tell() if message.data_set is not None else 0)
    if held + incoming <= limits.max_identifier:
        return
    message_id = None if message is None else message.command_set.get("MessageID")
    if message_id is None:  # the command set itself is that large: no DICOM peer sends one
        log.warning("association %s aborted: a command set over %d bytes", state.id, limits.max_identifier)
        refused(assoc, "command_too_large", {"bytes": held + incoming, "limit": limits.max_identifier})
        assoc.dul.event_queue.put(EVT_INVALID_PDU)
        return
    if message_id not in state.oversized:
        state.oversized.add(int(message_id))
        log.warning("association %s: request %s is over %d bytes; the rest is dropped as it arrives", state.id, message_id, limits.max_identifier)
    message.data_set = BytesIO()


def oversized(assoc: Any, request: Any, limits: Limits) -> int | None:
    """The size the handler must refuse this request for (dropped fragments, or a data set over the limit), else None."""
    state = session(assoc)
    message_id = getattr(request, "MessageID", None)
    if message_id is not None and message_id in state.oversized:
        state.oversized.discard(message_id)
        return limits.max_identifier + 1
    identifier = getattr(request, "Identifier", None)
    size = identifier.getbuffer().nbytes if isinstance(identifier, BytesIO) else 0
    return size if size > limits.max_identifier else None


def restart_idle_timer(assoc: Any) -> None:
    """Count the idle timeout from the end of a request, not from the peer's last PDU.

    pynetdicom restarts its idle timer only when a PDU arrives, and checks it
    between requests: a C-FIND or C-MOVE that took longer than the timeout
    (the peer rightly silent) would have its association aborted the moment it
    ended. Touches ``dul._idle_timer`` (private; pinned by a test).
    """
    timer = getattr(getattr(assoc, "dul", None), "_idle_timer", None)
    if timer is not None:
        timer.restart()
