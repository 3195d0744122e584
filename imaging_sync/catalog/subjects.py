"""Subject (patient) search."""

from __future__ import annotations

import uuid

from sqlalchemy import ColumnElement, Connection, select

from imaging_sync.catalog.keyset import Key, Page, after_asc, split
from imaging_sync.catalog.studies import SubjectSummary
from imaging_sync.db.models import Subject, table_of
from imaging_sync.query.matching import single_value
from imaging_sync.query.names import bound_word_values, pn_matches, query_words, subjects_with_words_bound

_subject = table_of(Subject)


def search_subjects(
    conn: Connection,
    *,
    patient_id: str | None = None,
    issuer: str | None = None,
    name: str | None = None,
    patient_name: str | None = None,
    limit: int,
    after: Key | None = None,
) -> Page[SubjectSummary]:
    """Live subjects in (patient_id, issuer) order: that pair is unique, so it is the keyset.

    ``name``: words, each the beginning of a word of the name (the token
    index; a query that is not words is a ValidationError naming ``name``);
    ``patient_name``: PS3.4 matching of a PN, as C-FIND has it (see query.names).
    """
    conditions: list[ColumnElement[bool]] = [_subject.c.deleted_at.is_(None)]
    words: dict[str, str] = {}
    if patient_id is not None:
        conditions.append(single_value(_subject.c.patient_id, patient_id))
    if issuer is not None:
        conditions.append(single_value(_subject.c.issuer, issuer))
    if name is not None:
        prefixes = query_words(name, "name")
        words = bound_word_values(prefixes)
        conditions.append(_subject.c.id.in_(subjects_with_words_bound(len(prefixes))))
    if patient_name is not None:
        matched = pn_matches(_subject.c.patient_name_search, patient_name, "patient_name")
        if matched is not None:
            conditions.append(matched)
    seek = after_asc([_subject.c.patient_id, _subject.c.issuer], after)
    if seek is not None:
        conditions.append(seek)
    stmt = (
        select(_subject.c.id, _subject.c.patient_id, _subject.c.issuer, _subject.c.patient_name, _subject.c.birth_date, _subject.c.sex)
        .where(*conditions)
        .order_by(_subject.c.patient_id, _subject.c.issuer)
        .limit(limit + 1)
    )
    rows, next_key = split(conn.execute(stmt, words).all(), limit, lambda r: (r.patient_id, r.issuer))
    return Page(items=[SubjectSummary(**r._asdict()) for r in rows], next_key=next_key)


def get_subject(conn: Connection, subject_id: uuid.UUID) -> SubjectSummary | None:
    row = conn.execute(
        select(_subject.c.id, _subject.c.patient_id, _subject.c.issuer, _subject.c.patient_name, _subject.c.birth_date, _subject.c.sex)
        .where(_subject.c.id == subject_id, _subject.c.deleted_at.is_(None))
    ).first()
    return None if row is None else SubjectSummary(**row._asdict())
