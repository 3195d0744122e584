"""Study search and study detail.

A search is one keyset query over ``study ⋈ subject`` (ordered by
``study_date DESC NULLS LAST, id DESC``: newest first, undated studies last)
followed by one aggregate query per fact for the page's studies only
(modalities and counts from ``series``/``instance``, partners from
``entity_link``): a page costs the same whatever the size of the index.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from typing import Any

from sqlalchemy import Connection, Row, Select, String, Subquery, bindparam, exists, func, literal, select, tuple_, union_all

from imaging_sync.catalog.keyset import Key, Page, after_desc_nulls_last, split
from imaging_sync.catalog.names import name_matches
from imaging_sync.db.models import EntityLink, Instance, Series, Study, Subject
from imaging_sync.errors import NotFoundError

_study = Study.__table__
_subject = Subject.__table__
_series = Series.__table__
_instance = Instance.__table__
_link = EntityLink.__table__


@dataclass(frozen=True, slots=True)
class SubjectSummary:
    id: uuid.UUID
    patient_id: str
    issuer: str
    patient_name: str | None
    birth_date: dt.date | None
    sex: str | None


@dataclass(frozen=True, slots=True)
class StudySummary:
    id: uuid.UUID
    study_instance_uid: str
    study_date: dt.date | None
    study_time: str | None
    accession_number: str | None
    description: str | None
    referring_physician_name: str | None
    subject: SubjectSummary
    modalities: list[str]
    series_count: int
    instance_count: int
    partners: list[str]


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    id: uuid.UUID
    series_instance_uid: str
    series_number: int | None
    modality: str
    description: str | None
    body_part_examined: str | None
    instance_count: int
    partners: list[str]


@dataclass(frozen=True, slots=True)
class StudyDetail:
    study: StudySummary
    series: list[SeriesSummary]


@dataclass(frozen=True, slots=True)
class StudyQuery:
    """Filters of a study search; all optional, combined with AND."""

    patient_id: str | None = None
    issuer: str | None = None
    # DICOM wildcards (* and ?), case-insensitive; see catalog.names.
    name: str | None = None
    accession: str | None = None
    # The study has a live series of this modality.
    modality: str | None = None
    date_from: dt.date | None = None  # inclusive
    date_to: dt.date | None = None  # inclusive
    # The partner has (links) the study.
    partner: str | None = None
    study_uid: str | None = None
    subject_id: uuid.UUID | None = None


_SUMMARY_COLUMNS = (
    _study.c.id,
    _study.c.study_instance_uid,
    _study.c.study_date,
    _study.c.study_time,
    _study.c.accession_number,
    _study.c.description,
    _study.c.referring_physician_name,
    _subject.c.id.label("subject_id"),
    _subject.c.patient_id,
    _subject.c.issuer,
    _subject.c.patient_name,
    _subject.c.birth_date,
    _subject.c.sex,
)


# Modalities and series counts, instance counts and partners of a page of studies, in one round trip.
# Built once: constructing and keying a statement costs more than running this one.
_IDS = bindparam("ids", expanding=True)
_STUDY_FACTS = union_all(
    select(literal("m").label("fact"), _series.c.study_id.label("study_id"), _series.c.modality.label("value"), func.count().label("n"))
    .where(_series.c.study_id.in_(_IDS), _series.c.deleted_at.is_(None))
    .group_by(_series.c.study_id, _series.c.modality),
    select(literal("i"), _series.c.study_id, literal(None, String), func.count())
    .select_from(_instance.join(_series, _series.c.id == _instance.c.series_id))
    .where(_series.c.study_id.in_(_IDS), _series.c.deleted_at.is_(None), _instance.c.deleted_at.is_(None))
    .group_by(_series.c.study_id),
    select(literal("p"), _link.c.entity_id, _link.c.partner, func.count())
    .where(_link.c.entity_type == "study", _link.c.entity_id.in_(_IDS))
    .group_by(_link.c.entity_id, _link.c.partner),
)


def search_studies(conn: Connection, query: StudyQuery, *, limit: int, after: Key | None = None) -> Page[StudySummary]:
    """Live studies matching ``query``, newest first; ``after`` is the ``(study_date, id)`` to continue from.

    Dated studies come first, then undated ones; each part is one statement
    (the page's keys from an index range, then its rows by primary key), and
    the undated part is read only once the dated part runs out.
    """
    size = limit + 1  # one more than asked: is there a next page?
    rows: list[Row[Any]] = []
    in_undated = after is not None and after[0] is None
    if _one_patient_at_most(query):  # few studies: one statement, the seek as one condition
        rows = list(conn.execute(_page_rows(_page_keys(query, size, after, dated=None))))
    elif not in_undated:
        rows = list(conn.execute(_page_rows(_page_keys(query, size, after, dated=True))))
    if len(rows) < size and not _one_patient_at_most(query) and query.date_from is None and query.date_to is None:
        # A date range never matches an undated study; otherwise the undated ones follow the dated ones.
        rows += conn.execute(_page_rows(_page_keys(query, size - len(rows), after if in_undated else None, dated=False))).all()
    rows, next_key = split(rows, limit, lambda r: (r.study_date, r.id))
    return Page(items=_summaries(conn, rows), next_key=next_key)


def _page_rows(keys: Subquery) -> Select[Any]:
    return (
        select(*_SUMMARY_COLUMNS)
        .select_from(keys.join(_study, _study.c.id == keys.c.id).join(_subject, _subject.c.id == _study.c.subject_id))
        .order_by(keys.c.study_date.desc().nulls_last(), keys.c.id.desc())
    )


def _one_patient_at_most(query: StudyQuery) -> bool:
    """Filters that pin the patient (or the study): a handful of studies, no index range to keep."""
    return query.patient_id is not None or query.subject_id is not None or query.study_uid is not None or query.accession is not None


def _page_keys(query: StudyQuery, size: int, after: Key | None, *, dated: bool | None) -> Subquery:
    """``(id, study_date)`` of the next ``size`` matching dated (or undated, or all: None) studies, in listing order.

    - Subject filters (patient id, issuer, name) first find the subjects, once
      (a MATERIALIZED CTE): PostgreSQL then probes each subject's studies,
      index-only, in ``ix_study_subject_id_study_date_id_deleted_at`` instead
      of hashing the whole study table.
    - Otherwise the seek ``(study_date, id) < cursor`` is a bound of a
      backward range scan of ``ix_study_study_date_id``, so a page deep in a
      listing costs what the first page costs; undated studies are a range of
      their own for the same reason (an OR with ``study_date IS NULL`` would
      make PostgreSQL filter from the start of the index).
    - A live study always has a live subject (a subject is linked by the same
      partner snapshots as its studies), so only subject filters read ``subject``.
    """
    source: Any = _study
    conditions: list[Any] = [_study.c.deleted_at.is_(None)]
    subject_conditions: list[Any] = []
    if query.patient_id is not None:
        subject_conditions.append(_subject.c.patient_id == query.patient_id)
    if query.issuer is not None:
        subject_conditions.append(_subject.c.issuer == query.issuer)
    if query.name is not None:
        subject_conditions.append(name_matches(_subject.c.patient_name_search, query.name))
    if subject_conditions:
        matched = select(_subject.c.id).where(_subject.c.deleted_at.is_(None), *subject_conditions).cte("matched").prefix_with("MATERIALIZED")
        source = _study.join(matched, _study.c.subject_id == matched.c.id)
    if query.subject_id is not None:
        conditions.append(_study.c.subject_id == query.subject_id)
    if query.accession is not None:
        conditions.append(_study.c.accession_number == query.accession)
    if query.study_uid is not None:
        conditions.append(_study.c.study_instance_uid == query.study_uid)
    if query.date_from is not None:
        conditions.append(_study.c.study_date >= query.date_from)
    if query.date_to is not None:
        conditions.append(_study.c.study_date <= query.date_to)
    if query.modality is not None:
        conditions.append(
            exists().where(_series.c.study_id == _study.c.id, _series.c.modality == query.modality, _series.c.deleted_at.is_(None))
        )
    if query.partner is not None:
        conditions.append(
            exists().where(_link.c.entity_type == "study", _link.c.entity_id == _study.c.id, _link.c.partner == query.partner)
        )
    if dated is None:
        seek = after_desc_nulls_last(_study.c.study_date, _study.c.id, after)
        if seek is not None:
            conditions.append(seek)
    elif dated:
        conditions.append(_study.c.study_date.is_not(None))
        if after is not None:
            conditions.append(tuple_(_study.c.study_date, _study.c.id) < tuple_(after[0], after[1]))
    else:
        conditions.append(_study.c.study_date.is_(None))
        if after is not None:
            conditions.append(_study.c.id < after[1])
    # Within one part there are no NULL dates to place, and plain DESC is what a backward scan
    # of ix_study_study_date_id yields (PostgreSQL would sort for DESC NULLS LAST).
    order = (_study.c.study_date.desc().nulls_last(), _study.c.id.desc()) if dated is None else (_study.c.study_date.desc(), _study.c.id.desc())
    return select(_study.c.id, _study.c.study_date).select_from(source).where(*conditions).order_by(*order).limit(size).subquery("page_keys")


def get_study(conn: Connection, study_id: uuid.UUID) -> StudyDetail:
    """One live study with its live series (series-number order); NotFoundError otherwise."""
    row = conn.execute(
        select(*_SUMMARY_COLUMNS)
        .select_from(_study.join(_subject, _subject.c.id == _study.c.subject_id))
        .where(_study.c.id == study_id, _study.c.deleted_at.is_(None))
    ).first()
    if row is None:
        raise NotFoundError(f"no study {study_id}")
    summary = _summaries(conn, [row])[0]
    series_rows = conn.execute(
        select(
            _series.c.id, _series.c.series_instance_uid, _series.c.series_number, _series.c.modality,
            _series.c.description, _series.c.body_part_examined,
        )
        .where(_series.c.study_id == study_id, _series.c.deleted_at.is_(None))
        .order_by(_series.c.series_number.asc().nulls_last(), _series.c.id)
    ).all()
    series_ids = [r.id for r in series_rows]
    counts = dict(
        conn.execute(
            select(_instance.c.series_id, func.count())
            .where(_instance.c.series_id.in_(series_ids), _instance.c.deleted_at.is_(None))
            .group_by(_instance.c.series_id)
        ).all()
    ) if series_ids else {}
    partners = _partners_of(conn, "series", series_ids)
    series = [
        SeriesSummary(
            id=r.id, series_instance_uid=r.series_instance_uid, series_number=r.series_number, modality=r.modality,
            description=r.description, body_part_examined=r.body_part_examined,
            instance_count=counts.get(r.id, 0), partners=partners.get(r.id, []),
        )
        for r in series_rows
    ]
    return StudyDetail(study=summary, series=series)


def require_live_subject(conn: Connection, subject_id: uuid.UUID) -> None:
    """NotFoundError unless the subject exists and is not soft-deleted."""
    found = conn.execute(select(_subject.c.id).where(_subject.c.id == subject_id, _subject.c.deleted_at.is_(None))).first()
    if found is None:
        raise NotFoundError(f"no subject {subject_id}")


def _summaries(conn: Connection, rows: Sequence[Row[Any]]) -> list[StudySummary]:
    """Attach modalities, counts and partners to the page's study rows: one round trip for all three facts."""
    ids = [r.id for r in rows]
    if not ids:
        return []
    modalities: dict[uuid.UUID, set[str]] = defaultdict(set)
    series_counts: dict[uuid.UUID, int] = defaultdict(int)
    instance_counts: dict[uuid.UUID, int] = {}
    partners: dict[uuid.UUID, set[str]] = defaultdict(set)
    for fact, study_id, value, n in conn.execute(_STUDY_FACTS, {"ids": ids}).all():
        if fact == "m":
            modalities[study_id].add(value)
            series_counts[study_id] += n
        elif fact == "i":
            instance_counts[study_id] = n
        else:
            partners[study_id].add(value)
    return [
        StudySummary(
            id=r.id, study_instance_uid=r.study_instance_uid, study_date=r.study_date, study_time=r.study_time,
            accession_number=r.accession_number, description=r.description,
            referring_physician_name=r.referring_physician_name,
            subject=SubjectSummary(
                id=r.subject_id, patient_id=r.patient_id, issuer=r.issuer, patient_name=r.patient_name,
                birth_date=r.birth_date, sex=r.sex,
            ),
            modalities=sorted(modalities.get(r.id, ())),
            series_count=series_counts.get(r.id, 0),
            instance_count=instance_counts.get(r.id, 0),
            partners=sorted(partners.get(r.id, ())),
        )
        for r in rows
    ]


def _partners_of(conn: Connection, entity_type: str, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """Which partners link each entity (sorted names; one entity may be in several partner studies)."""
    if not ids:
        return {}
    found: dict[uuid.UUID, set[str]] = defaultdict(set)
    for entity_id, partner in conn.execute(
        select(_link.c.entity_id, _link.c.partner).where(_link.c.entity_type == entity_type, _link.c.entity_id.in_(ids)).distinct()
    ).all():
        found[entity_id].add(partner)
    return {k: sorted(v) for k, v in found.items()}

