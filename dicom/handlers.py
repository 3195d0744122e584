"""One function per DIMSE and association event; each gets its dependencies (``Services``) when bound (dicom.server).

Association events admit or reject the peer (dicom.access) and bound what it
sends (dicom.limits). Request handlers first refuse what the peer was not
granted or what is over a limit, then parse, call the index (dicom.find,
dicom.retrieve), and translate: typed errors become named statuses
(dicom.statuses.failure_for). Whose data a batch of matches or a file carries
is recorded in the audit log before it leaves (dicom.auditing), which also
writes the log line. PS3.4 sections are cited where a rule is implemented.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import: no attributes mypy can see
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import Engine

from dicom import statuses
from dicom.access import ADMISSION_FAILED, UNAUTHENTICATED, AccessPolicy
from dicom.auditing import Operation, audit_failure, audited, count_unauthenticated, peer, record_refusal
from dicom.errors import LimitExceededError, UnknownDestinationError
from dicom.find import Finder, Match
from dicom.identifiers import Model, asked, parse
from dicom.limits import Limits, guard_reads, oversized, watch_request
from dicom.reactors import release_reactors, wake_reactors
from dicom.responses import use_fast_responses
from dicom.retrieve import Retriever, SubOperation, Tally, presentation_contexts
from dicom.sending import use_stored_encoding
from dicom.session import session
from imaging_sync.config import DicomConfig, DicomOperation
from imaging_sync.errors import AccessDeniedError, AuditUnavailableError

log = logging.getLogger("dicom.associations")

FIND_MODELS: dict[str, Model] = {
    PatientRootQueryRetrieveInformationModelFind: "PATIENT",
    StudyRootQueryRetrieveInformationModelFind: "STUDY",
}
MOVE_MODELS: dict[str, Model] = {
    PatientRootQueryRetrieveInformationModelMove: "PATIENT",
    StudyRootQueryRetrieveInformationModelMove: "STUDY",
}
GET_MODELS: dict[str, Model] = {
    PatientRootQueryRetrieveInformationModelGet: "PATIENT",
    StudyRootQueryRetrieveInformationModelGet: "STUDY",
}


@dataclass(frozen=True)
class Services:
    """What the handlers need, built once per process (dicom.server.build_services)."""

    engine: Engine
    finder: Finder
    retriever: Retriever
    config: DicomConfig
    access: AccessPolicy
    limits: Limits

    @property
    def max_pdu(self) -> int:
        return self.config.max_pdu_bytes


# -- association events --------------------------------------------------------------


def _no_delay(assoc: Any) -> Any:
    """No Nagle delay: pynetdicom writes a DIMSE message's command and data set as separate PDUs,
    and a peer's delayed ACK would hold the second back ~40 ms per response or sub-operation."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def handle_outgoing_connection_open(event: Any) -> None:
    """The association we open for a C-MOVE's sub-operations (dicom.server.QueryRetrieveAE.associate)."""
    _no_delay(event.assoc)
    wake_reactors(event.assoc)


def handle_outgoing_connection_closed(event: Any) -> None:
    release_reactors(event.assoc)


def handle_connection_open(event: Any, services: Services) -> None:
    """A peer connected, before it sends anything: no Nagle delay, every read bounded (dicom.limits), and a
    socket timeout so a peer that stops reading or stops mid-PDU cannot hold a thread for ever (pynetdicom's
    accepted sockets block without one; a send or read that makes no progress for ``idle_timeout_seconds``
    now ends the connection)."""
    session(event.assoc)  # created here, before the association's own threads start
    _latch_idle_timeout(event.assoc)
    wake_reactors(event.assoc)
    sock = _no_delay(event.assoc)
    if sock is not None:
        sock.settimeout(services.config.idle_timeout_seconds)
    guard_reads(event.assoc, services.limits, functools.partial(_refused_by_limit, services))


def _latch_idle_timeout(assoc: Any) -> None:
    """Remember that pynetdicom found the association idle: it aborts it at once, and by the time EVT_ABORTED
    fires the DUL may have restarted its idle timer on the peer's closing the connection (so asking the timer
    then said "not idle" under load, and the abort went unaudited)."""
    expired = assoc.dul.idle_timer_expired
    state = session(assoc)

    def idle_timer_expired() -> bool:
        if expired():
            state.idle_expired = True
        return state.idle_expired

    assoc.dul.idle_timer_expired = idle_timer_expired


def handle_requested(event: Any, services: Services) -> None:
    """An A-ASSOCIATE-RQ arrived: admit it, or reject it before anything is negotiated (dicom.access).

    The refusal is audited first (outcome ``denied``: when the peer reads the
    rejection, the row exists; a peer we do not know is counted in its
    address's row of the minute instead, ``dicom.access.UNAUTHENTICATED``), then rejected the way pynetdicom documents for
    EVT_REQUESTED: send the A-ASSOCIATE-RJ and end the association as its ACSE
    does for its own rejections. Any error deciding is a rejection too.
    """
    assoc = event.assoc
    request = assoc.requestor.primitive
    state = session(assoc)
    state.calling_ae = str(request.calling_ae_title or "").strip()
    state.address = str(assoc.requestor.address)
    try:
        refusal = services.access.admit(assoc, state.calling_ae, state.address)
    except Exception:  # fail closed: pynetdicom would log a notification handler's error and go on to accept
        log.exception("association %s: admission failed; rejected", state.id)
        refusal = ADMISSION_FAILED
    if refusal is None:
        state.admitted = True
        return
    log.warning("association %s from calling AE %s at %s rejected: %s", state.id, state.calling_ae, state.address, refusal.reason.replace("_", " "))
    called_ae = str(request.called_ae_title or "").strip()
    if refusal in UNAUTHENTICATED:
        count_unauthenticated(services.engine, assoc, refusal.reason, called_ae=called_ae)
    else:
        record_refusal(services.engine, assoc, "associate", detail={**refusal.detail, "called_ae": called_ae})
    assoc.acse.send_reject(refusal.result, refusal.source, refusal.diagnostic)
    assoc.kill()


def handle_pdu_received(event: Any, services: Services) -> None:
    watch_request(event.assoc, event.pdu, services.limits, functools.partial(_refused_by_limit, services))


def _refused_by_limit(services: Services, assoc: Any, reason: str, detail: dict[str, Any]) -> None:
    if not session(assoc).admitted:  # before any A-ASSOCIATE-RQ was read: nobody identified, counted
        count_unauthenticated(services.engine, assoc, reason)
        return
    record_refusal(services.engine, assoc, "association", detail={"reason": reason, **detail})


def handle_established(event: Any) -> None:
    calling, addr = peer(event.assoc)
    log.info("association %s established: calling AE %s from %s", session(event.assoc).id, calling, addr)


def handle_released(event: Any, services: Services) -> None:
    services.access.ended(event.assoc)
    log.info("association %s released", session(event.assoc).id)


def handle_aborted(event: Any, services: Services) -> None:
    """Aborted by the peer, or by us: an association idle for ``idle_timeout_seconds`` (pynetdicom's network
    timeout) is aborted by pynetdicom's reactor, and that is a limit enforced on the peer: audited."""
    assoc = event.assoc
    services.access.ended(assoc)
    if session(assoc).admitted and session(assoc).idle_expired:
        log.warning("association %s aborted: idle for %.0f s", session(assoc).id, services.config.idle_timeout_seconds)
        record_refusal(services.engine, assoc, "association", detail={"reason": "idle_timeout", "limit": services.config.idle_timeout_seconds})
    else:
        log.warning("association %s aborted", session(assoc).id)


def handle_connection_closed(event: Any, services: Services) -> None:
    services.access.ended(event.assoc)
    release_reactors(event.assoc)


def handle_rejected(event: Any, services: Services) -> None:
    """pynetdicom rejected an association we had admitted (its own limit on connections, set in dicom.server)."""
    assoc = event.assoc
    services.access.ended(assoc)
    calling, addr = peer(assoc)
    log.warning("association %s from calling AE %s at %s rejected by pynetdicom: too many connections", session(assoc).id, calling, addr)
    record_refusal(services.engine, assoc, "associate", detail={"reason": "connection_limit", "result": 2, "source": 3, "diagnostic": 2})


def handle_echo(event: Any, services: Services) -> int:
    """Verification (PS3.4 A.4): success for a peer granted ``echo``; else 0124, not authorised, audited."""
    calling, _ = peer(event.assoc)
    if services.access.may(calling, "echo"):
        return statuses.SUCCESS
    log.warning("association %s: C-ECHO refused, calling AE %s is not granted echo", session(event.assoc).id, calling)
    record_refusal(services.engine, event.assoc, "c-echo", status=statuses.NOT_AUTHORIZED, detail={"reason": "operation_not_granted"})
    return statuses.NOT_AUTHORIZED


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


# -- refusals before a request runs -----------------------------------------------------


def _refusal(event: Any, services: Services, op: Operation, operation: DicomOperation, *, retrieve: bool) -> Dataset | None:
    """The failure status a request gets before anything is looked up, or None: the calling AE was not granted
    ``operation`` (0124, dicom.access), or its identifier was over ``dicom.max_identifier_bytes`` (A700/A701,
    dicom.limits; then it is not even decoded). The audit row names the identifier of a refused request."""
    size = oversized(event.assoc, event.request, services.limits)
    if size is not None:
        op.query = {"identifier": "not decoded", "bytes": size}
        return op.fail(statuses.failure_for(LimitExceededError(f"identifier over {services.limits.max_identifier} bytes"), retrieve=retrieve))
    if services.access.may(op.calling_ae, operation):
        return None
    log.warning("association %s: %s refused, calling AE %s is not granted %s", op.association, op.action, op.calling_ae, operation)
    _read_for_audit(event, services, op, retrieve=retrieve)
    return op.fail(statuses.failure_for(AccessDeniedError(f"calling AE not granted {operation}")))


def _read_for_audit(event: Any, services: Services, op: Operation, *, retrieve: bool) -> None:
    """What a refused request asked, for its audit entry: the level and keys, or that it could not be read."""
    size = oversized(event.assoc, event.request, services.limits)
    if size is not None:
        op.query = {"identifier": "not decoded", "bytes": size}
        return
    try:
        identifier = event.identifier
    except Exception:  # refused anyway; the entry says what could be read
        op.query = {"identifier": "not decoded"}
        return
    op.query = _asked(identifier)


def _asked(identifier: Any) -> dict[str, Any]:
    try:
        return asked(identifier)
    except Exception:  # an element pydicom cannot read
        return {"identifier": "not decoded"}


# -- C-FIND ----------------------------------------------------------------------------


@audited("c-find")
def handle_find(event: Any, services: Services, op: Operation) -> Iterator[Any]:
    """C-FIND SCP (PS3.4 C.4.1.3.1): one pending response per match, cancel honoured between matches."""
    op.model = FIND_MODELS[event.request.AffectedSOPClassUID]
    refused = _refusal(event, services, op, "find", retrieve=False)
    if refused is not None:
        yield refused, None
        return
    try:
        identifier = event.identifier
    except Exception:
        yield op.fail(statuses.status_dataset(statuses.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "identifier cannot be decoded")), None
        return
    try:
        request = parse(identifier, op.model, max_values=services.limits.max_values)
    except Exception as exc:
        op.query = _asked(identifier)
        yield op.fail(statuses.failure_for(exc)), None
        return
    op.level, op.query = request.level, request.audit_keys
    use_fast_responses(event.assoc)
    try:
        with _reactor_awake(event.assoc):
            for batch in disclosure_batches(services.finder.find(request, combined_datetime=_combined_datetime(event))):
                try:  # whose data this batch shows is recorded before any of it leaves
                    op.disclose({m.subject_id for m in batch}, {m.study_id for m in batch})
                except AuditUnavailableError as exc:
                    yield audit_failure(op, exc), None
                    return
                for match in batch:
                    if event.is_cancelled:  # C.4.1.3.1: C-CANCEL ends the matches with 0xFE00
                        op.cancelled = True
                        yield statuses.CANCEL, None
                        return
                    op.matches += 1
                    _wait_for_the_peer(event.assoc)
                    yield statuses.PENDING, match.identifier
    except Exception as exc:  # e.g. InvalidKeyValueError raised while building SQL, or the database
        yield op.fail(statuses.failure_for(exc)), None
        return
    op.status = statuses.SUCCESS


# Matches disclosed per audit write: the first batch small (a query answered by a few matches costs one
# write, and a cancel right after the first matches leaves a precise entry), then doubling: a batch is
# never more than all the matches already sent, so the entry names at most twice the patients that left.
FIRST_DISCLOSURE_BATCH, MAX_DISCLOSURE_BATCH = 32, 512


def disclosure_batches(matches: Iterator[Match]) -> Iterator[list[Match]]:
    size = FIRST_DISCLOSURE_BATCH
    batch: list[Match] = []
    for match in matches:
        batch.append(match)
        if len(batch) >= size:
            yield batch
            batch, size = [], min(size * 2, MAX_DISCLOSURE_BATCH)
    if batch:
        yield batch


# pynetdicom's DUL reactor either sends one queued PDU or reads one per loop, sending first: with every
# match queued at once, a C-CANCEL (or an A-ABORT) was read only after the last one was sent (a DCMTK
# findscu --cancel 1 saw 18,500 of 20,000 matches). Matches now wait while this many are unsent.
MAX_UNSENT_RESPONSES = 16


# pynetdicom's reactor sleeps this long (its ``_run_loop_delay``, 1 ms) each time it finds nothing to send or read.
# While matches stream it drains the queue in microseconds and then slept, and the matches waited for it: 16
# matches per millisecond at best. While a C-FIND streams its reactor sleeps a tenth of that.
STREAMING_LOOP_DELAY = 0.0001


@contextlib.contextmanager
def _reactor_awake(assoc: Any) -> Iterator[None]:
    dul = assoc.dul
    idle = dul._run_loop_delay
    dul._run_loop_delay = min(idle, STREAMING_LOOP_DELAY)
    try:
        yield
    finally:
        dul._run_loop_delay = idle


def _wait_for_the_peer(assoc: Any) -> None:
    """Back-pressure for C-FIND: sleep while the association has MAX_UNSENT_RESPONSES responses still unsent."""
    unsent = assoc.dul.to_provider_queue
    while unsent.qsize() >= MAX_UNSENT_RESPONSES and assoc.is_established:
        time.sleep(0.0002)


# -- C-MOVE / C-GET ---------------------------------------------------------------------


def _retrieve(event: Any, services: Services, op: Operation, model: Model) -> list[SubOperation]:
    """The sub-operations shared by C-MOVE and C-GET: resolve, then yield each fetched file (PS3.4 C.4.2.3.1, C.4.3.3.1)."""
    op.model = model
    op.query = {"identifier": "not decoded"}  # until it is: decoding may fail, and the entry still records the request
    identifier = event.identifier
    op.query = _asked(identifier)
    request = parse(identifier, model, retrieve=True, max_values=services.limits.max_values)
    op.level, op.query = request.level, request.audit_keys
    return services.retriever.sub_operations(request)


def _sub_operations(event: Any, services: Services, op: Operation, subs: list[Any]) -> Iterator[Any]:
    """Each fetched file, its study and subject recorded in the audit entry before it leaves (one write per new study)."""
    op.tally = Tally(total=len(subs))
    op.counted = True
    for item in services.retriever.fetch(subs, op.tally):
        if event.is_cancelled:  # C.4.2.3.1: stop, report what remains (0xFE00)
            item.release()
            op.cancelled = True
            yield statuses.CANCEL, None
            return
        try:
            op.disclose((item.sub.subject_id,), (item.sub.study_id,))
        except AuditUnavailableError as exc:
            item.release()
            yield audit_failure(op, exc), None
            return
        yield statuses.PENDING, item


@audited("c-move")
def handle_move(event: Any, services: Services, op: Operation) -> Iterator[Any]:
    """C-MOVE SCP (PS3.4 C.4.2): sub-operations over a new association to a configured destination."""
    op.model = MOVE_MODELS[event.request.AffectedSOPClassUID]
    op.destination = str(event.move_destination or "").strip()
    destination = services.config.destination(op.destination)
    if destination is None:  # C.4.2.1.5: Refused, Move Destination unknown; the entry names where and what
        _read_for_audit(event, services, op, retrieve=True)
        op.fail(statuses.failure_for(UnknownDestinationError("move destination not configured")))
        yield None, None
        return
    refused = _refusal(event, services, op, "move", retrieve=True)
    if refused is not None:
        # pynetdicom's C-MOVE loop sends no status but A801 before it has associated with the destination:
        # the destination sees an association that carries nothing, then the requester gets the refusal.
        # Should the destination not answer, pynetdicom sends A801 and never asks for the count: so recorded.
        op.fail(statuses.failure_for(UnknownDestinationError("move destination did not accept the association")))
        yield destination.host, destination.port, {"contexts": [build_context(Verification)], "max_pdu": services.max_pdu}
        yield 1
        yield op.fail(refused), None
        return
    try:
        subs = _retrieve(event, services, op, op.model)
        failure = None
    except Exception as exc:
        subs, failure = [], statuses.failure_for(exc, retrieve=True)
    # Propose what is actually sent; a refused request still needs one context to associate.
    contexts = presentation_contexts(subs) or [build_context(Verification)]
    kwargs: dict[str, Any] = {"contexts": contexts, "max_pdu": services.max_pdu}
    yield destination.host, destination.port, kwargs
    if failure is not None:
        # pynetdicom wants the sub-operation count before any status: one, then the failure.
        yield 1
        yield op.fail(failure), None
        return
    use_fast_responses(event.assoc, pending_interval=services.config.pending_interval_seconds)  # the counts as files go
    yield len(subs)
    yield from _sub_operations(event, services, op, subs)


@audited("c-get")
def handle_get(event: Any, services: Services, op: Operation) -> Iterator[Any]:
    """C-GET SCP (PS3.4 C.4.3): sub-operations on the requester's own association, which must have
    proposed the storage contexts with the SCP role (PS3.4 C.4.3.3.1, PS3.7 D.3.3.4)."""
    op.model = GET_MODELS[event.request.AffectedSOPClassUID]
    refused = _refusal(event, services, op, "get", retrieve=True)
    if refused is not None:
        yield 1  # pynetdicom wants the sub-operation count before any status
        yield refused, None
        return
    try:
        subs = _retrieve(event, services, op, GET_MODELS[event.request.AffectedSOPClassUID])
    except Exception as exc:
        yield 1
        yield op.fail(statuses.failure_for(exc, retrieve=True)), None
        return
    use_stored_encoding(event.assoc)
    use_fast_responses(event.assoc, pending_interval=services.config.pending_interval_seconds)
    yield len(subs)
    yield from _sub_operations(event, services, op, subs)
