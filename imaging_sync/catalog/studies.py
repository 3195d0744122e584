"""Study search and study detail.

A search is one keyset query over ``study ⋈ subject`` (ordered by
``study_date DESC NULLS LAST, id DESC``: newest first, undated studies last):
a page costs the same whatever the size of the index. Modalities, counts and
partners are columns of ``study`` and ``series`` (kept by
:mod:`imaging_sync.catalog.facts`), read with the rows.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Integer, Row, Select, Subquery, bindparam, exists, select, tuple_

from imaging_sync.catalog.facts import MODALITY_SEPARATOR, PARTNER_SEPARATOR, split_values
from imaging_sync.catalog.keyset import Key, Page, after_desc_nulls_last, split
from imaging_sync.db.models import EntityLink, Series, Study, Subject, table_of
from imaging_sync.errors import NotFoundError
from imaging_sync.query.matching import in_range, modalities_in_study, single_value
from imaging_sync.query.names import bound_word_values, pn_bound_values, pn_matches_bound, query_words, subjects_with_words_bound, words_match_bound

_study = table_of(Study)
_subject = table_of(Subject)
_series = table_of(Series)
_link = table_of(EntityLink)


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
    # Words, each the beginning of a word of the patient's name ("gil hong"); see query.names.
    name: str | None = None
    # PS3.4 matching of a PN (wildcards * and ?, the whole name or one component group); see query.names.
    patient_name: str | None = None
    referring_physician_name: str | None = None
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
    _study.c.modalities,
    _study.c.series_count,
    _study.c.instance_count,
    _study.c.partners,
)


def search_studies(conn: Connection, query: StudyQuery, *, limit: int, after: Key | None = None) -> Page[StudySummary]:
    """Live studies matching ``query``, newest first; ``after`` is the ``(study_date, id)`` to continue from.

    Dated studies come first, then undated ones; each part is one statement
    (the page's keys from an index range, then its rows by primary key), and
    the undated part is read only once the dated part runs out.

    A name search (words, wildcards or both) first looks for a page among the
    ``NAME_SCAN_LIMIT`` newest matching-by-other-filters studies (the name
    checked in the index, :func:`_page_keys`): a name many patients share
    fills a page there at a fraction of a millisecond. Otherwise the
    patient-first plan answers (the words through ``subject_name_token``).
    A word query that is not one is a ValidationError naming ``name``.
    """
    size = limit + 1  # one more than asked: is there a next page?
    names = _Names.of(query)
    one_patient = _one_patient_at_most(query)
    in_undated = after is not None and after[0] is None
    if names and not one_patient and query.issuer is None and not in_undated and NAME_SCAN_LIMIT > 0:
        rows = conn.execute(*_page(query, names, True, size, after, dated=True)).all()
        if len(rows) == size:  # a whole page (and one more) within the newest studies: exact, and done
            return _page_of(rows, limit)
    rows = []
    if one_patient:  # few studies: one statement, the seek as one condition
        rows = list(conn.execute(*_page(query, names, False, size, after, dated=None)))
    elif not in_undated:
        rows = list(conn.execute(*_page(query, names, False, size, after, dated=True)))
    if len(rows) < size and not one_patient and query.date_from is None and query.date_to is None:
        # A date range never matches an undated study; otherwise the undated ones follow the dated ones.
        rows += conn.execute(*_page(query, names, False, size - len(rows), after if in_undated else None, dated=False)).all()
    return _page_of(rows, limit)


def _page_of(rows: Sequence[Row[*tuple[Any, ...]]], limit: int) -> Page[StudySummary]:
    rows, next_key = split(rows, limit, lambda r: (r.study_date, r.id))
    return Page(items=[_summary(row) for row in rows], next_key=next_key)


@dataclass(frozen=True, slots=True)
class _Names:
    """A search's name filters as values to bind: ``patterns`` the patient name's PN patterns, ``words`` its word
    prefixes, ``referring`` the referring physician name's PN patterns (query.names)."""

    values: dict[str, str]
    patterns: int
    words: int
    referring: int

    @classmethod
    def of(cls, query: StudyQuery) -> _Names:
        patterns = pn_bound_values(query.patient_name, "patient_name", "name") if query.patient_name is not None else {}
        referring = (
            pn_bound_values(query.referring_physician_name, "referring_physician_name", "referring") if query.referring_physician_name is not None else {}
        )
        words = query_words(query.name, "name") if query.name is not None else []
        return cls({**patterns, **referring, **bound_word_values(words)}, len(patterns), len(words), len(referring))

    def __bool__(self) -> bool:
        """A filter on the patient's name: what the newest-studies scan can answer from its index."""
        return bool(self.patterns or self.words)


@dataclass(frozen=True, slots=True)
class _Shape:
    """Which filters a page statement has: statements are built once per shape, values bound per call.

    Building and keying a SQLAlchemy statement showed in the search's profile
    (0.5–0.8 ms a request); a search now binds its values to a cached statement.
    """

    filters: frozenset[str]
    name_patterns: int
    name_words: int
    referring_patterns: int
    name_scan: bool
    dated: bool | None
    after: str | None  # None, "dated" (a study_date in the cursor) or "undated"


def _page(
    query: StudyQuery, names: _Names, name_scan: bool, size: int, after: Key | None, *, dated: bool | None
) -> tuple[Select[Any], dict[str, Any]]:
    """The page statement for ``query``'s shape and the values to bind to it."""
    params: dict[str, Any] = {"size": size, **names.values}
    if name_scan:
        params["scan"] = NAME_SCAN_LIMIT
    for name in _BOUND_FILTERS:
        value = getattr(query, name)
        if value is not None:
            params[name] = value
    after_kind = None
    if after is not None:
        after_kind = "undated" if after[0] is None else "dated"
        params["after_id"] = after[1]
        if after[0] is not None:
            params["after_date"] = after[0]
    shape = _Shape(frozenset(n for n in _BOUND_FILTERS if n in params), names.patterns, names.words, names.referring, name_scan, dated, after_kind)
    return _page_statement(shape), params


_BOUND_FILTERS = ("patient_id", "issuer", "subject_id", "accession", "study_uid", "date_from", "date_to", "modality", "partner")


@lru_cache(maxsize=256)
def _page_statement(shape: _Shape) -> Select[Any]:
    keys = _page_keys(shape)
    return (
        select(*_SUMMARY_COLUMNS)
        .select_from(keys.join(_study, _study.c.id == keys.c.id).join(_subject, _subject.c.id == _study.c.subject_id))
        .order_by(keys.c.study_date.desc().nulls_last(), keys.c.id.desc())
    )


# Live studies (newest first, from the cursor, within the other filters) a name search scans for a
# page before it probes patient by patient. Measured on 100k studies (bench/api_latency.py): the scan
# costs 0.1-0.3 µs an index entry and stops once a page is full; a name that fills a page within
# 10,000 entries matches 0.5 % of studies or more (hundreds of patients), whose studies the
# patient-first plan would probe and sort (4-8 ms). A rare name pays the wasted scan (~2 ms) first.
NAME_SCAN_LIMIT = 10_000


def _one_patient_at_most(query: StudyQuery) -> bool:
    """Filters that pin the patient (or the study): a handful of studies, no index range to keep."""
    return query.patient_id is not None or query.subject_id is not None or query.study_uid is not None or query.accession is not None


def _page_keys(shape: _Shape) -> Subquery:
    """``(id, study_date)`` of the next ``:size`` matching dated (or undated, or all: None) studies, in listing order.

    - Subject filters (patient id, issuer, name words, wildcards) first find
      the subjects, once (a MATERIALIZED CTE; each word a range of
      ``subject_name_token``): PostgreSQL then probes each subject's studies,
      index-only, in ``ix_study_subject_id_study_date_id_deleted_at`` instead
      of hashing the whole study table.
    - Otherwise the seek ``(study_date, id) < cursor`` is a bound of a
      backward range scan of ``ix_study_study_date_id``, so a page deep in a
      listing costs what the first page costs; undated studies are a range of
      their own for the same reason (an OR with ``study_date IS NULL`` would
      make PostgreSQL filter from the start of the index).
    - ``name_scan`` (tried first for names, see :func:`search_studies`) goes the
      other way: the backward scan of ``ix_study_live_date_id_name`` (live
      studies by date, the patient's name included: index-only), at most
      ``:scan`` entries, the name (wildcards on ``patient_name_search``, words
      on ``patient_name_words``) checked on each, stopping at the page's end;
      for a name 1,300 patients share, probing their studies and sorting
      them all cost PostgreSQL 7 ms, the scan 0.1–1 ms.
    - A live study always has a live subject (a subject is linked by the same
      partner snapshots as its studies), so only subject filters read ``subject``.
    """
    has = shape.filters.__contains__

    def bound(name: str, column: Any) -> Any:
        return bindparam(name, type_=column.type)

    source: Any = _study
    conditions: list[Any] = [_study.c.deleted_at.is_(None)]
    subject_conditions: list[Any] = []
    if has("patient_id"):
        subject_conditions.append(_subject.c.patient_id == bound("patient_id", _subject.c.patient_id))
    if has("issuer"):
        subject_conditions.append(_subject.c.issuer == bound("issuer", _subject.c.issuer))
    if shape.name_patterns:
        subject_conditions.append(pn_matches_bound(_subject.c.patient_name_search, shape.name_patterns, "name"))
    if not shape.name_scan and (subject_conditions or shape.name_words):
        if not subject_conditions:  # words alone: the subjects straight from the token index
            matched = subjects_with_words_bound(shape.name_words).cte("matched").prefix_with("MATERIALIZED")
        else:
            if shape.name_words:
                subject_conditions.append(_subject.c.id.in_(subjects_with_words_bound(shape.name_words)))
            matched = select(_subject.c.id).where(_subject.c.deleted_at.is_(None), *subject_conditions).cte("matched").prefix_with("MATERIALIZED")
        source = _study.join(matched, _study.c.subject_id == matched.c.id)
    # The core's PS3.4 matching (query.matching), as C-FIND has it: single values, a DA range, ModalitiesInStudy.
    for name, column in (("subject_id", _study.c.subject_id), ("accession", _study.c.accession_number), ("study_uid", _study.c.study_instance_uid)):
        if has(name):
            conditions.append(single_value(column, bound(name, column)))
    if has("date_from") or has("date_to"):
        date = _study.c.study_date
        conditions.append(in_range(date, bound("date_from", date) if has("date_from") else None, bound("date_to", date) if has("date_to") else None))
    if has("modality"):
        conditions.append(modalities_in_study(_study.c.id, lambda modality: single_value(modality, bound("modality", _series.c.modality))))
    if shape.referring_patterns:
        conditions.append(pn_matches_bound(_study.c.referring_physician_name_search, shape.referring_patterns, "referring"))
    if has("partner"):
        conditions.append(
            exists().where(_link.c.entity_type == "study", _link.c.entity_id == _study.c.id, _link.c.partner == bound("partner", _link.c.partner))
        )
    after_date, after_id = bound("after_date", _study.c.study_date), bound("after_id", _study.c.id)
    if shape.dated is None:
        if shape.after is not None:
            conditions.append(after_desc_nulls_last(_study.c.study_date, _study.c.id, (None if shape.after == "undated" else after_date, after_id)))
    elif shape.dated:
        conditions.append(_study.c.study_date.is_not(None))
        if shape.after is not None:
            conditions.append(tuple_(_study.c.study_date, _study.c.id) < tuple_(after_date, after_id))
    else:
        conditions.append(_study.c.study_date.is_(None))
        if shape.after is not None:
            conditions.append(_study.c.id < after_id)
    # Within one part there are no NULL dates to place, and plain DESC is what a backward scan
    # of ix_study_study_date_id yields (PostgreSQL would sort for DESC NULLS LAST).
    order = (_study.c.study_date.desc().nulls_last(), _study.c.id.desc()) if shape.dated is None else (_study.c.study_date.desc(), _study.c.id.desc())
    size = bindparam("size", type_=Integer)
    if shape.name_scan:  # the newest :scan studies, then the name on each (the scan stops once a page is full)
        newest = (
            select(_study.c.id, _study.c.study_date, _study.c.patient_name_search, _study.c.patient_name_words)
            .where(*conditions).order_by(*order).limit(bindparam("scan", type_=Integer)).subquery("newest")
        )
        name_conditions = []
        if shape.name_patterns:
            name_conditions.append(pn_matches_bound(newest.c.patient_name_search, shape.name_patterns, "name"))
        if shape.name_words:
            name_conditions.append(words_match_bound(newest.c.patient_name_words, shape.name_words))
        return (
            select(newest.c.id, newest.c.study_date)
            .where(*name_conditions)
            .order_by(newest.c.study_date.desc(), newest.c.id.desc())
            .limit(size)
            .subquery("page_keys")
        )
    return select(_study.c.id, _study.c.study_date).select_from(source).where(*conditions).order_by(*order).limit(size).subquery("page_keys")


_STUDY_ID = bindparam("study_id", type_=_study.c.id.type)
_STUDY_ROW = select(*_SUMMARY_COLUMNS).select_from(_study.join(_subject, _subject.c.id == _study.c.subject_id)).where(
    _study.c.id == _STUDY_ID, _study.c.deleted_at.is_(None)
)
_STUDY_SERIES = (
    select(
        _series.c.id, _series.c.series_instance_uid, _series.c.series_number, _series.c.modality,
        _series.c.description, _series.c.body_part_examined, _series.c.instance_count, _series.c.partners,
    )
    .where(_series.c.study_id == _STUDY_ID, _series.c.deleted_at.is_(None))
    .order_by(_series.c.series_number.asc().nulls_last(), _series.c.id)
)
def get_study(conn: Connection, study_id: uuid.UUID) -> StudyDetail:
    """One live study with its live series (series-number order); NotFoundError otherwise."""
    row = conn.execute(_STUDY_ROW, {"study_id": study_id}).first()
    if row is None:
        raise NotFoundError(f"no study {study_id}")
    series = [
        SeriesSummary(
            id=r.id, series_instance_uid=r.series_instance_uid, series_number=r.series_number, modality=r.modality,
            description=r.description, body_part_examined=r.body_part_examined,
            instance_count=r.instance_count, partners=split_values(r.partners, PARTNER_SEPARATOR),
        )
        for r in conn.execute(_STUDY_SERIES, {"study_id": study_id})
    ]
    return StudyDetail(study=_summary(row), series=series)


def require_live_subject(conn: Connection, subject_id: uuid.UUID) -> None:
    """NotFoundError unless the subject exists and is not soft-deleted."""
    found = conn.execute(select(_subject.c.id).where(_subject.c.id == subject_id, _subject.c.deleted_at.is_(None))).first()
    if found is None:
        raise NotFoundError(f"no subject {subject_id}")


def _summary(row: Row[*tuple[Any, ...]]) -> StudySummary:
    """A study row (``_SUMMARY_COLUMNS``) as a summary.

    Positional unpacking: a page is 50 rows of 17 values, and Row attribute
    lookups were a fifth of a search's Python time (py-spy --gil).
    """
    (study_id, uid, date, time, accession, description, referring, subject_id, patient_id, issuer, name, birth_date, sex,
     modalities, series_count, instance_count, partners) = row
    return StudySummary(
        study_id, uid, date, time, accession, description, referring,
        SubjectSummary(subject_id, patient_id, issuer, name, birth_date, sex),
        split_values(modalities, MODALITY_SEPARATOR), series_count, instance_count, split_values(partners, PARTNER_SEPARATOR),
    )
