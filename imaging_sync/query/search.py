"""One level's search as SQL, for every edge that searches by DICOM attributes: the DIMSE node's C-FIND and
the DICOMweb QIDO-RS.

A search at a level reads the level's table joined to the levels above it
(a series match carries its study's and patient's attributes: PS3.4 C.6.2.1
and PS3.18 10.6's relational search both read them), never soft-deleted
rows. Its columns are the match's own id, its subject's and study's ids
(whose data the answer discloses, for the audit log), then the stored keys
asked for, labelled by keyword: the study's and series' counts and
ModalitiesInStudy too, facts the sync keeps on their rows (``catalog.facts``).
The patient level's counts are not columns: :func:`aggregates` computes them
per batch of matches, one grouped query each, so a query costs what its
result costs, not what the index holds.

Matching is :func:`imaging_sync.query.matching.key_conditions`; a value not
valid for its key is a ValidationError naming the keyword, which each edge
answers in its own terms (C001, a 400).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Select, func, select

from imaging_sync.query.keys import Key, Level, instance, series, study, subject
from imaging_sync.query.matching import key_conditions

LEVEL_ID = {"PATIENT": subject.c.id, "STUDY": study.c.id, "SERIES": series.c.id, "IMAGE": instance.c.id}
# Where the stored keys' columns start in a row of :func:`statement`: after _id, _subject (and _study).
FIRST_KEY_COLUMN = {"PATIENT": 2, "STUDY": 3, "SERIES": 3, "IMAGE": 3}


def joined(level: Level) -> tuple[Any, list[Any]]:
    """The level's table joined to the levels above, and the conditions that hide soft-deleted rows."""
    if level == "PATIENT":
        return subject, [subject.c.deleted_at.is_(None)]
    source = study.join(subject, study.c.subject_id == subject.c.id)
    live = [study.c.deleted_at.is_(None), subject.c.deleted_at.is_(None)]
    if level in ("SERIES", "IMAGE"):
        source = series.join(source, series.c.study_id == study.c.id)
        live.append(series.c.deleted_at.is_(None))
    if level == "IMAGE":
        source = instance.join(source, instance.c.series_id == series.c.id)
        live.append(instance.c.deleted_at.is_(None))
    return source, live


def is_stored(key: Key | None) -> bool:
    """A key answered from a column of the index (not computed, not a key we do not keep)."""
    return key is not None and key.column is not None and key.match not in ("computed", "none")


def statement(
    level: Level,
    matches: Mapping[str, Sequence[str]],
    returned: Sequence[Key],
    dialect: str,
    *,
    combined_datetime: bool = False,
    extra: Sequence[Any] = (),
) -> Select[Any]:
    """The matches of ``matches`` (keyword → values) at ``level``: ``_id``, ``_subject``, ``_study`` (not at
    PATIENT level), then each stored key of ``returned`` labelled by its keyword. ``extra``: further conditions."""
    conditions = key_conditions(matches, dialect, combined=combined_datetime)
    return _returning(level, tuple(returned)).where(*conditions, *extra)


@functools.lru_cache(maxsize=256)
def _returning(level: Level, returned: tuple[Key, ...]) -> Select[Any]:
    """The level's live rows with these columns, before any matching: built once per level and set of returned keys
    (a search's answer most often asks for the defaults), not per request; a Select is immutable, ``where`` copies it."""
    source, live = joined(level)
    columns = [LEVEL_ID[level].label("_id"), subject.c.id.label("_subject")]
    if level != "PATIENT":
        columns.append(study.c.id.label("_study"))
    columns.extend(key.column.label(key.keyword) for key in returned if is_stored(key))
    return select(*columns).select_from(source).where(*live)


def aggregates(conn: Any, level: Level, ids: list[Any], wanted: set[str]) -> dict[str, dict[Any, Any]]:
    """Per-batch counts of the patient level (PS3.4 C.3.4 'Number of Patient Related …'), one grouped query each:
    keyword → {match id → value}; a match absent from a mapping has none (0)."""
    out: dict[str, dict[Any, Any]] = {}
    live_st, live_se, live_in = study.c.deleted_at.is_(None), series.c.deleted_at.is_(None), instance.c.deleted_at.is_(None)
    if level == "PATIENT":
        owner = study.c.subject_id
        if "NumberOfPatientRelatedStudies" in wanted:
            out["NumberOfPatientRelatedStudies"] = _grouped(conn, select(owner, func.count()).where(owner.in_(ids), live_st).group_by(owner))
        if "NumberOfPatientRelatedSeries" in wanted:
            stmt = select(owner, func.count()).select_from(series.join(study, series.c.study_id == study.c.id))
            out["NumberOfPatientRelatedSeries"] = _grouped(conn, stmt.where(owner.in_(ids), live_st, live_se).group_by(owner))
        if "NumberOfPatientRelatedInstances" in wanted:
            stmt = select(owner, func.count()).select_from(
                instance.join(series, instance.c.series_id == series.c.id).join(study, series.c.study_id == study.c.id)
            )
            out["NumberOfPatientRelatedInstances"] = _grouped(conn, stmt.where(owner.in_(ids), live_st, live_se, live_in).group_by(owner))
    return out


def computed_default(keyword: str) -> Any:
    """The value of a computed key for a match no row of :func:`aggregates` names: a count of 0."""
    return 0


def _grouped(conn: Any, stmt: Any) -> dict[Any, int]:
    return {owner: int(n) for owner, n in conn.execute(stmt)}


__all__ = ["FIRST_KEY_COLUMN", "LEVEL_ID", "aggregates", "computed_default", "is_stored", "joined", "statement"]
