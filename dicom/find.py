"""C-FIND over the index: one SQL statement per query, streamed, plus per-batch aggregates.

Every matching key becomes a condition on an indexed column (the core's PS3.4
matching, ``imaging_sync.query.matching``, which the REST searches use too);
the index is never loaded into Python to be filtered. Rows arrive through a
server-side cursor (PostgreSQL) or SQLite's incremental cursor in batches of
``batch_size``; counts and ModalitiesInStudy (PS3.4 C.6.1.1.3, C.6.1.1.4) are
one grouped query per batch and only when asked for, so a query costs what
its result costs, not what the index holds.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, NamedTuple

import sqlalchemy.exc
from sqlalchemy import Engine, func, select

from dicom.errors import InvalidKeyValueError
from dicom.identifiers import QueryRequest, Requested
from dicom.responses import EncodedIdentifier, ResponseEncoder
from imaging_sync.errors import ValidationError
from imaging_sync.query.keys import KEYS, instance, series, study, subject
from imaging_sync.query.matching import key_conditions


def _joined(level: str) -> tuple[Any, list[Any]]:
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


_ID = {"PATIENT": subject.c.id, "STUDY": study.c.id, "SERIES": series.c.id, "IMAGE": instance.c.id}


class Match(NamedTuple):
    """One C-FIND match: the response identifier, and whose data it discloses (for the audit log)."""

    identifier: EncodedIdentifier
    subject_id: uuid.UUID
    study_id: uuid.UUID | None  # None at PATIENT level: a patient match shows no study


def where_clause(request: QueryRequest, dialect: str, *, combined_datetime: bool = False) -> list[Any]:
    """The SQL conditions of a request's matching keys (shared by C-FIND and C-MOVE/C-GET): the core's PS3.4
    matching (``imaging_sync.query.matching``); a value not valid for its key is refused as C001 naming its tag."""
    try:
        return key_conditions(request.matches, dialect, combined=combined_datetime)
    except ValidationError as exc:
        key = KEYS.get(exc.path)
        raise InvalidKeyValueError(str(exc), key.tag if key is not None else None) from None


def _computed_wanted(request: QueryRequest) -> set[str]:
    return {r.key.keyword for r in request.returned if r.key is not None and r.key.match == "computed"}


class Finder:
    """Runs C-FIND requests against one engine (the process's), streaming matches as response identifiers.

    A C-FIND holds its connection while its matches stream, and its audit
    entry needs a second one for a moment before each batch leaves
    (dicom.auditing). With every pooled connection held by a stream, each
    would wait for a second one for ever (the pool has no overflow): so at
    most ``pool size - 1`` C-FINDs stream at once, the others wait their turn
    (up to the pool's timeout, then C002), and an audit write always finds a
    connection.
    """

    def __init__(self, engine: Engine, *, retrieve_ae_title: str, batch_size: int = 500) -> None:
        self._engine = engine
        self._retrieve_ae_title = retrieve_ae_title
        self._dialect = engine.dialect.name
        self._batch_size = batch_size
        pool_size = getattr(engine.pool, "size", None)
        self._streams = threading.BoundedSemaphore(max(1, pool_size() - 1)) if callable(pool_size) else None
        pool_timeout = getattr(engine.pool, "timeout", None)
        self._wait = float(pool_timeout()) if callable(pool_timeout) else 30.0

    def statement(self, request: QueryRequest, *, combined_datetime: bool = False) -> Any:
        source, live = _joined(request.level)
        columns = [_ID[request.level].label("_id"), subject.c.id.label("_subject")]
        if request.level != "PATIENT":
            columns.append(study.c.id.label("_study"))
        for req in request.returned:
            if _stored(req):
                columns.append(req.key.column.label(req.key.keyword))  # type: ignore[union-attr]  # _stored: a key with a column
        stmt = select(*columns).select_from(source)
        return stmt.where(*live, *where_clause(request, self._dialect, combined_datetime=combined_datetime))

    def find(self, request: QueryRequest, *, combined_datetime: bool = False) -> Iterator[Match]:
        """The matches: response identifiers (dicom.responses: exactly the keys asked for, plus the level, Retrieve
        AE Title and, when needed, the character set), each with the subject and study it discloses."""
        stmt = self.statement(request, combined_datetime=combined_datetime)
        encoder = ResponseEncoder(request.level, request.returned, self._retrieve_ae_title)
        wanted = _computed_wanted(request)
        first = 2 if request.level == "PATIENT" else 3  # the stored keys' columns follow _id, _subject (and _study)
        column_of = {req.key.keyword: first + i for i, req in enumerate(r for r in request.returned if _stored(r))}  # type: ignore[union-attr]
        plan = [(column_of.get(req.key.keyword), req.key.keyword) for req in encoder.sources]  # type: ignore[union-attr]
        patient_level = request.level == "PATIENT"
        with self._stream_slot(), self._engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=self._batch_size).execute(stmt)
            for rows in result.partitions():
                extra = _aggregates(conn, request.level, [row[0] for row in rows], wanted) if wanted else {}
                computed: dict[str, tuple[dict[Any, Any], Any]] = {keyword: (extra.get(keyword, {}), [] if keyword == "ModalitiesInStudy" else 0) for keyword in wanted}
                for row in rows:
                    values = tuple(row[index] if index is not None else _computed(computed[keyword], row[0]) for index, keyword in plan)
                    yield Match(encoder.identifier(values), row[1], None if patient_level else row[2])

    @contextlib.contextmanager
    def _stream_slot(self) -> Iterator[None]:
        if self._streams is None:
            yield
            return
        if not self._streams.acquire(timeout=self._wait):
            raise sqlalchemy.exc.TimeoutError(f"no database connection for a C-FIND within {self._wait:.0f} s")
        try:
            yield
        finally:
            self._streams.release()

    def count(self, request: QueryRequest) -> int:
        stmt = self.statement(request)
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(stmt.subquery())).scalar_one())


def _stored(req: Requested) -> bool:
    """A key answered from a column of the index (not computed, not a key we do not keep)."""
    return req.key is not None and req.key.column is not None and req.key.match not in ("computed", "none")


def _computed(values: tuple[dict[Any, Any], Any], row_id: Any) -> Any:
    found, default = values
    return found.get(row_id, default)


def _aggregates(conn: Any, level: str, ids: list[Any], wanted: set[str]) -> dict[str, dict[Any, Any]]:
    """Per-batch counts (PS3.4 C.3.4 'Number of … Related …') and ModalitiesInStudy, one grouped query each."""
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
    elif level == "STUDY":
        owner = series.c.study_id
        if "ModalitiesInStudy" in wanted:
            modalities: dict[Any, list[str]] = defaultdict(list)
            stmt = select(owner, series.c.modality).where(owner.in_(ids), live_se).distinct().order_by(owner, series.c.modality)
            for study_id, modality in conn.execute(stmt):
                modalities[study_id].append(modality)
            out["ModalitiesInStudy"] = modalities
        if "NumberOfStudyRelatedSeries" in wanted:
            out["NumberOfStudyRelatedSeries"] = _grouped(conn, select(owner, func.count()).where(owner.in_(ids), live_se).group_by(owner))
        if "NumberOfStudyRelatedInstances" in wanted:
            stmt = select(owner, func.count()).select_from(instance.join(series, instance.c.series_id == series.c.id))
            out["NumberOfStudyRelatedInstances"] = _grouped(conn, stmt.where(owner.in_(ids), live_se, live_in).group_by(owner))
    elif level == "SERIES" and "NumberOfSeriesRelatedInstances" in wanted:
        owner = instance.c.series_id
        out["NumberOfSeriesRelatedInstances"] = _grouped(conn, select(owner, func.count()).where(owner.in_(ids), live_in).group_by(owner))
    return out


def _grouped(conn: Any, stmt: Any) -> dict[Any, int]:
    return {owner: int(n) for owner, n in conn.execute(stmt)}


__all__ = ["Finder", "Match", "where_clause"]
