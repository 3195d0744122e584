"""The ATNA relay: follows the audit log's seals and sends each entry as a DICOM audit message, at least once.

Why seals and not rows: audit rows are written by many processes whose
transactions commit out of order, so "the rows after the last one sent"
can miss a row committed late under a smaller number. A seal
(:mod:`imaging_sync.audit_seals`) covers exactly the rows that were final
when it was made, and seals are numbered in order: the relay reads the seals
after its position (``audit_export_cursor``, name ``atna``), in order, and for
each the rows it covers (``rows_of_seal``). Nothing is sent before it is
sealed, so what the repository receives is what ``audit verify`` checks.

**When an entry is sent.** A complete entry (a REST request, a refusal, a
command) is sent when its seal is read. A streaming operation (C-FIND,
C-MOVE, C-GET) writes an entry of outcome ``started`` first and its end
(``audit_completion``) later, possibly in a later seal; its message is sent
when the end is read, with the outcome, status and every patient and study
it disclosed, because the repository wants one record of what happened, not
a record of an intention. C-MOVE and C-GET also send *Begin Transferring
DICOM Instances* when their entry is read (PS3.15 A.5.3.2 is that message),
so a transfer that never ends is on record as having begun. A ``started``
entry with no end after ``abandon_after_seconds`` (its process died) is sent
as a serious failure (outcome 8) by a second pass over the seals with its
own position (``atna:open``), which waits at the oldest seal still holding
an operation that may yet end; should its end arrive later after all, it is
sent too.

**Delivery.** Up to ``batch_size`` seals are read, their messages built
and handed to the transport in one delivery (:mod:`imaging_sync.atna.syslog`);
only when the transport says the receiver accepted them does the position
move past those seals, in a transaction of its own, never backwards. A
failure (repository down, TLS refused, timeout) leaves the position where it
was, logs the reason (host and error, never patient data) and backs off
(``initial_backoff`` doubling up to ``max_backoff``); the next pass sends
the same seals again. Delivery is therefore at least once: a receiver that
accepted part of a batch before failing gets that part twice. The messages
are the same each time (built from the rows alone), and each names our
entry's id. Nothing here runs inside a request: a slow or absent repository
delays no answer.

**No database transaction is held across the network**: the rows are read,
the connection returned, then the batch is sent.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, insert, select, update

from imaging_sync import audit_seals
from imaging_sync.atna.message import TRANSFERS, Entry, Patient, Report, Source, build_messages, outcome_indicator
from imaging_sync.atna.syslog import DeliveryError, Transport, format_message, transport_for
from imaging_sync.config import AtnaConfig
from imaging_sync.db.models import AuditCompletion, AuditDisclosure, AuditEntry, AuditExportCursor, Study, Subject, table_of, utcnow

log = logging.getLogger(__name__)

CURSOR = "atna"  # audit_export_cursor.name of the relay's position
OPEN_CURSOR = "atna:open"  # ... and of the pass that reports operations that never ended
_log = table_of(AuditEntry)
_completion = table_of(AuditCompletion)
_disclosure = table_of(AuditDisclosure)
_cursor = table_of(AuditExportCursor)
_subject = table_of(Subject)
_study = table_of(Study)
_CHUNK = 500  # ids per IN list


class SealedRow(Protocol):
    """A row a seal covers, as :func:`imaging_sync.audit_seals.rows_of_seal` gives it."""

    @property
    def table(self) -> str: ...  # audit_log | audit_completion | audit_disclosure

    @property
    def seq(self) -> int: ...

    @property
    def values(self) -> Mapping[str, Any]: ...  # the row's columns by name


class SealReader(Protocol):
    """What the relay needs from the sealer: the seals after a number, in order, and the rows of one."""

    def seals_after(self, conn: Connection, seal_no: int, limit: int) -> list[int]: ...

    def rows_of_seal(self, conn: Connection, seal_no: int) -> Sequence[SealedRow]: ...


# The sealer's own reading functions: the module itself is the reader.
AUDIT_SEALS: SealReader = audit_seals


@dataclass
class RelayResult:
    """What one pass did: seals delivered, entries and messages sent, operations reported as never ended."""

    seals: int = 0
    reports: int = 0
    messages: int = 0
    abandoned: int = 0
    cursor: int = 0
    error: str | None = None  # the delivery failed: nothing advanced
    waiting: bool = False  # backing off after a failure; nothing tried

    def add(self, other: RelayResult) -> None:
        self.seals += other.seals
        self.reports += other.reports
        self.messages += other.messages
        self.abandoned += other.abandoned
        self.cursor = other.cursor
        self.error = other.error
        self.waiting = other.waiting


class AtnaRelay:
    """Sends the sealed audit log to an Audit Record Repository; several may run (each seal is sent at least once)."""

    def __init__(self, engine: Engine, config: AtnaConfig, transport: Transport, *, seals: SealReader = AUDIT_SEALS,
                 clock: Callable[[], dt.datetime] = utcnow, hostname: str | None = None) -> None:
        self.engine = engine
        self.config = config
        self.transport = transport
        self.seals = seals
        self.clock = clock
        self.source = Source(config.app_name, hostname or socket.gethostname(), config.enterprise_site_id, config.max_objects_per_message)
        self._failures = 0
        self._retry_at = 0.0  # time.monotonic() before which a pass does not try again

    # -- passes ------------------------------------------------------------------------------------------

    def run_once(self, *, force: bool = False) -> RelayResult:
        """One delivery of up to ``batch_size`` seals, then the never-ended operations now due.

        ``force``: try now even while backing off after a failure (the CLI).
        """
        if not force and time.monotonic() < self._retry_at:
            return RelayResult(waiting=True, cursor=self.position())
        try:
            result = self._deliver_seals()
            if result.error is None:
                result.abandoned = self._deliver_abandoned()
        except DeliveryError as exc:
            result = RelayResult(error=str(exc), cursor=self.position())
        if result.error is None:
            self._failures, self._retry_at = 0, 0.0
            return result
        self._failures += 1
        delay = min(self.config.max_backoff, self.config.initial_backoff * 2 ** (self._failures - 1)) * random.uniform(0.8, 1.0)
        self._retry_at = time.monotonic() + delay
        log.warning("atna: delivery to %s failed (attempt %d), position stays at seal %d, next try in %.0f s: %s",
                    self.transport.name, self._failures, result.cursor, delay, result.error)
        return result

    def run_until_idle(self, *, max_batches: int = 1000, force: bool = False) -> RelayResult:
        """Deliver until every seal is sent or a delivery fails (schedulers, the CLI, tests)."""
        total = RelayResult()
        for n in range(max_batches):
            batch = self.run_once(force=force and n == 0)
            total.add(batch)
            if batch.seals == 0 or batch.error is not None or batch.waiting:
                break
        return total

    def position(self) -> int:
        """The last seal delivered whole (0: none yet)."""
        with self.engine.connect() as conn:
            return _position(conn, CURSOR)

    # -- the seals in order ------------------------------------------------------------------------------

    def _deliver_seals(self) -> RelayResult:
        with self.engine.connect() as conn:
            position = _position(conn, CURSOR)
            numbers = self.seals.seals_after(conn, position, self.config.batch_size)
            reports: list[Report] = []
            for number in numbers:
                reports += _reports_of(conn, self.seals.rows_of_seal(conn, number))
        if not numbers:
            return RelayResult(cursor=position)
        messages = self._messages(reports)
        self.transport.deliver(messages)  # DeliveryError: the position stays
        _advance(self.engine, CURSOR, numbers[-1], self.clock())
        log.info("atna: seals %d-%d delivered over %s: %d entries, %d messages", numbers[0], numbers[-1], self.transport.name, len(reports), len(messages))
        return RelayResult(seals=len(numbers), reports=len(reports), messages=len(messages), cursor=numbers[-1])

    # -- operations that never ended ---------------------------------------------------------------------

    def _deliver_abandoned(self) -> int:
        """Send the ``started`` entries of delivered seals that have no end after ``abandon_after_seconds``, as outcome 8.

        Walks the delivered seals from its own position and stops at the first
        one holding an operation that may still end (younger than the limit,
        no end yet): the position never passes an operation not yet settled.
        """
        limit = dt.timedelta(seconds=self.config.abandon_after_seconds)
        now = self.clock()
        with self.engine.connect() as conn:
            position, delivered = _position(conn, OPEN_CURSOR), _position(conn, CURSOR)
            numbers = [n for n in self.seals.seals_after(conn, position, self.config.batch_size) if n <= delivered]
            reports: list[Report] = []
            settled = position
            for number in numbers:
                started = [_entry(row.values) for row in self.seals.rows_of_seal(conn, number) if row.table == "audit_log" and row.values.get("outcome") == "started"]
                ended = _ended(conn, [e.id for e in started])
                open_ = [e for e in started if e.id not in ended]
                if any(now - e.at < limit for e in open_):
                    break
                reports += [Report(e, "abandoned", "error", e.at, abandoned_after=self.config.abandon_after_seconds) for e in open_]
                settled = number
            if reports:
                reports = _with_disclosures(conn, reports)
        if settled == position:
            return 0
        if reports:
            self.transport.deliver(self._messages(reports))
            log.warning("atna: %d streaming operations never recorded their end; sent as serious failures", len(reports))
        _advance(self.engine, OPEN_CURSOR, settled, self.clock())
        return len(reports)

    def _messages(self, reports: Iterable[Report]) -> list[bytes]:
        pid = str(os.getpid())
        return [format_message(xml, at=report.at, hostname=self.source.hostname, app_name=self.source.app_name, procid=pid,
                               failure=outcome_indicator(report) != "0")
                for report in reports for xml in build_messages(report, self.source)]


# -- reading ---------------------------------------------------------------------------------------------


def _reports_of(conn: Connection, rows: Sequence[SealedRow]) -> list[Report]:
    """The reports one seal's rows make, in the seal's order: complete entries, C-MOVE/C-GET starts, ends."""
    entries = {(e := _entry(r.values)).id: e for r in rows if r.table == "audit_log"}
    completions = [r.values for r in rows if r.table == "audit_completion"]
    missing = [i for c in completions if (i := _uuid(c["audit_id"])) not in entries]
    entries.update(_entries(conn, missing))
    seal_disclosures: dict[uuid.UUID, list[tuple[uuid.UUID, str]]] = {}
    for r in rows:
        if r.table == "audit_disclosure":
            seal_disclosures.setdefault(_uuid(r.values["audit_id"]), []).append((_uuid(r.values["entity_id"]), str(r.values["kind"])))
    reports: list[Report] = []
    starts: set[uuid.UUID] = set()
    for r in rows:
        v = r.values
        if r.table == "audit_log":
            entry = entries[_uuid(v["id"])]
            if entry.outcome != "started":
                reports.append(Report(entry, "entry", entry.outcome, entry.at, status=entry.status, detail=entry.detail))
            elif entry.action in TRANSFERS:
                reports.append(Report(entry, "start", "started", entry.at))
                starts.add(entry.id)
        elif r.table == "audit_completion":
            ended = entries.get(_uuid(v["audit_id"]))
            if ended is None:  # an end without its entry: the entry was removed, which `audit verify` reports
                log.warning("atna: an audit completion whose entry is missing was skipped (seq %s)", r.seq)
                continue
            reports.append(Report(ended, "completion", str(v["outcome"]), _datetime(v["at"]), status=v.get("status"), detail=_mapping(v.get("detail"))))
    reports.sort(key=lambda r: r.at)  # a seal lists its rows table by table; the repository reads them in time order
    return _with_disclosures(conn, reports, {i: seal_disclosures.get(i, []) for i in starts})


def _with_disclosures(conn: Connection, reports: list[Report], given: Mapping[uuid.UUID, list[tuple[uuid.UUID, str]]] | None = None) -> list[Report]:
    """Each report with the patients and studies its entry disclosed, resolved to PatientID/issuer and Study Instance UID.

    A begin-transferring report (``given``) carries what its seal holds (the
    first batch); every other report all the entry disclosed, which is
    committed by the time its end or its single statement is sealed.
    """
    given = given or {}
    wanted = [r.entry.id for r in reports if r.entry.id not in given]
    disclosed: dict[uuid.UUID, list[tuple[uuid.UUID, str]]] = {i: list(d) for i, d in given.items()}
    for chunk in _chunks(wanted):
        stmt = select(_disclosure.c.audit_id, _disclosure.c.entity_id, _disclosure.c.kind).where(_disclosure.c.audit_id.in_(chunk))
        for audit_id, entity_id, kind in conn.execute(stmt.order_by(_disclosure.c.audit_id, _disclosure.c.entity_id)):
            disclosed.setdefault(audit_id, []).append((entity_id, kind))
    subject_ids = {e for pairs in disclosed.values() for e, k in pairs if k == "subject"}
    study_ids = {e for pairs in disclosed.values() for e, k in pairs if k == "study"}
    patients: dict[uuid.UUID, Patient] = {}
    for chunk in _chunks(sorted(subject_ids)):
        for sid, patient_id, issuer in conn.execute(select(_subject.c.id, _subject.c.patient_id, _subject.c.issuer).where(_subject.c.id.in_(chunk))):
            patients[sid] = Patient(patient_id, issuer or "")
    studies: dict[uuid.UUID, str] = {}
    for chunk in _chunks(sorted(study_ids)):
        for sid, uid in conn.execute(select(_study.c.id, _study.c.study_instance_uid).where(_study.c.id.in_(chunk))):
            studies[sid] = uid
    result = []
    for report in reports:
        pairs = sorted(disclosed.get(report.entry.id, []))
        found_patients = tuple(dict.fromkeys(patients[e] for e, k in pairs if k == "subject" and e in patients))
        found_studies = tuple(dict.fromkeys(studies[e] for e, k in pairs if k == "study" and e in studies))
        unresolved = sum(1 for e, k in pairs if (k == "subject" and e not in patients) or (k == "study" and e not in studies))
        result.append(Report(report.entry, report.phase, report.outcome, report.at, report.status, report.detail,
                             tuple(sorted(found_patients, key=lambda p: (p.issuer, p.patient_id))), tuple(sorted(found_studies)),
                             unresolved, report.abandoned_after))
    return result


def _entries(conn: Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Entry]:
    found: dict[uuid.UUID, Entry] = {}
    for chunk in _chunks(ids):
        for row in conn.execute(select(_log).where(_log.c.id.in_(chunk))).mappings():
            entry = _entry(dict(row))
            found[entry.id] = entry
    return found


def _ended(conn: Connection, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    ended: set[uuid.UUID] = set()
    for chunk in _chunks(ids):
        ended.update(conn.execute(select(_completion.c.audit_id).where(_completion.c.audit_id.in_(chunk))).scalars())
    return ended


_ENTRY_FIELDS = ("channel", "actor", "action", "outcome", "actor_role", "client_addr", "method", "path", "resource_type", "resource_id")


def _entry(values: Mapping[str, Any]) -> Entry:
    """An ``audit_log`` row's values (typed by SQLAlchemy, or raw from a driver) as an :class:`Entry`."""
    text = {name: (None if values.get(name) is None else str(values[name])) for name in _ENTRY_FIELDS}
    key_id = values.get("actor_key_id")
    status = values.get("status")
    return Entry(
        id=_uuid(values["id"]), at=_datetime(values["at"]), channel=text["channel"] or "", actor=text["actor"] or "",
        action=text["action"] or "", outcome=text["outcome"] or "", actor_key_id=None if key_id is None else _uuid(key_id),
        actor_role=text["actor_role"], client_addr=text["client_addr"], method=text["method"], path=text["path"],
        query=_mapping(values.get("query")), resource_type=text["resource_type"], resource_id=text["resource_id"],
        status=None if status is None else int(status), detail=_mapping(values.get("detail")),
    )


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _datetime(value: Any) -> dt.datetime:
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _mapping(value: Any) -> dict[str, Any] | None:
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    return dict(value) if isinstance(value, Mapping) else None


def _chunks(ids: Sequence[uuid.UUID]) -> Iterable[list[uuid.UUID]]:
    for start in range(0, len(ids), _CHUNK):
        yield list(ids[start:start + _CHUNK])


# -- the position ----------------------------------------------------------------------------------------


def _position(conn: Connection, name: str) -> int:
    value = conn.execute(select(_cursor.c.seal_no).where(_cursor.c.name == name)).scalar()
    return int(value) if value is not None else 0


def _advance(engine: Engine, name: str, seal_no: int, now: dt.datetime) -> None:
    """Move the position ``name`` to ``seal_no``, never backwards (another relay may have gone further)."""
    with engine.connect() as conn:
        conn = conn.execution_options(sqlite_immediate=True)
        with conn.begin():
            moved = conn.execute(update(_cursor).where(_cursor.c.name == name, _cursor.c.seal_no < seal_no).values(seal_no=seal_no, updated_at=now)).rowcount
            if not moved and conn.execute(select(_cursor.c.name).where(_cursor.c.name == name)).first() is None:
                conn.execute(insert(_cursor).values(name=name, seal_no=seal_no, updated_at=now))


def relay_for(engine: Engine, config: AtnaConfig) -> AtnaRelay:
    """The relay of ``[audit.atna]`` with its configured transport (TLS files read now: a bad path fails at start)."""
    return AtnaRelay(engine, config, transport_for(config))


def relay_status(engine: Engine) -> dict[str, int]:
    """The relay's positions (``atna``, ``atna:open``), for the CLI and the task's result."""
    with engine.connect() as conn:
        return {CURSOR: _position(conn, CURSOR), OPEN_CURSOR: _position(conn, OPEN_CURSOR)}


__all__ = ["AUDIT_SEALS", "CURSOR", "OPEN_CURSOR", "AtnaRelay", "RelayResult", "SealReader", "SealedRow", "relay_for", "relay_status"]
