"""One function per DIMSE event; each gets its dependencies (``Services``) when bound (dicom.server).

Handlers parse, call the index (dicom.find, dicom.retrieve), and translate:
typed errors become named statuses (dicom.statuses.failure_for), the audit
row and log line come from dicom.auditing. PS3.4 sections are cited where a
rule is implemented.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pynetdicom import build_context, sop_class
from sqlalchemy import Engine

from dicom import statuses
from dicom.auditing import Operation, association_id, audited, peer
from dicom.errors import IdentifierMismatchError, UnknownDestinationError
from dicom.find import Finder
from dicom.identifiers import Model, parse
from dicom.retrieve import Retriever, Tally, presentation_contexts
from dicom.sending import use_stored_encoding
from imaging_sync.config import DicomDestination

log = logging.getLogger("dicom.associations")

FIND_MODELS: dict[str, Model] = {
    sop_class.PatientRootQueryRetrieveInformationModelFind: "PATIENT",
    sop_class.StudyRootQueryRetrieveInformationModelFind: "STUDY",
}
MOVE_MODELS: dict[str, Model] = {
    sop_class.PatientRootQueryRetrieveInformationModelMove: "PATIENT",
    sop_class.StudyRootQueryRetrieveInformationModelMove: "STUDY",
}
GET_MODELS: dict[str, Model] = {
    sop_class.PatientRootQueryRetrieveInformationModelGet: "PATIENT",
    sop_class.StudyRootQueryRetrieveInformationModelGet: "STUDY",
}


@dataclass(frozen=True)
class Services:
    """What the handlers need, built once per process (dicom.server.build_services)."""

    engine: Engine
    finder: Finder
    retriever: Retriever
    destinations: Mapping[str, DicomDestination]
    max_pdu: int = 0


# -- association events --------------------------------------------------------------


def handle_connection_open(event: Any) -> None:
    """No Nagle delay: pynetdicom writes a DIMSE message's command and data set as separate PDUs,
    and a peer's delayed ACK would hold the second back ~40 ms per response or sub-operation."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def handle_established(event: Any) -> None:
    calling, addr = peer(event.assoc)
    log.info("association %s established: calling AE %s from %s", association_id(event.assoc), calling, addr)


def handle_released(event: Any) -> None:
    log.info("association %s released", association_id(event.assoc))


def handle_aborted(event: Any) -> None:
    log.warning("association %s aborted", association_id(event.assoc))


def handle_rejected(event: Any) -> None:
    calling, addr = peer(event.assoc)
    log.warning("association from calling AE %s at %s rejected", calling, addr)


def handle_echo(event: Any) -> int:
    """Verification (PS3.4 A.4): always success."""
    return statuses.SUCCESS


def handle_sop_extended(event: Any) -> dict[str, bytes]:
    """SOP Class Extended Negotiation for C-FIND (PS3.4 C.5.1.1): we accept combined date-time
    matching (byte 2) and decline relational queries, fuzzy PN matching and timezone adjustment."""
    accepted = {}
    for uid, info in (event.app_info or {}).items():
        if uid in FIND_MODELS and info:
            reply = bytearray(len(info))
            if len(info) > 1 and info[1] == 1:
                reply[1] = 1
            accepted[uid] = bytes(reply)
    return accepted


def _combined_datetime(event: Any) -> bool:
    info = event.assoc.acceptor.sop_class_extended.get(event.request.AffectedSOPClassUID) or b""
    return len(info) > 1 and info[1] == 1


# -- C-FIND ----------------------------------------------------------------------------


@audited("c-find")
def handle_find(event: Any, services: Services, op: Operation) -> Iterator[Any]:
    """C-FIND SCP (PS3.4 C.4.1.3.1): one pending response per match, cancel honoured between matches."""
    op.model = FIND_MODELS[event.request.AffectedSOPClassUID]
    try:
        identifier = event.identifier
    except Exception:
        yield op.fail(statuses.status_dataset(statuses.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "identifier cannot be decoded")), None
        return
    try:
        request = parse(identifier, op.model)
    except IdentifierMismatchError as exc:
        yield op.fail(statuses.failure_for(exc)), None
        return
    except Exception as exc:
        yield op.fail(statuses.failure_for(exc)), None
        return
    op.level, op.query = request.level, request.audit_keys
    try:
        for response in services.finder.find(request, combined_datetime=_combined_datetime(event)):
            if event.is_cancelled:  # C.4.1.3.1: C-CANCEL ends the matches with 0xFE00
                op.cancelled = True
                yield statuses.CANCEL, None
                return
            op.matches += 1
            _wait_for_the_peer(event.assoc)
            yield statuses.PENDING, response
    except Exception as exc:  # e.g. InvalidKeyValueError raised while building SQL, or the database
        yield op.fail(statuses.failure_for(exc)), None
        return
    op.status = statuses.SUCCESS


# pynetdicom's DUL reactor either sends one queued PDU or reads one per loop, sending first: with every
# match queued at once, a C-CANCEL (or an A-ABORT) was read only after the last one was sent (a DCMTK
# findscu --cancel 1 saw 18,500 of 20,000 matches). Matches now wait while this many are unsent.
MAX_UNSENT_RESPONSES = 16


def _wait_for_the_peer(assoc: Any) -> None:
    """Back-pressure for C-FIND: sleep while the association has MAX_UNSENT_RESPONSES responses still unsent."""
    unsent = assoc.dul.to_provider_queue
    while unsent.qsize() >= MAX_UNSENT_RESPONSES and assoc.is_established:
        time.sleep(0.0005)


# -- C-MOVE / C-GET ---------------------------------------------------------------------


def _retrieve(event: Any, services: Services, op: Operation, model: Model) -> Iterator[Any]:
    """The sub-operations shared by C-MOVE and C-GET: resolve, then yield each fetched file (PS3.4 C.4.2.3.1, C.4.3.3.1)."""
    op.model = model
    request = parse(event.identifier, model, retrieve=True)
    op.level, op.query = request.level, request.audit_keys
    return services.retriever.sub_operations(request)  # type: ignore[return-value]


def _sub_operations(event: Any, services: Services, op: Operation, subs: list[Any]) -> Iterator[Any]:
    op.tally = Tally(total=len(subs))
    op.counted = True
    for item in services.retriever.fetch(subs, op.tally):
        if event.is_cancelled:  # C.4.2.3.1: stop, report what remains (0xFE00)
            item.release()
            op.cancelled = True
            yield statuses.CANCEL, None
            return
        yield statuses.PENDING, item


@audited("c-move")
def handle_move(event: Any, services: Services, op: Operation) -> Iterator[Any]:
    """C-MOVE SCP (PS3.4 C.4.2): sub-operations over a new association to a configured destination."""
    op.model = MOVE_MODELS[event.request.AffectedSOPClassUID]
    op.destination = str(event.move_destination or "").strip()
    destination = services.destinations.get(op.destination)
    if destination is None:  # C.4.2.1.5: Refused, Move Destination unknown
        op.fail(statuses.failure_for(UnknownDestinationError("move destination not configured")))
        yield None, None
        return
    try:
        subs = list(_retrieve(event, services, op, op.model))
        failure = None
    except Exception as exc:
        subs, failure = [], statuses.failure_for(exc)
    # Propose what is actually sent; a refused request still needs one context to associate.
    contexts = presentation_contexts(subs) or [build_context(sop_class.Verification)]
    kwargs: dict[str, Any] = {"contexts": contexts, "max_pdu": services.max_pdu}
    yield destination.host, destination.port, kwargs
    if failure is not None:
        # pynetdicom wants the sub-operation count before any status: one, then the failure.
        yield 1
        yield op.fail(failure), None
        return
    yield len(subs)
    yield from _sub_operations(event, services, op, subs)


@audited("c-get")
def handle_get(event: Any, services: Services, op: Operation) -> Iterator[Any]:
    """C-GET SCP (PS3.4 C.4.3): sub-operations on the requester's own association, which must have
    proposed the storage contexts with the SCP role (PS3.4 C.4.3.3.1, PS3.7 D.3.3.4)."""
    try:
        subs = list(_retrieve(event, services, op, GET_MODELS[event.request.AffectedSOPClassUID]))
    except Exception as exc:
        yield 1
        yield op.fail(statuses.failure_for(exc)), None
        return
    use_stored_encoding(event.assoc)
    yield len(subs)
    yield from _sub_operations(event, services, op, subs)
