"""Instances of a series, and where each instance's file is kept.

Every partner's location of a file is read here; which of them to use is
decided by ``imaging_sync.copies`` (the same rule for the REST API's URLs
and the DICOM node's retrieves).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, bindparam, select

from imaging_sync.catalog.keyset import Key, Page, after_asc_nulls_last, split
from imaging_sync.copies import Location
from imaging_sync.db.models import Instance, InstanceLocation, Series, table_of
from imaging_sync.errors import NotFoundError

_series = table_of(Series)
_instance = table_of(Instance)
_location = table_of(InstanceLocation)


@dataclass(frozen=True, slots=True)
class InstanceSummary:
    id: uuid.UUID
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str | None
    instance_number: int | None
    partners: list[str]


@dataclass(frozen=True, slots=True)
class InstanceFile:
    """One instance and every partner's copy of its file (``copies.CopyChooser`` says which to use)."""

    id: uuid.UUID
    series_id: uuid.UUID
    sop_instance_uid: str
    instance_number: int | None
    locations: list[Location] = field(default_factory=list)


_LIVE_SERIES = select(_series.c.id).where(_series.c.id == bindparam("series_id", type_=_series.c.id.type), _series.c.deleted_at.is_(None))


def require_live_series(conn: Connection, series_id: uuid.UUID) -> None:
    found = conn.execute(_LIVE_SERIES, {"series_id": series_id}).first()
    if found is None:
        raise NotFoundError(f"no series {series_id}")


def list_instances(conn: Connection, series_id: uuid.UUID, *, limit: int, after: Key | None = None) -> Page[InstanceSummary]:
    """A live series' live instances in instance-number order (unnumbered last); NotFoundError for no series."""
    require_live_series(conn, series_id)
    conditions = [_instance.c.series_id == series_id, _instance.c.deleted_at.is_(None)]
    seek = after_asc_nulls_last(_instance.c.instance_number, _instance.c.id, after)
    if seek is not None:
        conditions.append(seek)
    stmt = (
        select(_instance.c.id, _instance.c.sop_instance_uid, _instance.c.sop_class_uid, _instance.c.transfer_syntax_uid, _instance.c.instance_number)
        .where(*conditions)
        .order_by(_instance.c.instance_number.asc().nulls_last(), _instance.c.id)
        .limit(limit + 1)
    )
    rows, next_key = split(conn.execute(stmt).all(), limit, lambda r: (r.instance_number, r.id))
    partners: dict[uuid.UUID, list[str]] = {}
    if rows:
        for instance_id, partner in conn.execute(
            select(_location.c.instance_id, _location.c.partner)
            .where(_location.c.instance_id.in_([r.id for r in rows]))
            .order_by(_location.c.partner)
        ).all():
            partners.setdefault(instance_id, []).append(partner)
    items = [InstanceSummary(**r._asdict(), partners=partners.get(r.id, [])) for r in rows]
    return Page(items=items, next_key=next_key)


def instance_file(conn: Connection, instance_id: uuid.UUID) -> InstanceFile:
    """A live instance (of a live series) with all its locations; NotFoundError otherwise."""
    found = _files(conn, _FILES_OF_INSTANCE, instance_id)
    if not found:
        raise NotFoundError(f"no instance {instance_id}")
    return found[0]


def series_files(conn: Connection, series_id: uuid.UUID) -> list[InstanceFile]:
    """Every live instance of a live series with its locations, in instance-number order."""
    require_live_series(conn, series_id)
    return _files(conn, _FILES_OF_SERIES, series_id)


def _files_statement(condition: ColumnElement[bool]) -> Select[Any]:
    return (
        select(
            _instance.c.id, _instance.c.series_id, _instance.c.sop_instance_uid, _instance.c.instance_number,
            _location.c.partner, _location.c.bucket, _location.c.key,
        )
        .select_from(
            _instance.join(_series, _series.c.id == _instance.c.series_id).outerjoin(_location, _location.c.instance_id == _instance.c.id)
        )
        .where(condition, _instance.c.deleted_at.is_(None), _series.c.deleted_at.is_(None))
        .order_by(_instance.c.instance_number.asc().nulls_last(), _instance.c.id)
    )


# Built once (the URL endpoints run them on every request); the id is bound per call.
_FILES_OF_INSTANCE = _files_statement(_instance.c.id == bindparam("ident", type_=_instance.c.id.type))
_FILES_OF_SERIES = _files_statement(_instance.c.series_id == bindparam("ident", type_=_instance.c.series_id.type))


def _files(conn: Connection, statement: Select[Any], ident: uuid.UUID) -> list[InstanceFile]:
    files: dict[uuid.UUID, InstanceFile] = {}
    # fetchall and tuple unpacking: one driver call, no per-row attribute lookups (500 rows a series)
    for instance_id, series_id, sop_instance_uid, number, partner, bucket, key in conn.execute(statement, {"ident": ident}).all():
        file = files.get(instance_id)
        if file is None:
            file = files[instance_id] = InstanceFile(instance_id, series_id, sop_instance_uid, number)
        if partner is not None:
            file.locations.append(Location(partner, bucket, key))
    return list(files.values())
