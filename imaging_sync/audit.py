"""The audit log: who touched which patient data, how, with what outcome, and whose data left.

Every edge writes through here: HTTP (the REST API), DICOM (C-FIND, C-MOVE,
C-GET) and the CLI for privileged actions. Three promises are kept here, once:

- **Before the answer.** An entry is committed before the data it records
  leaves. When it cannot be, the writer raises
  :class:`~imaging_sync.errors.AuditUnavailableError` and the edge refuses
  (HTTP 503 ``audit_unavailable``, a DIMSE failure status) instead of
  answering unrecorded.
- **Storable whatever the caller sent.** Every value of an entry goes
  through :func:`clean` (control characters escaped, strings and collections
  capped) before the insert: one NUL byte in a DICOM identifier made
  PostgreSQL refuse the JSONB insert after the matches had gone.
- **No patient data in a failure.** :class:`AuditUnavailableError` names the
  database error's class and SQLSTATE only (:func:`describe_failure`), and is
  raised ``from None``: the driver's text quoted the values being written.
  Log that, never the cause.

Two ways to write an entry:

:func:`record` / :func:`record_now`
    One entry for an access that is complete when its answer is ready (a REST
    request): the entry and its disclosures in one transaction.

:func:`begin` → :class:`AuditHandle` → :meth:`~AuditHandle.disclose` … → :meth:`~AuditHandle.finish`
    For an operation that streams patient data (C-FIND matches, C-MOVE and
    C-GET files). ``begin`` commits an entry of outcome ``started`` before the
    first match leaves, ``disclose`` commits the subjects and studies of the
    next batch before that batch leaves, ``finish`` appends the outcome. A
    process killed in between leaves the ``started`` entry::

        handle = audit.begin(engine, AuditEvent(channel="dicom", actor=calling_ae, action="c-find",
                                                client_addr=address, query=identifier_keys, resource_type="study"),
                             subject_ids=first.subject_ids, study_ids=first.study_ids)
        ...  # send the first batch; then for each next batch:
        handle.disclose(subject_ids=batch.subject_ids, study_ids=batch.study_ids)
        ...  # send it
        handle.finish("success", status=0x0000, detail={"matches": count})

Three tables, all append-only (the database refuses UPDATE and DELETE):
``audit_log`` (the entries), ``audit_completion`` (how a started entry
ended, one row at most per entry) and ``audit_disclosure`` (one row per
subject and per study an entry disclosed). :func:`search` answers "who has
seen patient X" (``subject=``) and lists entries by actor, resource and
time, each with its completion; :func:`entry` is "what happened to entry X".
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, String, Uuid, and_, bindparam, cast, func, literal_column, or_, select, true, union, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import Executable, Insert

from imaging_sync.db.direct import DirectStatement
from imaging_sync.db.models import AuditCompletion, AuditDisclosure, AuditEntry, Instance, Series, Study, table_of, utcnow
from imaging_sync.errors import AuditUnavailableError
from imaging_sync.ids import new_id
from imaging_sync.logs import describe_failure

_log = table_of(AuditEntry)
_completion = table_of(AuditCompletion)
_disclosure = table_of(AuditDisclosure)
# One statement for every entry, its values bound per call: building ``insert().values(...)``
# anew (and keying it for the compiled cache) cost more than the INSERT itself under API load.
_INSERT = _log.insert()
_INSERT_COMPLETION = _completion.insert()

STARTED = "started"
# How an access ended. Why a request failed is in ``status`` (HTTP or DICOM) and, for HTTP,
# ``detail.error`` (the error code: unauthenticated, forbidden, invalid, …).
FINAL_OUTCOMES = ("success", "denied", "not_found", "error")
# Every value of ``audit_log.outcome``: ``started`` is a two-step entry (:func:`begin`), whose
# final outcome is in its completion.
OUTCOMES = (STARTED, *FINAL_OUTCOMES)


@dataclass(frozen=True)
class AuditEvent:
    """One entry of the log, as an edge describes it (values are cleaned on the way in, see :func:`clean`).

    ``outcome`` is ``started`` for :func:`begin` (the default) and one of
    :data:`FINAL_OUTCOMES` for :func:`record`.
    """

    channel: str  # http | dicom | cli
    actor: str  # API key prefix, calling AE title, or cli:<account>@<host>
    action: str  # search, read, issue_url, trigger_sync, c-find, c-move, …
    outcome: str = STARTED
    actor_key_id: uuid.UUID | None = None
    actor_role: str | None = None
    client_addr: str | None = None
    method: str | None = None
    path: str | None = None
    query: dict[str, Any] | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    status: int | None = None
    detail: dict[str, Any] | None = None
    at: dt.datetime = field(default_factory=utcnow)


_FIELDS = tuple(f.name for f in fields(AuditEvent))
# The columns an entry's INSERT writes: seq and txid are the database's (imaging_sync.audit_seals).
_FIELDS_AND_ID = frozenset(("id", *_FIELDS))


# -- cleaning: every value storable, every value bounded ---------------------------------------------

MAX_TEXT = 256  # characters of one string inside ``query`` or ``detail`` (a longer one ends in "…")
MAX_KEY = 64  # characters of a mapping key
MAX_ITEMS = 64  # entries of one list or mapping (the rest is counted: "… 12 more")
MAX_DEPTH = 4  # nesting of lists and mappings
MAX_CHARS = 8192  # characters of all the strings of one field together
MAX_PATH = 1024  # characters of ``path`` (a TEXT column)
TRUNCATED = "…"

# C0 and C1 control characters and DEL (NUL is refused by PostgreSQL TEXT and JSONB; the others
# can forge lines in a log or an export), and lone surrogates (no encoding can store them).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


class _Budget:
    __slots__ = ("left",)

    def __init__(self, chars: int) -> None:
        self.left = chars


def clean(value: Any, *, max_text: int = MAX_TEXT) -> Any:
    """``value`` as the audit log stores it: the one function every value of every entry goes through.

    - In every string, at any depth (mapping keys too), each control
      character (C0, DEL, C1) and lone surrogate is spelled out as ``\\xNN``
      or ``\\uNNNN``: what was sent stays readable, and PostgreSQL's TEXT and
      JSONB (which refuse NUL) can store it.
    - A string longer than ``max_text`` (a key: :data:`MAX_KEY`) is cut and
      ends in ``…``; a list or mapping keeps its first :data:`MAX_ITEMS`
      entries and says how many more there were; nesting deeper than
      :data:`MAX_DEPTH` becomes ``…``; once the strings of one value add up to
      :data:`MAX_CHARS`, the remaining entries are counted, not kept.
    - Tuples, sets and other sequences become lists, bytes become text
      (undecodable bytes as ``\\xNN``), UUIDs, dates and numbers stay as they
      are, anything else becomes its ``str()``.

    Callers need not call it: :func:`record`, :func:`begin`, ``disclose`` and
    ``finish`` apply it to every field. It is public for edges that show or
    log a value the way the audit log keeps it.
    """
    return _clean(value, 0, _Budget(MAX_CHARS), max_text)


def _clean(value: Any, depth: int, budget: _Budget, max_text: int) -> Any:
    if value is None or isinstance(value, (bool, int, float, uuid.UUID, dt.date, dt.time)):
        return value
    if isinstance(value, str):
        return _text(value, max_text, budget)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _text(bytes(value).decode("utf-8", "backslashreplace"), max_text, budget)
    if isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            return TRUNCATED
        result: dict[str, Any] = {}
        for i, (key, item) in enumerate(value.items()):
            if i >= MAX_ITEMS or budget.left <= 0:
                result[TRUNCATED] = f"{len(value) - i} more"
                break
            result[_text(key if isinstance(key, str) else str(key), MAX_KEY, budget)] = _clean(item, depth + 1, budget, max_text)
        return result
    if isinstance(value, Iterable):
        if depth >= MAX_DEPTH:
            return TRUNCATED
        items = list(value) if not isinstance(value, (list, tuple)) else value
        cleaned: list[Any] = []
        for i, item in enumerate(items):
            if i >= MAX_ITEMS or budget.left <= 0:
                cleaned.append(f"{TRUNCATED} {len(items) - i} more")
                break
            cleaned.append(_clean(item, depth + 1, budget, max_text))
        return cleaned
    return _text(str(value), max_text, budget)


def _text(value: str, limit: int, budget: _Budget) -> str:
    text = _CONTROL.sub(_escape, value)
    limit = max(1, min(limit, budget.left))
    if len(text) > limit:
        text = text[: limit - 1] + TRUNCATED
    budget.left -= len(text)
    return text if type(text) is str else str.__str__(text)


def _column_limit(name: str) -> int:
    length = getattr(_log.c[name].type, "length", None)
    return int(length) if length else MAX_PATH


_TEXT_LIMITS = {name: _column_limit(name) for name in ("channel", "actor", "actor_role", "client_addr", "action", "method", "path", "resource_type", "resource_id")}


def _entry_values(event: AuditEvent) -> dict[str, Any]:
    values = {name: getattr(event, name) for name in _FIELDS}  # shallow: asdict's deep copy showed in profiles
    for name, limit in _TEXT_LIMITS.items():
        if values[name] is not None:
            values[name] = _text(values[name] if isinstance(values[name], str) else str(values[name]), limit, _Budget(limit))
    values["query"] = clean(event.query)
    values["detail"] = clean(event.detail)
    values["id"] = new_id()
    return values


# -- failures: typed, and free of patient data ---------------------------------------------------------


def _unavailable(error: BaseException) -> AuditUnavailableError:
    return AuditUnavailableError(f"the audit log could not record the access: {describe_failure(error)}")


@contextmanager
def _own_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction of our own for one write; database failures become :class:`AuditUnavailableError`.

    PostgreSQL: the connection is in autocommit and every write here is one
    statement (entry and disclosures together, see :func:`_write`), so each
    commits as it runs, durably (``synchronous_commit``), with no BEGIN and
    COMMIT round trips. SQLite: BEGIN IMMEDIATE … COMMIT (the write lock
    taken up front, waiting for ``busy_timeout``).
    """
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="AUTOCOMMIT")  # reset when the pool takes it back
                yield conn
            else:
                conn.execution_options(sqlite_immediate=True)
                with conn.begin():
                    yield conn
    except SQLAlchemyError as error:
        raise _unavailable(error) from None


# -- disclosures: one statement per batch ---------------------------------------------------------------

_SOURCES = ("subject_ids", "study_ids", "series_ids", "instance_ids")
_KINDS = {"subject_ids": literal_column("'subject'", String(8)), "study_ids": literal_column("'study'", String(8))}
_SUBJECT, _STUDY = _KINDS["subject_ids"], _KINDS["study_ids"]


@dataclass(frozen=True)
class _Disclosed:
    """One batch's ids, each list without repeats and without the ids already written for the entry.

    Subjects and studies are written as given; series and instances stand
    for their study and subject.
    """

    subject_ids: tuple[uuid.UUID, ...] = ()
    study_ids: tuple[uuid.UUID, ...] = ()
    series_ids: tuple[uuid.UUID, ...] = ()
    instance_ids: tuple[uuid.UUID, ...] = ()

    @classmethod
    def of(cls, seen: set[uuid.UUID] | None = None, **ids: Iterable[uuid.UUID | None] | None) -> _Disclosed:
        """The ids not in ``seen`` (those already written for the entry), each once."""
        lists = {}
        for name in _SOURCES:
            fresh = [i for i in dict.fromkeys(ids.get(name) or ()) if i is not None]  # in order, each once
            if not all(isinstance(i, uuid.UUID) for i in fresh):
                fresh = [i if isinstance(i, uuid.UUID) else uuid.UUID(str(i)) for i in fresh]
            lists[name] = tuple(i for i in fresh if i not in seen) if seen else tuple(fresh)
        return cls(**lists)

    def ids(self) -> Iterator[uuid.UUID]:
        for name in _SOURCES:
            yield from getattr(self, name)

    @property
    def shape(self) -> tuple[bool, ...]:
        return tuple(bool(getattr(self, name)) for name in _SOURCES)

    def __bool__(self) -> bool:
        return any(self.shape)

    def params(self, dialect: str) -> dict[str, str]:
        """Each non-empty list as one text parameter (see :func:`_id_list`)."""
        return {name: _id_text(dialect, ids) for name in _SOURCES if (ids := getattr(self, name))}


def _id_text(dialect: str, ids: Iterable[uuid.UUID]) -> str:
    """Ids as one string: comma-separated on PostgreSQL, a JSON array on SQLite; 32 hex digits each
    (PostgreSQL's uuid input takes them, SQLite's UUID columns hold them)."""
    hexes = [i.hex for i in ids]
    return ",".join(hexes) if dialect == "postgresql" else '["' + '","'.join(hexes) + '"]'


def _id_list(dialect: str, name: str) -> Any:
    """A list of ids bound as one text parameter, as a one-column table (``value``).

    One text parameter rather than an array of UUIDs: psycopg's array
    adaptation was most of the client's cost of a disclosure (0.36 of 0.49 ms
    of CPU for a page of 50 studies and their subjects), and the statement's
    text stays the same whatever the list's length (psycopg prepares it
    once, the server plans it once).
    """
    if dialect == "postgresql":
        ids = cast(func.string_to_array(bindparam(name, type_=String()), literal_column("','")), postgresql.ARRAY(Uuid()))
        return func.unnest(ids).table_valued("value").render_derived(name=name)
    return func.json_each(bindparam(name, type_=String())).table_valued("value").alias(name)


@functools.lru_cache(maxsize=64)
def _disclosure_insert(dialect: str, shape: tuple[bool, ...], with_entry: bool) -> Executable:
    """``INSERT INTO audit_disclosure … SELECT`` one batch: one statement, whatever its size.

    The subjects and studies given are new to the entry (:meth:`_Disclosed.of`),
    so they are a plain INSERT of a UNION ALL. Series and instances stand for
    their study and subject, looked up in the same statement (no round trip
    to find them first); since those may have been recorded already, that
    shape is a de-duplicating UNION with ON CONFLICT DO NOTHING, which costs
    more (measured on a page of 50 studies and their 50 subjects: 0.92 ms
    plain, 1.06 ms as that union). ``with_entry`` (PostgreSQL) puts the
    entry's own INSERT in a WITH clause, so an entry and its first
    disclosures commit together in one round trip.
    """
    present = dict(zip(_SOURCES, shape, strict=True))
    branches: list[Any] = []
    for name in ("subject_ids", "study_ids"):
        if present[name]:
            ids = _id_list(dialect, name)
            branches.append(select(ids.c.value.label("entity_id"), _KINDS[name].label("kind")))
    owners = [(name, owner) for name, owner in (("series_ids", _series_owners), ("instance_ids", _instance_owners)) if present[name]]
    for name, owner in owners:
        ids = _id_list(dialect, name)
        study_id, subject_id, condition = owner(select(ids.c.value))
        branches.append(select(study_id.label("entity_id"), _STUDY.label("kind")).where(condition))
        branches.append(select(subject_id.label("entity_id"), _SUBJECT.label("kind")).where(condition))
    # union()/union_all() are called through Any: mypy 2.4 crashes inferring their overloads over a list of selects.
    combine: Any = union if owners else union_all
    combined = branches[0] if len(branches) == 1 else combine(*branches)
    rows = combined.subquery("disclosed")
    source = select(rows.c.entity_id, bindparam("audit_id", type_=Uuid()), rows.c.kind)
    columns = ["entity_id", "audit_id", "kind"]
    statement: Insert
    if owners:
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_disclosure)
        statement = insert.from_select(columns, source.where(true())).on_conflict_do_nothing()  # WHERE: SQLite's upsert after SELECT needs one
    else:
        statement = _disclosure.insert().from_select(columns, source)
    if with_entry:
        entry = _log.insert().values({c.name: bindparam(f"entry_{c.name}", type_=c.type) for c in _log.c if c.name in _FIELDS_AND_ID}).cte("entry")
        statement = statement.add_cte(entry)
    return statement


@functools.lru_cache(maxsize=16)
def _entry_with_disclosures(shape: tuple[bool, ...]) -> DirectStatement:
    """An entry and its first disclosures in one statement on PostgreSQL, run on the driver: every answer that shows
    patient data writes one, a viewer's every frame among them (:mod:`imaging_sync.db.direct`)."""
    return DirectStatement(_disclosure_insert("postgresql", shape, True))


def _series_owners(ids: Any) -> tuple[Any, Any, Any]:
    """(study id, subject id, condition) of the series in ``ids``."""
    series, study = table_of(Series), table_of(Study)
    return series.c.study_id, study.c.subject_id, and_(series.c.id.in_(ids), study.c.id == series.c.study_id)


def _instance_owners(ids: Any) -> tuple[Any, Any, Any]:
    """(study id, subject id, condition) of the instances in ``ids``."""
    instance, series, study = table_of(Instance), table_of(Series), table_of(Study)
    return series.c.study_id, study.c.subject_id, and_(instance.c.id.in_(ids), series.c.id == instance.c.series_id, study.c.id == series.c.study_id)


def _write(conn: Connection, values: dict[str, Any], disclosed: _Disclosed) -> None:
    """The entry and its first disclosures: one statement on PostgreSQL, two in the caller's transaction elsewhere."""
    dialect = conn.dialect.name
    if disclosed and dialect == "postgresql":
        params = {f"entry_{name}": value for name, value in values.items()}
        _entry_with_disclosures(disclosed.shape).rows(conn, {**params, "audit_id": values["id"], **disclosed.params(dialect)})
        return
    conn.execute(_INSERT, values)
    if disclosed:
        _write_disclosures(conn, values["id"], disclosed)


def _write_disclosures(conn: Connection, audit_id: uuid.UUID, disclosed: _Disclosed) -> None:
    dialect = conn.dialect.name
    conn.execute(_disclosure_insert(dialect, disclosed.shape, False), {"audit_id": audit_id, **disclosed.params(dialect)})


# -- writing --------------------------------------------------------------------------------------------


def record(
    conn: Connection,
    event: AuditEvent,
    *,
    subject_ids: Iterable[uuid.UUID] | None = None,
    study_ids: Iterable[uuid.UUID] | None = None,
    series_ids: Iterable[uuid.UUID] | None = None,
    instance_ids: Iterable[uuid.UUID] | None = None,
) -> uuid.UUID:
    """Write a complete entry within the caller's transaction (the access and its record commit together).

    ``event.outcome`` is final (one of :data:`FINAL_OUTCOMES`). The ids name
    whose data the answer carries (see :meth:`AuditHandle.disclose`). Returns
    the entry's id. Raises :class:`AuditUnavailableError` when the database
    refuses (the caller's transaction is then unusable: roll it back and do
    not answer); ``ValueError`` for an outcome that is not final.

    On PostgreSQL an entry with disclosures is one statement, so a connection
    in autocommit writes it atomically (the REST API's request connection is).
    """
    if event.outcome not in FINAL_OUTCOMES:
        raise ValueError(f"record() takes a final outcome, not {event.outcome!r} (a started entry is begin()'s)")
    values = _entry_values(event)
    disclosed = _Disclosed.of(subject_ids=subject_ids, study_ids=study_ids, series_ids=series_ids, instance_ids=instance_ids)
    try:
        _write(conn, values, disclosed)
    except SQLAlchemyError as error:
        raise _unavailable(error) from None
    entry_id: uuid.UUID = values["id"]
    return entry_id


def record_now(engine: Engine, event: AuditEvent, **disclosed: Iterable[uuid.UUID] | None) -> uuid.UUID:
    """:func:`record` in a transaction of its own (for accesses that wrote nothing else), committed on return."""
    with _own_transaction(engine) as conn:
        return record(conn, event, **disclosed)


def begin(
    engine: Engine,
    event: AuditEvent,
    *,
    subject_ids: Iterable[uuid.UUID] | None = None,
    study_ids: Iterable[uuid.UUID] | None = None,
    series_ids: Iterable[uuid.UUID] | None = None,
    instance_ids: Iterable[uuid.UUID] | None = None,
) -> AuditHandle:
    """Commit an entry of outcome ``started`` for an operation about to stream patient data.

    Call it before the first match, URL or file leaves; pass that first
    batch's ids (as for :meth:`AuditHandle.disclose`) to commit them in the
    same statement. If it raises :class:`AuditUnavailableError`, nothing was
    recorded and nothing may be sent: refuse the operation. Leave
    ``event.outcome`` at its default (``started``); everything else is the
    entry's final content except the outcome, status and detail of its end
    (:meth:`AuditHandle.finish`).

    Durable on return: PostgreSQL commits synchronously; SQLite's WAL commit
    survives the process being killed (not a power cut: ``synchronous=NORMAL``).
    """
    if event.outcome != STARTED:
        raise ValueError(f"begin() writes a started entry; {event.outcome!r} is for record()")
    values = _entry_values(event)
    disclosed = _Disclosed.of(subject_ids=subject_ids, study_ids=study_ids, series_ids=series_ids, instance_ids=instance_ids)
    with _own_transaction(engine) as conn:
        _write(conn, values, disclosed)
    return AuditHandle(engine, values["id"], set(disclosed.ids()))


class AuditHandle:
    """A started entry (from :func:`begin`): disclose each batch before it leaves, finish once at the end.

    One operation's handle, used by the thread that runs the operation (not
    thread-safe). Each call is one transaction of its own, committed before
    it returns.
    """

    __slots__ = ("id", "_engine", "_seen", "_finished")

    def __init__(self, engine: Engine, entry_id: uuid.UUID, seen: set[uuid.UUID]) -> None:
        self.id = entry_id  # the entry's id in audit_log
        self._engine = engine
        self._seen = seen
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def disclose(
        self,
        subject_ids: Iterable[uuid.UUID] | None = None,
        study_ids: Iterable[uuid.UUID] | None = None,
        *,
        series_ids: Iterable[uuid.UUID] | None = None,
        instance_ids: Iterable[uuid.UUID] | None = None,
    ) -> None:
        """Record whose data the next batch carries; call it before the batch leaves.

        ``subject_ids`` and ``study_ids`` are the service's ids (``subject.id``,
        ``study.id``) of the patients and studies in the batch: a study-level
        match discloses its study and its subject, a patient-level match its
        subject. ``series_ids`` and ``instance_ids`` stand for their study and
        subject, looked up in the same statement (a C-MOVE of instances need
        not find them first). Ids already recorded for this entry are skipped
        without a round trip; the rest go in one INSERT, committed on return.

        Raises :class:`AuditUnavailableError` when the insert fails: the batch
        must not be sent; stop the operation with a failure status and
        :meth:`finish` it as ``error``. ``RuntimeError`` after :meth:`finish`.
        """
        if self._finished:
            raise RuntimeError("the audit entry is finished: nothing more may be disclosed under it")
        subject_ids, study_ids, series_ids, instance_ids = (tuple(ids or ()) for ids in (subject_ids, study_ids, series_ids, instance_ids))
        seen = self._seen
        if all(i in seen for group in (subject_ids, study_ids, series_ids, instance_ids) for i in group):
            return  # already written: a retrieve discloses the same study file after file
        disclosed = _Disclosed.of(self._seen, subject_ids=subject_ids, study_ids=study_ids, series_ids=series_ids, instance_ids=instance_ids)
        if not disclosed:
            return
        with _own_transaction(self._engine) as conn:
            _write_disclosures(conn, self.id, disclosed)
        self._seen.update(disclosed.ids())  # only once written: a failed batch is written again if retried

    def finish(self, outcome: str, *, status: int | None = None, detail: dict[str, Any] | None = None) -> None:
        """Append how the operation ended: ``outcome`` (one of :data:`FINAL_OUTCOMES`), the HTTP or DIMSE
        ``status`` and a ``detail`` mapping (counts, error codes, seconds; cleaned like the entry's).

        Call it exactly once, whatever happened (success, failure, cancel, the
        peer going away). Raises :class:`AuditUnavailableError` when the row
        cannot be written: the ``started`` entry still records the access, so
        log :func:`describe_failure` of it and go on. ``ValueError`` for an
        outcome that is not final, ``RuntimeError`` when already finished.
        """
        if outcome not in FINAL_OUTCOMES:
            raise ValueError(f"unknown final audit outcome {outcome!r}")
        if self._finished:
            raise RuntimeError("the audit entry is already finished")
        values = {"audit_id": self.id, "at": utcnow(), "outcome": outcome, "status": status, "detail": clean(detail)}
        with _own_transaction(self._engine) as conn:
            conn.execute(_INSERT_COMPLETION, values)
        self._finished = True


# -- reading --------------------------------------------------------------------------------------------

_ENTRY_COLUMNS = tuple(c.name for c in _log.c)
_COMPLETION_COLUMNS = ("at", "outcome", "status", "detail")


def search(
    conn: Connection,
    *,
    actor: str | None = None,
    resource: str | None = None,
    subject: uuid.UUID | None = None,
    study: uuid.UUID | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
    before_id: uuid.UUID | None = None,
) -> list[dict[str, Any]]:
    """Entries newest first, each with ``completion`` (``None``, or its ``at``, ``outcome``, ``status``, ``detail``).

    ``actor`` is what the entry names as its actor (key prefix, AE title,
    ``cli:<account>@<host>``) or, when it is a UUID, the API key's id. ``resource`` is
    ``type`` or ``type:id``. ``subject`` and ``study`` keep the entries that
    disclosed that subject or study, whatever the channel: "who has seen
    patient X" (a range of ``audit_disclosure``'s primary key, newest first).
    ``before_id`` continues a listing after its last entry's id.
    """
    source: Any = _log.outerjoin(_completion, _completion.c.audit_id == _log.c.id)
    key = _log.c.id  # UUIDv7: time-ordered
    for kind, entity in (("subject", subject), ("study", study)):
        if entity is not None:
            disclosed = _disclosure.alias(f"disclosed_{kind}")
            source = source.join(disclosed, and_(disclosed.c.audit_id == _log.c.id, disclosed.c.entity_id == entity, disclosed.c.kind == kind))
            key = disclosed.c.audit_id  # order and continue along the disclosure's key
    conditions = []
    if actor:
        key_id = _as_uuid(actor)
        conditions.append(_log.c.actor == actor if key_id is None else or_(_log.c.actor == actor, _log.c.actor_key_id == key_id))
    if resource:
        kind, _, ident = resource.partition(":")
        conditions.append(_log.c.resource_type == kind)
        if ident:
            conditions.append(_log.c.resource_id == ident)
    if since:
        conditions.append(_log.c.at >= since)
    if until:
        conditions.append(_log.c.at < until)
    if before_id:
        conditions.append(key < before_id)
    stmt = select(*_log.c, *(_completion.c[name].label(f"completion_{name}") for name in _COMPLETION_COLUMNS)).select_from(source)
    stmt = stmt.where(*conditions).order_by(key.desc()).limit(limit)
    return [_entry_of(row) for row in conn.execute(stmt).mappings()]


def entry(conn: Connection, audit_id: uuid.UUID) -> dict[str, Any] | None:
    """What happened to entry ``audit_id``: the entry with its ``completion``, as :func:`search` gives it; None if unknown."""
    source = _log.outerjoin(_completion, _completion.c.audit_id == _log.c.id)
    stmt = select(*_log.c, *(_completion.c[name].label(f"completion_{name}") for name in _COMPLETION_COLUMNS)).select_from(source).where(_log.c.id == audit_id)
    row = conn.execute(stmt).mappings().first()
    return None if row is None else _entry_of(row)


def disclosed_by(conn: Connection, audit_id: uuid.UUID) -> dict[str, list[uuid.UUID]]:
    """The subjects and studies entry ``audit_id`` disclosed: ``{"subject": [...], "study": [...]}``, ids sorted."""
    rows = conn.execute(select(_disclosure.c.kind, _disclosure.c.entity_id).where(_disclosure.c.audit_id == audit_id).order_by(_disclosure.c.entity_id))
    result: dict[str, list[uuid.UUID]] = {"subject": [], "study": []}
    for kind, entity_id in rows:
        result.setdefault(kind, []).append(entity_id)
    return result


def _entry_of(row: RowMapping) -> dict[str, Any]:
    result = {name: row[name] for name in _ENTRY_COLUMNS}
    result["completion"] = None if row["completion_at"] is None else {name: row[f"completion_{name}"] for name in _COMPLETION_COLUMNS}
    return result


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


__all__ = [
    "FINAL_OUTCOMES", "OUTCOMES", "STARTED", "AuditEvent", "AuditHandle", "AuditUnavailableError", "begin", "clean",
    "disclosed_by", "entry", "record", "record_now", "search",
]
