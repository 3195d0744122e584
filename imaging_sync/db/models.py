"""The federated index.

Entities (subject → study → series → instance) carry our own UUIDv7 keys and
the DICOM identity that merges partners: the same UID from two partners is one
row. Which partner has which entity, under which partner id, is recorded in
``entity_link``; where each partner keeps each file is ``instance_location``.

Relationships point only from child to parent and never load implicitly
(``lazy="raise"``): changing an instance never loads its series or study.
Entities are soft-deleted (``deleted_at``) when no partner has them any more.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, cast

from sqlalchemy import BigInteger, Boolean, Date, FetchedValue, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text, UniqueConstraint, Uuid, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from imaging_sync.db.types import JSONType, UTCDateTime
from imaging_sync.ids import new_id

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {uuid.UUID: Uuid(), dt.datetime: UTCDateTime(), dict[str, Any]: JSONType}


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class, for set-based statements (``insert``, ``update``, COPY).

    SQLAlchemy types ``__table__`` as a ``FromClause`` because a mapped class
    may be mapped to any selectable; every class here is mapped to a plain
    ``Table`` (``__tablename__``), so the narrowing is stated once, here.
    """
    return cast(Table, model.__table__)


class _Entity:
    """Columns every federated entity has: identity, provenance of its values, lifecycle."""

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    # The partner whose values the row currently shows (highest priority that has it).
    source_partner: Mapped[str] = mapped_column(String(63))
    source_priority: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Subject(_Entity, Base):
    __tablename__ = "subject"
    __table_args__ = (
        UniqueConstraint("issuer", "patient_id"),
        Index(None, "patient_id"),
        Index(None, "patient_name_search"),
    )

    issuer: Mapped[str] = mapped_column(String(64))  # "" when the partner sent none
    patient_id: Mapped[str] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(200))
    patient_name_search: Mapped[str | None] = mapped_column(String(200))
    # person_names.name_words of the name, each after a space (" hong gildong"): see query.names.stored_words.
    # Text: compatibility folding can lengthen a name (NFKD of "ﷺ" is 18 characters).
    patient_name_words: Mapped[str | None] = mapped_column(Text)
    birth_date: Mapped[dt.date | None] = mapped_column(Date)
    sex: Mapped[str | None] = mapped_column(String(16))


class SubjectNameToken(Base):
    """One word of a subject's name (person_names.name_words): the REST word search's index (migration 0008).

    A word prefix ``w`` is the range ``w <= token < w with its last character
    incremented``, a B-tree range scan in code-point order on both databases
    (SQLite compares UTF-8 bytes; PostgreSQL does with ``COLLATE "C"``, where a
    linguistic collation would order "Hong" between "hong" and "hoo" and rule
    the range out). Kept by catalog.facts.refresh_name_tokens in each sync
    page's transaction; rows of a deleted subject go with it.
    """

    __tablename__ = "subject_name_token"
    __table_args__ = (Index(None, "subject_id"),)

    token: Mapped[str] = mapped_column(String(64).with_variant(String(64, collation="C"), "postgresql"), primary_key=True)
    subject_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subject.id", ondelete="CASCADE"), primary_key=True)


class Study(_Entity, Base):
    __tablename__ = "study"
    __table_args__ = (
        Index(None, "subject_id"),
        Index(None, "accession_number"),
        Index(None, "study_date"),
        Index(None, "study_date", "id"),  # keyset pagination of study searches
        # A patient's studies in listing order, index-only (the API's name and patient searches; migration 0005).
        Index(None, "subject_id", "study_date", "id", "deleted_at"),
        # Live studies newest first with the patient's name beside them: a name matching many patients is
        # one index-only scan (migration 0007; the words since 0008). Partial, so every entry is a live study.
        Index(
            "ix_study_live_date_id_name",
            "study_date",
            "id",
            postgresql_include=["patient_name_search", "patient_name_words"],
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
    )

    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    subject_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subject.id"))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[dt.date | None] = mapped_column(Date)
    study_time: Mapped[str | None] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(64))
    referring_physician_name: Mapped[str | None] = mapped_column(String(200))
    # person_names.search_form of referring_physician_name: every stored PN matches the same way (query.names; migration 0010).
    # Text, as the name words: compatibility folding can lengthen a name.
    referring_physician_name_search: Mapped[str | None] = mapped_column(Text)
    # The subject's patient_name_search and patient_name_words, copied for name searches (catalog.facts.copy_patient_names).
    patient_name_search: Mapped[str | None] = mapped_column(String(200))
    patient_name_words: Mapped[str | None] = mapped_column(Text)
    # Facts of its live series, kept by catalog.facts.refresh (migration 0006): what every search result shows.
    modalities: Mapped[str] = mapped_column(String(200), default="", server_default="")  # sorted, joined by "\\"
    series_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    instance_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    partners: Mapped[str] = mapped_column(Text, default="", server_default="")  # sorted, joined by ","

    subject: Mapped[Subject] = relationship(lazy="raise")


class Series(_Entity, Base):
    __tablename__ = "series"
    __table_args__ = (Index(None, "study_id"), Index(None, "modality"))

    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("study.id"))
    modality: Mapped[str] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(64))
    body_part_examined: Mapped[str | None] = mapped_column(String(16))
    # Kept by catalog.facts.refresh (migration 0006), as for Study.
    instance_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    partners: Mapped[str] = mapped_column(Text, default="", server_default="")

    study: Mapped[Study] = relationship(lazy="raise")


class Instance(_Entity, Base):
    __tablename__ = "instance"
    __table_args__ = (Index(None, "series_id"),)

    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("series.id"))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)

    series: Mapped[Series] = relationship(lazy="raise")


class EntityLink(Base):
    """Provenance: partner P has entity E (under P's id X) as part of P's study S.

    ``partner_study_id`` is the partner id of the study snapshot that listed the
    entity; a new snapshot of S removes the links it no longer lists. ``attrs``
    keeps this partner's own values so a lower-priority partner's values can
    take over when a higher one drops the entity.
    """

    __tablename__ = "entity_link"
    __table_args__ = (
        UniqueConstraint("partner", "entity_type", "entity_id", "partner_study_id"),
        Index(None, "partner", "partner_study_id"),
        Index(None, "entity_type", "entity_id"),
        Index(None, "partner", "entity_type", "partner_entity_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    partner: Mapped[str] = mapped_column(String(63))
    entity_type: Mapped[str] = mapped_column(String(16))  # subject | study | series | instance
    entity_id: Mapped[uuid.UUID] = mapped_column(Uuid())
    partner_entity_id: Mapped[str] = mapped_column(String(128))
    partner_study_id: Mapped[str] = mapped_column(String(128))
    content_hash: Mapped[str] = mapped_column(String(64))
    attrs: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class InstanceLocation(Base):
    """Where one partner keeps one instance's file: always bucket and key, never a path."""

    __tablename__ = "instance_location"
    __table_args__ = (UniqueConstraint("instance_id", "partner"), Index(None, "partner", "bucket"))

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    instance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("instance.id"))
    partner: Mapped[str] = mapped_column(String(63))
    bucket: Mapped[str] = mapped_column(String(63))
    key: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class InstanceHeader(Base):
    """An instance file's header, read once from one partner's copy (``imaging_sync.dicom_header``), for DICOMweb.

    ``attributes`` is the DICOM JSON of every attribute but bulk data (whose
    ``BulkDataURI`` is a key of ``bulk``: its byte range in the file), kept as
    JSON text: a series' metadata is the texts joined, never parsed and
    serialised again per request (a 500-instance series: 70 ms of CPU that way);
    ``frames`` the byte ranges of each pixel frame. Kept with the copy's
    ETag and size: a read that finds another ETag drops the row and reads
    again. A header that could not be read is a row with ``failure`` (the
    error's kind) and no attributes, so the background reader records and
    retries it instead of crashing on it.
    """

    __tablename__ = "instance_header"

    instance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("instance.id"), primary_key=True)
    partner: Mapped[str] = mapped_column(String(63))
    bucket: Mapped[str | None] = mapped_column(String(63))
    key: Mapped[str | None] = mapped_column(String(1024))
    etag: Mapped[str | None] = mapped_column(String(128))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64))
    attributes: Mapped[str | None] = mapped_column(Text)
    bulk: Mapped[dict[str, Any] | None] = mapped_column()
    frames: Mapped[list[Any] | None] = mapped_column(JSONType)
    failure: Mapped[str | None] = mapped_column(String(32))
    read_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PartnerState(Base):
    """Per-partner bookmark: the largest partner ``updated_at`` fully committed."""

    __tablename__ = "partner_state"

    partner: Mapped[str] = mapped_column(String(63), primary_key=True)
    bookmark: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_run_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    last_success_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SyncRun(Base):
    __tablename__ = "sync_run"
    __table_args__ = (Index(None, "partner", "started_at"), Index(None, "status"))

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    partner: Mapped[str] = mapped_column(String(63))
    # a RunStatus (imaging_sync/statuses.py): queued | running | succeeded | failed | skipped | abandoned
    status: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(16), default="cli")
    full: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    since: Mapped[dt.datetime | None] = mapped_column(default=None)
    pages: Mapped[int] = mapped_column(Integer, default=0)
    fetched: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    deleted: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    instances: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    error_kind: Mapped[str | None] = mapped_column(String(32), default=None)
    host: Mapped[str | None] = mapped_column(String(255), default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)


class RejectedItem(Base):
    __tablename__ = "rejected_item"
    __table_args__ = (Index(None, "partner", "created_at"), Index(None, "run_id"))

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sync_run.id"))
    partner: Mapped[str] = mapped_column(String(63))
    partner_item_id: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # validation | mapping
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; ``prefix`` finds it and is safe to show."""

    __tablename__ = "api_key"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))  # viewer | operator | auditor
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class AuditEntry(Base):
    """Append-only record of every access to patient data and every privileged action.

    On PostgreSQL a trigger rejects UPDATE, DELETE and TRUNCATE (migration 0002).
    An entry of outcome ``started`` is an operation that streams patient data;
    how it ended is its :class:`AuditCompletion`. Whose data it disclosed is in
    :class:`AuditDisclosure`. Written only through :mod:`imaging_sync.audit`.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "at"), Index(None, "actor", "at"), Index(None, "resource_type", "resource_id"))

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    channel: Mapped[str] = mapped_column(String(8))  # http | dicom | cli
    actor: Mapped[str] = mapped_column(String(128))  # api key prefix, AE title, or "cli:<account>@<host>"
    actor_key_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    actor_role: Mapped[str | None] = mapped_column(String(16), default=None)
    client_addr: Mapped[str | None] = mapped_column(String(64), default=None)
    action: Mapped[str] = mapped_column(String(32))  # e.g. search, read, issue_url, trigger_sync, c-find
    method: Mapped[str | None] = mapped_column(String(16), default=None)
    path: Mapped[str | None] = mapped_column(Text, default=None)
    query: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    resource_type: Mapped[str | None] = mapped_column(String(32), default=None)
    resource_id: Mapped[str | None] = mapped_column(String(128), default=None)
    outcome: Mapped[str] = mapped_column(String(16))  # started | success | denied | not_found | error (audit.OUTCOMES)
    status: Mapped[int | None] = mapped_column(Integer, default=None)
    detail: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Written by the database, never by us (PostgreSQL: audit_seq and the writing transaction's id; NULL on
    # SQLite, where rowid orders the rows): what a seal covers, in which order (imaging_sync.audit_seals).
    seq: Mapped[int | None] = mapped_column(BigInteger, server_default=FetchedValue())
    txid: Mapped[int | None] = mapped_column(BigInteger, server_default=FetchedValue())


class AuditCompletion(Base):
    """How a two-step entry (outcome ``started``, :func:`imaging_sync.audit.begin`) ended.

    At most one per entry (the key is the entry's id). A separate row rather
    than an update: the log stays append-only, and an entry without its
    completion is the trace of an operation that never ended (its process
    died). Append-only like the log (migration 0009).
    """

    __tablename__ = "audit_completion"

    audit_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audit_log.id"), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16))  # success | denied | not_found | error
    status: Mapped[int | None] = mapped_column(Integer, default=None)
    detail: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Written by the database, never by us (PostgreSQL: audit_seq and the writing transaction's id; NULL on
    # SQLite, where rowid orders the rows): what a seal covers, in which order (imaging_sync.audit_seals).
    seq: Mapped[int | None] = mapped_column(BigInteger, server_default=FetchedValue())
    txid: Mapped[int | None] = mapped_column(BigInteger, server_default=FetchedValue())


class AuditDisclosure(Base):
    """One subject or study whose data an audit entry's answer carried: "who has seen patient X".

    The key starts with the entity, so the entries that disclosed one subject
    are a range of the primary key in entry (= time) order; the second index
    lists what one entry disclosed. Ids only, and no foreign key to the
    entity: the record must outlive the index's rows. No foreign key to the
    entry either: only :mod:`imaging_sync.audit` writes here, in the entry's
    own statement or after it, and the key check cost 4 µs a row (0.4 ms on
    a C-FIND page of 50 studies). Append-only like the log (migration 0009).
    """

    __tablename__ = "audit_disclosure"
    __table_args__ = (Index(None, "audit_id"),)

    entity_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    audit_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # subject | study
    # Written by the database, never by us (PostgreSQL: audit_seq and the writing transaction's id; NULL on
    # SQLite, where rowid orders the rows): what a seal covers, in which order (imaging_sync.audit_seals).
    seq: Mapped[int | None] = mapped_column(BigInteger, server_default=FetchedValue())
    txid: Mapped[int | None] = mapped_column(BigInteger, server_default=FetchedValue())


class AuditSeal(Base):
    """One seal over the audit rows written since the previous one (:mod:`imaging_sync.audit_seals`).

    ``rows`` lists what it covers, in order (table code, seq, first 8 bytes of
    the row's hash, 17 bytes a row), so that ``audit verify`` can name the
    first row changed, removed or slipped in; ``digest`` is the SHA-256 over
    them, ``hash`` the seal's own, chained through ``prev_hash``. PostgreSQL:
    the rows whose transaction id is in ``[lo, hi)``; SQLite: ``ranges``,
    each table's rowids after the previous seal's. Append-only.
    """

    __tablename__ = "audit_seal"

    seal_no: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    sealed_at: Mapped[dt.datetime] = mapped_column()
    month: Mapped[dt.date] = mapped_column(Date, primary_key=True)  # of every entry it covers (a seal never spans two); the partition key
    lo: Mapped[int | None] = mapped_column(BigInteger)
    hi: Mapped[int | None] = mapped_column(BigInteger)
    ranges: Mapped[dict[str, Any] | None] = mapped_column()
    row_count: Mapped[int] = mapped_column(Integer)
    rows: Mapped[bytes] = mapped_column(LargeBinary)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditArchive(Base):
    """A month of the audit log archived to a bucket and dropped (:mod:`imaging_sync.audit_archive`).

    ``seals`` maps each of its seal numbers to its hash, so that ``audit verify``
    still checks the chain across the gap. Append-only.
    """

    __tablename__ = "audit_archive"

    month: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    archived_at: Mapped[dt.datetime] = mapped_column()
    location: Mapped[str] = mapped_column(String(512))  # bucket/prefix of the month's objects
    row_count: Mapped[int] = mapped_column(BigInteger)
    seals: Mapped[dict[str, Any]] = mapped_column()  # {"<seal_no>": "<hash hex>"}
    manifest_sha256: Mapped[str] = mapped_column(String(64))


class AuditExportCursor(Base):
    """How far an exporter of the audit log (the ATNA relay) has sent: the last seal it delivered whole."""

    __tablename__ = "audit_export_cursor"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    seal_no: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column()


class AuditRefusal(Base):
    """Unauthenticated refusals of one client address on one channel in one minute, counted in one row.

    A caller with no credentials or unusable ones (an HTTP 401; a DICOM peer
    whose calling AE title is not listed) disclosed nothing and proved no
    identity: one row per address and minute (:mod:`imaging_sync.audit_refusals`,
    migration 0012) instead of an audit entry per refusal. ``sample``: a few
    distinct things tried (method and path without the query, or AE titles),
    cleaned like the log's values. Updated in place (count, last time, sample).
    """

    __tablename__ = "audit_refusal"
    __table_args__ = (Index(None, "client_addr", "minute"),)

    minute: Mapped[dt.datetime] = mapped_column(primary_key=True)  # the refusals' minute, seconds zeroed (UTC)
    channel: Mapped[str] = mapped_column(String(8), primary_key=True)  # http | dicom
    client_addr: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" when the peer's address is unknown
    first_at: Mapped[dt.datetime] = mapped_column()
    last_at: Mapped[dt.datetime] = mapped_column()
    count: Mapped[int] = mapped_column(BigInteger)
    sample: Mapped[list[str]] = mapped_column(JSONType)


class OutboxEvent(Base):
    """A change to the index, to be told downstream: written in the same transaction as the change.

    pending → processing (claimed by a relay until ``claimed_until``) → done, or
    back to pending with ``next_attempt_at`` after a failed delivery, or failed
    after the attempt limit. A relay that dies leaves its claim to expire.
    """

    __tablename__ = "outbox_event"
    __table_args__ = (
        # Open events only, in id (= creation) order: what a relay scans to claim,
        # however many done rows the table holds.
        Index(
            "ix_outbox_event_open",
            "id",
            postgresql_where=text("status IN ('pending', 'processing')"),
            sqlite_where=text("status IN ('pending', 'processing')"),
        ),
        Index(None, "aggregate_id", "id"),
        Index(None, "status", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    event_type: Mapped[str] = mapped_column(String(32))  # study.created | study.updated | study.deleted
    aggregate_type: Mapped[str] = mapped_column(String(16))
    aggregate_id: Mapped[uuid.UUID] = mapped_column(Uuid())
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    claimed_until: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class AlertState(Base):
    """One incident per key (e.g. ``sync_failed:b``): opened once, notified once, resolved once."""

    __tablename__ = "alert_state"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    partner: Mapped[str | None] = mapped_column(String(63), default=None)
    opened_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    message: Mapped[str] = mapped_column(Text)
    run_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    notified_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    recovery_notified_at: Mapped[dt.datetime | None] = mapped_column(default=None)
