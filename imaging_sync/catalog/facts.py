"""Facts kept on study and series rows: modalities, counts, partners and the patient's name.

Every study in a search result shows its modalities, its series and instance
counts and the partners that hold it; every series in a study's detail its
instance count and partners. Aggregated from ``series``, ``instance`` and
``entity_link`` for each page, these were half of a date-range search's
cost (the API's CPU per request and PostgreSQL's; bench/api_latency.py). They
are now columns, recomputed from those rows by :func:`refresh` for every
study a sync page touches, in that page's transaction, and written only where
they differ: what a search reads is always what the rows say, and a page costs
one more pair of statements.

The patient's search-form name and name words are copied onto each study
(:func:`copy_patient_names`) so that a name matching many patients is one
index-only scan of live studies by date (migrations 0007, 0008), and each
subject's name words are rows of ``subject_name_token``
(:func:`refresh_name_tokens`), the index of the REST API's word search.

Only live rows count: a study's series count is its live series, its
instance count the live instances of those series, its modalities theirs.
Partners are the partners linked to the study (or series), sorted.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, or_, select, tuple_, update

from imaging_sync.catalog.id_lists import PerDialect
from imaging_sync.db import bulk
from imaging_sync.db.bulk import chunks
from imaging_sync.db.models import EntityLink, Instance, Series, Study, Subject, SubjectNameToken, table_of

_study = table_of(Study)
_series = table_of(Series)
_instance = table_of(Instance)
_link = table_of(EntityLink)
_subject = table_of(Subject)
_token = table_of(SubjectNameToken)

MODALITY_SEPARATOR = "\\"  # as DICOM joins the values of a multi-valued attribute (ModalitiesInStudy)
PARTNER_SEPARATOR = ","  # partner names are [a-z0-9_-] (config)

# Each live series of the studies with its live instances counted, beside the facts it stores now.
_LIVE_SERIES = PerDialect(
    lambda in_ids: select(_series.c.study_id, _series.c.id, _series.c.modality, func.count(_instance.c.id), _series.c.instance_count, _series.c.partners)
    .select_from(_series.outerjoin(_instance, and_(_instance.c.series_id == _series.c.id, _instance.c.deleted_at.is_(None))))
    .where(in_ids(_series.c.study_id), _series.c.deleted_at.is_(None))
    .group_by(_series.c.study_id, _series.c.id, _series.c.modality, _series.c.instance_count, _series.c.partners)
)


def _linked_partners(entity_type: str) -> PerDialect[Any]:
    return PerDialect(
        lambda in_ids: select(_link.c.entity_id, _link.c.partner).where(_link.c.entity_type == entity_type, in_ids(_link.c.entity_id)).distinct()
    )


_STUDY_PARTNERS = _linked_partners("study")
_SERIES_PARTNERS = _linked_partners("series")
_STUDY_FACTS = ("modalities", "series_count", "instance_count", "partners")
_SET_STUDY = (
    update(_study)
    .where(_study.c.id == bindparam("_id"))
    .values(modalities=bindparam("modalities"), series_count=bindparam("series_count"), instance_count=bindparam("instance_count"), partners=bindparam("partners"))
)
_SET_SERIES = update(_series).where(_series.c.id == bindparam("_id")).values(instance_count=bindparam("instance_count"), partners=bindparam("partners"))


def refresh(conn: Connection, study_ids: Iterable[uuid.UUID]) -> None:
    """Recompute the facts of these studies and of their live series from the rows (in the caller's transaction).

    Only rows whose stored facts differ are written: a page that changed a
    study's description rewrites neither its facts nor its series' rows.
    """
    for chunk in chunks(sorted(set(study_ids))):  # sorted: one lock order for concurrent partners
        _refresh_chunk(conn, chunk)


def copy_patient_names(conn: Connection, subject_ids: Iterable[uuid.UUID]) -> None:
    """The studies of these subjects take their subject's current ``patient_name_search`` and ``patient_name_words`` (rows that differ only)."""
    for chunk in chunks(sorted(set(subject_ids))):
        conn.execute(
            update(_study)
            .where(
                _study.c.subject_id == _subject.c.id,
                _subject.c.id.in_(chunk),
                or_(
                    _study.c.patient_name_search.is_distinct_from(_subject.c.patient_name_search),
                    _study.c.patient_name_words.is_distinct_from(_subject.c.patient_name_words),
                ),
            )
            .values(patient_name_search=_subject.c.patient_name_search, patient_name_words=_subject.c.patient_name_words)
        )


def refresh_name_tokens(conn: Connection, subject_ids: Iterable[uuid.UUID]) -> None:
    """``subject_name_token`` holds exactly the words of these subjects' ``patient_name_words`` (in the caller's transaction).

    One statement reads each subject's words beside its stored tokens (one
    snapshot, so a concurrent page's committed rename is seen whole or not at
    all); only the difference is written: a page whose names did not change
    writes no token row.
    """
    ids = sorted(set(subject_ids))
    wanted: dict[uuid.UUID, set[str]] = {}
    stored: set[tuple[str, uuid.UUID]] = set()
    for chunk in chunks(ids, bulk.chunk_size(conn)):
        statement = (
            select(_subject.c.id, _subject.c.patient_name_words, _token.c.token)
            .select_from(_subject.outerjoin(_token, _token.c.subject_id == _subject.c.id))
            .where(bulk.key_in(conn, _subject.c.id, chunk))
        )
        for subject_id, words, token in conn.execute(statement):
            wanted[subject_id] = {word for word in (words or "").split(" ") if word}
            if token is not None:
                stored.add((token, subject_id))
    want = {(token, subject_id) for subject_id, tokens in wanted.items() for token in tokens}
    gone = sorted(stored - want, key=lambda t: (t[1], t[0]))
    for chunk in chunks(gone):
        conn.execute(delete(_token).where(tuple_(_token.c.token, _token.c.subject_id).in_(chunk)))
    new = [{"token": token, "subject_id": subject_id} for token, subject_id in sorted(want - stored, key=lambda t: (t[1], t[0]))]
    bulk.insert_ignoring_conflicts(conn, _token, new, ("token", "subject_id"))


def studies_of_series(conn: Connection, series_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """The studies these series belong to now (for facts of studies a series or instance moved between)."""
    found: set[uuid.UUID] = set()
    for chunk in chunks(sorted(set(series_ids))):
        found.update(conn.execute(select(_series.c.study_id).where(_series.c.id.in_(chunk))).scalars())
    return found


def join_values(values: Iterable[str], separator: str) -> str:
    """Distinct values, sorted, as stored (the inverse of :func:`split_values`)."""
    return separator.join(sorted(set(values)))


def join_modalities(values: Iterable[str]) -> str:
    return join_values(values, MODALITY_SEPARATOR)


def split_values(joined: str, separator: str) -> list[str]:
    return joined.split(separator) if joined else []


def _refresh_chunk(conn: Connection, study_ids: Sequence[uuid.UUID]) -> None:
    # Lock the study rows first (PostgreSQL; SQLite has one writer anyway): a partner syncing the
    # same study concurrently waits here until it has committed, and the counts read below then
    # include its rows. Counted before the lock, one page's update would overwrite the other's.
    # The same statement reads the facts the studies store now.
    stored_studies = {
        row[0]: tuple(row[1:])
        for row in conn.execute(
            select(_study.c.id, *(_study.c[c] for c in _STUDY_FACTS)).where(_study.c.id.in_(study_ids)).order_by(_study.c.id).with_for_update()
        )
    }
    modalities: dict[uuid.UUID, set[str]] = defaultdict(set)
    series_counts: dict[uuid.UUID, int] = defaultdict(int)
    instance_counts: dict[uuid.UUID, int] = defaultdict(int)
    series_instances: dict[uuid.UUID, int] = {}
    stored_series: dict[uuid.UUID, tuple[Any, ...]] = {}
    for study_id, series_id, modality, instances, stored_count, stored_partners in conn.execute(_LIVE_SERIES(conn), {"ids": list(study_ids)}):
        modalities[study_id].add(modality)
        series_counts[study_id] += 1
        instance_counts[study_id] += instances
        series_instances[series_id] = instances
        stored_series[series_id] = (stored_count, stored_partners)
    study_partners = _partners(conn, _STUDY_PARTNERS, study_ids)
    series_partners = _partners(conn, _SERIES_PARTNERS, list(series_instances))
    studies: list[dict[str, Any]] = [
        {
            "_id": study_id,
            "modalities": join_modalities(modalities.get(study_id, ())),
            "series_count": series_counts.get(study_id, 0),
            "instance_count": instance_counts.get(study_id, 0),
            "partners": join_values(study_partners.get(study_id, ()), PARTNER_SEPARATOR),
        }
        for study_id in study_ids
    ]
    studies = [row for row in studies if stored_studies.get(row["_id"]) != tuple(row[c] for c in _STUDY_FACTS)]
    if studies:
        conn.execute(_SET_STUDY, studies)
    series: list[dict[str, Any]] = [
        {"_id": series_id, "instance_count": count, "partners": join_values(series_partners.get(series_id, ()), PARTNER_SEPARATOR)}
        for series_id, count in sorted(series_instances.items())
    ]
    series = [row for row in series if stored_series[row["_id"]] != (row["instance_count"], row["partners"])]
    if series:
        conn.execute(_SET_SERIES, series)


def _partners(conn: Connection, statement: PerDialect[Any], ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, set[str]]:
    partners: dict[uuid.UUID, set[str]] = defaultdict(set)
    if ids:
        for entity_id, partner in conn.execute(statement(conn), {"ids": list(ids)}):
            partners[entity_id].add(partner)
    return partners
