"""Subject (patient) search."""

from __future__ import annotations

import uuid

from sqlalchemy import Connection, select

from imaging_sync.catalog.keyset import Key, Page, after_asc, split
from imaging_sync.catalog.names import name_matches
from imaging_sync.catalog.studies import SubjectSummary
from imaging_sync.db.models import Subject

_subject = Subject.__table__


def search_subjects(
    conn: Connection,
    *,
    patient_id: str | None = None,
    issuer: str | None = None,
    name: str | None = None,
    limit: int,
    after: Key | None = None,
) -> Page[SubjectSummary]:
    """Live subjects in (patient_id, issuer) order: that pair is unique, so it is the keyset."""
    conditions = [_subject.c.deleted_at.is_(None)]
    if patient_id is not None:
        conditions.append(_subject.c.patient_id == patient_id)
    if issuer is not None:
        conditions.append(_subject.c.issuer == issuer)
    if name is not None:
        conditions.append(name_matches(_subject.c.patient_name_search, name))
    seek = after_asc([_subject.c.patient_id, _subject.c.issuer], after)
    if seek is not None:
        conditions.append(seek)
    stmt = (
        select(_subject.c.id, _subject.c.patient_id, _subject.c.issuer, _subject.c.patient_name, _subject.c.birth_date, _subject.c.sex)
        .where(*conditions)
        .order_by(_subject.c.patient_id, _subject.c.issuer)
        .limit(limit + 1)
    )
    rows, next_key = split(conn.execute(stmt).all(), limit, lambda r: (r.patient_id, r.issuer))
    return Page(items=[SubjectSummary(**r._asdict()) for r in rows], next_key=next_key)


def get_subject(conn: Connection, subject_id: uuid.UUID) -> SubjectSummary | None:
    row = conn.execute(
        select(_subject.c.id, _subject.c.patient_id, _subject.c.issuer, _subject.c.patient_name, _subject.c.birth_date, _subject.c.sex)
        .where(_subject.c.id == subject_id, _subject.c.deleted_at.is_(None))
    ).first()
    return None if row is None else SubjectSummary(**row._asdict())
