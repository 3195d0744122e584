"""Instances named by their DICOM UIDs with their copies, and the header cache (``instance_header``) kept for them.

DICOMweb names instances by Study, Series and SOP Instance UID
(:func:`instances_by_uids`); each comes with every partner's copy of its file
(``imaging_sync.copies`` chooses which to read) and with the study and
subject its data belongs to (the audit log's disclosure). The header of a
file (``imaging_sync.dicom_header``), once read, is kept by
:func:`store` and found by :func:`cached`; a row for a copy whose ETag has
changed is replaced, and a header that could not be read is recorded as a
failure (:func:`record_failure`) without attributes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Select, bindparam, delete, func, insert, select

from imaging_sync.copies import Location
from imaging_sync.db.direct import DirectStatement
from imaging_sync.db.models import Instance, InstanceHeader, InstanceLocation, Series, Study, Subject, table_of, utcnow
from imaging_sync.dicom_header import Header
from imaging_sync.errors import NotFoundError

_subject, _study, _series = table_of(Subject), table_of(Study), table_of(Series)
_instance, _location, _header = table_of(Instance), table_of(InstanceLocation), table_of(InstanceHeader)


@dataclass
class InstanceRef:
    """A live instance by its UIDs, whose data it is, and every partner's copy of its file."""

    id: uuid.UUID
    study_id: uuid.UUID
    subject_id: uuid.UUID
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None
    locations: list[Location] = field(default_factory=list)


@dataclass
class CachedHeader:
    """A header as kept: which copy it was read from (and that copy's ETag and size), and what was learnt.

    ``attributes_json`` is the DICOM JSON as text (its ``BulkDataURI`` values
    keys of ``bulk``), answered as it is; :attr:`attributes` parses it, for the
    few uses that read values (rendering).
    """

    instance_id: uuid.UUID
    location: Location
    etag: str
    size: int
    transfer_syntax_uid: str
    attributes_json: str
    bulk: dict[str, list[int]]
    frames: list[list[list[int]]]  # per frame, the (offset, length) ranges that make it up

    @functools.cached_property
    def attributes(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.attributes_json)
        return parsed


def instances_by_uids(conn: Connection, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[InstanceRef]:
    """The live instances of a live study (and series, and instance), in series then instance-number order.

    NotFoundError naming what the UIDs do not find: the study, the series in
    it, or the instance in it.
    """
    stmt = _BY_UIDS[(series_uid is not None, sop_uid is not None)]
    found = _refs(conn.execute(stmt, {"study_uid": study_uid, "series_uid": series_uid, "sop_uid": sop_uid}).all())
    if not found:
        raise NotFoundError(_missing(conn, study_uid, series_uid, sop_uid))
    return found


def instance_with_header(conn: Connection, study_uid: str, series_uid: str, sop_uid: str) -> tuple[InstanceRef, CachedHeader | None]:
    """One live instance by its three UIDs and its kept header (None: not read yet, or its read failed), in one statement.

    A viewer asks for a frame or a bulk data value of one instance per request, hundreds per
    series scrolled: this is the index's whole share of such a request. NotFoundError as
    :func:`instances_by_uids`.
    """
    rows = _WITH_HEADER.rows(conn, {"study_uid": study_uid, "series_uid": series_uid, "sop_uid": sop_uid})
    if not rows:
        raise NotFoundError(_missing(conn, study_uid, series_uid, sop_uid))
    [ref] = _refs(rows)
    return ref, _kept(rows[0][len(_REF_COLUMNS):])


def unread(conn: Connection, partner: str, *, limit: int, retry_failed: bool = False, after: uuid.UUID | None = None) -> list[InstanceRef]:
    """Up to ``limit`` live instances a copy of ``partner`` holds and whose header is not kept (nor recorded as
    failed, unless ``retry_failed``), in id order after ``after``: what the background reader reads next."""
    kept = select(_header.c.instance_id).where(_header.c.instance_id == _instance.c.id)
    if retry_failed:
        kept = kept.where(_header.c.failure.is_(None))
    held = select(_location.c.instance_id).where(_location.c.instance_id == _instance.c.id, _location.c.partner == partner)
    conditions = [held.exists(), ~kept.exists()]
    if after is not None:
        conditions.append(_instance.c.id > after)
    ids = select(_instance.c.id).where(*conditions, _instance.c.deleted_at.is_(None)).order_by(_instance.c.id).limit(limit)
    return _refs(conn.execute(_ref_select().where(_instance.c.id.in_(ids.scalar_subquery())).order_by(_instance.c.id)).all())


_REF_COLUMNS = (
    _instance.c.id, _study.c.id, _subject.c.id, _study.c.study_instance_uid, _series.c.series_instance_uid, _instance.c.sop_instance_uid,
    _instance.c.sop_class_uid, _instance.c.instance_number, _location.c.partner, _location.c.bucket, _location.c.key,
)
_HEADER_COLUMNS = (
    _header.c.instance_id, _header.c.partner, _header.c.bucket, _header.c.key, _header.c.etag, _header.c.size_bytes,
    _header.c.transfer_syntax_uid, _header.c.attributes, _header.c.bulk, _header.c.frames,
)


def _ref_select(*more: Any) -> Select[Any]:
    """Instances with their study, subject and copies, all live; ``more`` columns from ``instance_header`` (joined then)."""
    joined = (
        _instance.join(_series, _series.c.id == _instance.c.series_id)
        .join(_study, _study.c.id == _series.c.study_id)
        .join(_subject, _subject.c.id == _study.c.subject_id)
        .outerjoin(_location, _location.c.instance_id == _instance.c.id)
    )
    if more:
        joined = joined.outerjoin(_header, (_header.c.instance_id == _instance.c.id) & _header.c.failure.is_(None))
    return (
        select(*_REF_COLUMNS, *more)
        .select_from(joined)
        .where(_study.c.deleted_at.is_(None), _subject.c.deleted_at.is_(None), _series.c.deleted_at.is_(None), _instance.c.deleted_at.is_(None))
    )


def _by_uids(series: bool, sop: bool, *more: Any) -> Select[Any]:
    stmt = _ref_select(*more).where(_study.c.study_instance_uid == bindparam("study_uid"))
    if series:
        stmt = stmt.where(_series.c.series_instance_uid == bindparam("series_uid"))
    if sop:
        stmt = stmt.where(_instance.c.sop_instance_uid == bindparam("sop_uid"))
    return stmt.order_by(_series.c.series_number.asc().nulls_last(), _series.c.id, _instance.c.instance_number.asc().nulls_last(), _instance.c.id)


# Built once: a statement object built per request costs SQLAlchemy its construction and its cache key
# (a tenth of a frame request's CPU, by py-spy); these keep both.
_BY_UIDS = {(series, sop): _by_uids(series, sop) for series in (False, True) for sop in (False, True)}
_WITH_HEADER = DirectStatement(_by_uids(True, True, *_HEADER_COLUMNS))  # a request per frame: run on the driver (imaging_sync.db.direct)
_CACHED = select(*_HEADER_COLUMNS).where(_header.c.instance_id.in_(bindparam("ids", expanding=True)), _header.c.failure.is_(None))


def _refs(rows: Sequence[Any]) -> list[InstanceRef]:
    found: dict[uuid.UUID, InstanceRef] = {}
    for iid, study_id, subject_id, st_uid, se_uid, sop, sop_class, number, partner, bucket, key, *_ in rows:
        ref = found.get(iid)
        if ref is None:
            ref = found[iid] = InstanceRef(iid, study_id, subject_id, st_uid, se_uid, sop, sop_class, number)
        if partner is not None:
            ref.locations.append(Location(partner, bucket, key))
    return list(found.values())


def _kept(row: Sequence[Any]) -> CachedHeader | None:
    """A header row (the columns of ``_HEADER_COLUMNS``) as kept; None for the outer join's empty one."""
    instance_id, partner, bucket, key, etag, size, transfer_syntax, attributes, bulk, frames = row
    if instance_id is None:
        return None
    return CachedHeader(instance_id, Location(partner, bucket, key), etag, size, transfer_syntax, attributes, bulk or {}, frames or [])


@dataclass(frozen=True)
class PartnerHeaders:
    """How far the headers of one partner's instances have been read: kept, failed (by kind), not read yet."""

    partner: str
    kept: int
    failed: dict[str, int]
    unread: int


def progress(conn: Connection) -> list[PartnerHeaders]:
    """Per partner (by the copies it holds): headers kept, failures by kind, instances not read yet."""
    live = _instance.c.deleted_at.is_(None)
    joined = _location.join(_instance, _instance.c.id == _location.c.instance_id).outerjoin(_header, _header.c.instance_id == _location.c.instance_id)
    rows = conn.execute(
        select(_location.c.partner, _header.c.failure, _header.c.instance_id.is_(None), func.count())
        .select_from(joined).where(live).group_by(_location.c.partner, _header.c.failure, _header.c.instance_id.is_(None))
    ).all()
    out: dict[str, PartnerHeaders] = {}
    for partner, failure, missing, count in rows:
        entry = out.setdefault(partner, PartnerHeaders(partner, 0, {}, 0))
        if missing:
            out[partner] = dataclasses.replace(entry, unread=entry.unread + count)
        elif failure is not None:
            entry.failed[failure] = entry.failed.get(failure, 0) + count
        else:
            out[partner] = dataclasses.replace(entry, kept=entry.kept + count)
    return [out[p] for p in sorted(out)]


def _missing(conn: Connection, study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
    study = conn.execute(select(_study.c.id).where(_study.c.study_instance_uid == study_uid, _study.c.deleted_at.is_(None))).first()
    if study is None:
        return "no such study"
    if series_uid is not None:
        found = conn.execute(
            select(_series.c.id).where(_series.c.study_id == study[0], _series.c.series_instance_uid == series_uid, _series.c.deleted_at.is_(None))
        ).first()
        if found is None:
            return "no such series in this study"
    return "no such instance in this series" if sop_uid is not None else "no instance in this study or series"


def cached(conn: Connection, instance_ids: list[uuid.UUID]) -> dict[uuid.UUID, CachedHeader]:
    """The headers kept for these instances (failures left out: they are read again)."""
    if not instance_ids:
        return {}
    out = {}
    for row in conn.execute(_CACHED, {"ids": instance_ids}).all():
        kept = _kept(row)
        if kept is not None:
            out[kept.instance_id] = kept
    return out


def store(conn: Connection, instance_id: uuid.UUID, location: Location, etag: str, size: int, header: Header) -> CachedHeader:
    """Keep ``header``, read from ``location`` (whose object had ``etag`` and ``size``), replacing any row of the instance."""
    frames = [[list(r) for r in frame] for frame in (header.pixel.frames if header.pixel else [])]
    bulk = {k: list(v) for k, v in header.bulk.items()}
    attributes = json.dumps(header.attributes, ensure_ascii=False, separators=(",", ":"))
    conn.execute(delete(_header).where(_header.c.instance_id == instance_id))
    conn.execute(insert(_header).values(
        instance_id=instance_id, partner=location.partner, bucket=location.bucket, key=location.key, etag=etag, size_bytes=size,
        transfer_syntax_uid=header.transfer_syntax_uid, attributes=attributes, bulk=bulk, frames=frames, failure=None, read_at=utcnow(),
    ))
    return CachedHeader(instance_id, location, etag, size, header.transfer_syntax_uid, attributes, bulk, frames)


def record_failure(conn: Connection, instance_id: uuid.UUID, partner: str, kind: str) -> None:
    """A header that could not be read (``kind``: the error's), replacing any row of the instance."""
    conn.execute(delete(_header).where(_header.c.instance_id == instance_id))
    conn.execute(insert(_header).values(instance_id=instance_id, partner=partner, failure=kind, read_at=utcnow()))


def forget_copies(conn: Connection, partner: str, instance_ids: Sequence[uuid.UUID]) -> None:
    """Drop the headers read from ``partner``'s copies of these instances: the sync saw those copies change or go
    (a new key, size or checksum), so what was read from them may no longer be true. The header is read again,
    from whichever copy is chosen then, by the background reader or the next request."""
    for start in range(0, len(instance_ids), 500):
        chunk = list(instance_ids[start : start + 500])
        conn.execute(delete(_header).where(_header.c.partner == partner, _header.c.instance_id.in_(chunk)))


def forget(conn: Connection, instance_id: uuid.UUID) -> None:
    """Drop what was kept for an instance (its object changed)."""
    conn.execute(delete(_header).where(_header.c.instance_id == instance_id))


__all__ = ["CachedHeader", "InstanceRef", "PartnerHeaders", "cached", "forget", "forget_copies", "instance_with_header", "instances_by_uids", "progress", "record_failure", "store", "unread"]
