"""The audit entry of every C-FIND, C-MOVE and C-GET, written before the answer; and the refusals.

An operation that discloses patient data is audited in two steps
(:mod:`imaging_sync.audit`): before the first match or file leaves, the
handler calls :meth:`Operation.disclose` with whose data it carries (the
subjects and studies of the next batch of matches, the study and subject of
the next file): the first call commits the entry, in outcome ``started``,
together with those ids; each later one adds the next batch's, one INSERT per
batch, before that batch is sent. If it cannot be written
(:class:`~imaging_sync.errors.AuditUnavailableError`), nothing is sent: the
handler answers ``C004`` (unable to process: the access could not be
audited). When the operation ends, however it ends (completion, cancel,
failure, the peer going away), :func:`audited` appends its outcome, status
and counts. A process killed in between leaves the ``started`` entry.

An operation that disclosed nothing (refused, invalid, no match) is one
complete entry written when it ends; so is a refusal at association
(:func:`record_refusal`) of a listed peer (over a limit). A peer that is
not one we know (its calling AE title not listed, or not from that address)
or that broke a limit before it could be admitted proved no identity: its
rejection is counted in its address's row of the minute
(:func:`count_unauthenticated`, :mod:`imaging_sync.audit_refusals`), so a
flood of association requests costs one row a minute. Log lines carry levels, counts, statuses and the
association id, never patient names or IDs (those are only in the audit
entry's ``query``, which is what the audit log is for).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from sqlalchemy import Engine

from dicom import statuses
from dicom.limits import restart_idle_timer
from dicom.retrieve import Tally
from dicom.session import session
from imaging_sync import audit, audit_refusals
from imaging_sync.audit import AuditEvent, AuditHandle
from imaging_sync.errors import AuditUnavailableError
from imaging_sync.logs import describe_failure

log = logging.getLogger("dicom.operations")

# Refusals by policy or limit (not authorised, unknown destination, over a limit): outcome ``denied``.
DENIED = frozenset({statuses.NOT_AUTHORIZED, statuses.MOVE_DESTINATION_UNKNOWN, statuses.OUT_OF_RESOURCES, statuses.OUT_OF_RESOURCES_MATCHES})


def association_id(assoc: Any) -> str:
    return session(assoc).id


def peer(assoc: Any) -> tuple[str, str]:
    """(calling AE title, peer address) of an association we accepted (known from its A-ASSOCIATE-RQ on)."""
    state = session(assoc)
    if state.calling_ae or state.address:
        return state.calling_ae, state.address
    requestor = assoc.requestor
    return str(requestor.ae_title or "").strip(), str(requestor.address or "")


def record_refusal(
    engine: Engine, assoc: Any, action: str, *, status: int | None = None, detail: dict[str, Any] | None = None, query: dict[str, Any] | None = None
) -> None:
    """Audit a refusal that disclosed nothing (an association rejected or aborted for a limit, a C-ECHO not granted).

    Outcome ``denied``, actor the calling AE (as sent; the audit log escapes
    what it cannot store), ``detail.reason`` why. The refusal stands whether
    or not the row can be written; a row that cannot is logged without values.
    """
    calling_ae, address = peer(assoc)
    event = AuditEvent(
        channel="dicom", actor=calling_ae, action=action, outcome="denied", client_addr=address or None, status=status, query=query,
        detail={"association": association_id(assoc), **(detail or {})},
    )
    try:
        audit.record_now(engine, event)
    except AuditUnavailableError as exc:
        log.error("the refusal (%s, association %s) could not be audited: %s", action, association_id(assoc), describe_failure(exc))


def count_unauthenticated(engine: Engine, assoc: Any, reason: str, *, called_ae: str | None = None) -> None:
    """Count a rejection of a peer that was never admitted (see the module's docstring), before the peer reads it.

    The sample keeps the AE titles and the reason. As with
    :func:`record_refusal`, the rejection stands whether or not the row can
    be written; a row that cannot is logged without values.
    """
    calling_ae, address = peer(assoc)
    refusal = audit_refusals.Refusal(channel="dicom", client_addr=address or None, tried=audit_refusals.dicom_attempt(calling_ae, called_ae, reason))
    try:
        audit_refusals.count_now(engine, refusal)
    except AuditUnavailableError as exc:
        log.error("the refusal (association %s, %s) could not be counted: %s", association_id(assoc), reason, describe_failure(exc))


@dataclass
class Operation:
    """One C-FIND, C-MOVE or C-GET as the audit log and the log line describe it; filled in by its handler."""

    action: str  # c-find | c-move | c-get
    calling_ae: str
    client_addr: str
    association: str
    engine: Engine | None = None
    model: str | None = None
    level: str | None = None
    query: dict[str, Any] = field(default_factory=dict)
    destination: str | None = None
    matches: int = 0
    tally: Tally | None = None
    status: int | None = None
    comment: str | None = None
    # C-MOVE/C-GET: the sub-operation count was yielded, the sub-operations started.
    counted: bool = False
    cancelled: bool = False
    started: float = field(default_factory=time.monotonic)
    handle: AuditHandle | None = None  # the started entry, once something was disclosed

    def fail(self, status_ds: Dataset) -> Dataset:
        self.status = int(status_ds.Status)
        self.comment = status_ds.get("ErrorComment")
        return status_ds

    def event(self, outcome: str = audit.STARTED, *, status: int | None = None, detail: dict[str, Any] | None = None) -> AuditEvent:
        return AuditEvent(
            channel="dicom", actor=self.calling_ae, action=self.action, outcome=outcome, client_addr=self.client_addr or None,
            query={"model": self.model, **self.query} if self.model else self.query, resource_type=(self.level or "").lower() or None,
            status=status, detail=detail,
        )

    def disclose(self, subject_ids: Collection[uuid.UUID | None], study_ids: Collection[uuid.UUID | None]) -> None:
        """Record, before they leave, whose data the next matches or files carry; the first call commits the entry.

        Raises AuditUnavailableError when that cannot be written: send nothing, answer :func:`audit_failure`.
        Ids already recorded for this operation cost no round trip.
        """
        subjects = [s for s in subject_ids if s is not None]
        studies = [s for s in study_ids if s is not None]
        if self.handle is None:
            assert self.engine is not None
            self.handle = audit.begin(self.engine, self.event(), subject_ids=subjects, study_ids=studies)
        else:
            self.handle.disclose(subject_ids=subjects, study_ids=studies)

    def final_status(self) -> int | None:
        if self.status is not None:
            return self.status
        if self.cancelled:
            return statuses.CANCEL
        if self.tally is not None and self.tally.total:
            t = self.tally
            if t.failed == t.total:
                return statuses.OUT_OF_RESOURCES_SUBOPERATIONS
            if t.failed or t.warning:
                return statuses.WARNING_SUBOPERATIONS_FAILED
        return statuses.SUCCESS

    def outcome(self, status: int | None) -> str:
        if status is None:
            return "error"
        if status in (statuses.SUCCESS, statuses.WARNING_SUBOPERATIONS_FAILED, statuses.CANCEL):
            return "success"
        if status in DENIED:
            return "denied"
        return "error"  # the DICOM status (A900, C001, …) says which


def audit_failure(op: Operation, error: AuditUnavailableError) -> Any:
    """The status of an operation stopped because its disclosure could not be audited (nothing more is sent)."""
    log.error("%s stopped: its audit entry could not be written (association %s): %s", op.action, op.association, describe_failure(error))
    return op.fail(statuses.status_dataset(statuses.UNABLE_TO_PROCESS_AUDIT, "the access could not be audited"))


def audited(action: str) -> Callable[[Callable[..., Iterator[Any]]], Callable[..., Iterator[Any]]]:
    """Wrap a DIMSE handler generator ``handler(event, services, op)`` as ``handler(event, services)``."""

    def decorate(handler: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        @functools.wraps(handler)
        def run(event: Any, services: Any) -> Iterator[Any]:
            calling_ae, addr = peer(event.assoc)
            op = Operation(action, calling_ae, addr, association_id(event.assoc), engine=services.engine)
            interrupted = False
            try:
                yield from handler(event, services, op)
            except GeneratorExit:
                interrupted = True
                raise
            except Exception as exc:  # a bug: pynetdicom answers with its own 0xCxxx status
                op.status, op.comment = statuses.UNABLE_TO_PROCESS, type(exc).__name__
                log.exception("%s failed in the handler (association %s)", action, op.association)
                raise
            finally:
                restart_idle_timer(event.assoc)
                _finish(op, interrupted)

        return run

    return decorate


def _finish(op: Operation, interrupted: bool) -> None:
    status = op.final_status()
    detail: dict[str, Any] = {"model": op.model, "association": op.association}
    if op.destination is not None:
        detail["destination"] = op.destination
    if op.tally is not None:
        detail.update(op.tally.as_detail())
        if interrupted and op.tally.remaining and not op.cancelled:
            # pynetdicom stopped asking for sub-operations: the destination refused the
            # association (it answered 0xA801) or the requester went away.
            status = statuses.MOVE_DESTINATION_UNKNOWN if op.counted and op.tally.remaining == op.tally.total else None
            detail["interrupted"] = True
    else:
        detail["matches"] = op.matches
    if op.comment:
        detail["error"] = op.comment
    seconds = time.monotonic() - op.started
    detail["seconds"] = round(seconds, 3)
    outcome = op.outcome(status)
    log.info(
        "%s %s %s level: %s, status %s (%s), %.0f ms [association %s, calling AE %s]",
        op.action, op.model or "-", op.level or "-",
        f"{op.tally.completed}/{op.tally.total} sent, {op.tally.failed} failed" if op.tally else f"{op.matches} matches",
        f"0x{status:04X}" if status is not None else "none", statuses.name(status) if status is not None else "interrupted",
        seconds * 1000, op.association, op.calling_ae,
    )
    try:
        if op.handle is not None:
            op.handle.finish(outcome, status=status, detail=detail)
        else:
            assert op.engine is not None
            audit.record_now(op.engine, op.event(outcome, status=status, detail=detail))
    except AuditUnavailableError as exc:
        # A started entry still records the disclosure; an operation that disclosed nothing sent nothing.
        log.error("the end of %s could not be audited (association %s): %s", op.action, op.association, describe_failure(exc))
