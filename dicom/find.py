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
from collections.abc import Iterator
from typing import Any, NamedTuple

import sqlalchemy.exc
from sqlalchemy import Engine, func, select

from dicom.errors import InvalidKeyValueError
from dicom.identifiers import QueryRequest
from dicom.responses import EncodedIdentifier, ResponseEncoder
from imaging_sync.errors import ValidationError
from imaging_sync.query import search
from imaging_sync.query.keys import KEYS
from imaging_sync.query.matching import key_conditions


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
        raise _invalid_key_value(exc) from None


def _invalid_key_value(exc: ValidationError) -> InvalidKeyValueError:
    key = KEYS.get(exc.path)
    return InvalidKeyValueError(str(exc), key.tag if key is not None else None)


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
        returned = [req.key for req in request.returned if req.key is not None]
        try:
            return search.statement(request.level, request.matches, returned, self._dialect, combined_datetime=combined_datetime)
        except ValidationError as exc:
            raise _invalid_key_value(exc) from None

    def find(self, request: QueryRequest, *, combined_datetime: bool = False) -> Iterator[Match]:
        """The matches: response identifiers (dicom.responses: exactly the keys asked for, plus the level, Retrieve
        AE Title and, when needed, the character set), each with the subject and study it discloses."""
        stmt = self.statement(request, combined_datetime=combined_datetime)
        encoder = ResponseEncoder(request.level, request.returned, self._retrieve_ae_title)
        wanted = _computed_wanted(request)
        first = search.FIRST_KEY_COLUMN[request.level]
        column_of = {req.key.keyword: first + i for i, req in enumerate(r for r in request.returned if search.is_stored(r.key))}  # type: ignore[union-attr]
        plan = [(column_of.get(req.key.keyword), req.key.keyword) for req in encoder.sources]  # type: ignore[union-attr]
        patient_level = request.level == "PATIENT"
        with self._stream_slot(), self._engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=self._batch_size).execute(stmt)
            for rows in result.partitions():
                extra = search.aggregates(conn, request.level, [row[0] for row in rows], wanted) if wanted else {}
                computed: dict[str, tuple[dict[Any, Any], Any]] = {keyword: (extra.get(keyword, {}), search.computed_default(keyword)) for keyword in wanted}
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


def _computed(values: tuple[dict[Any, Any], Any], row_id: Any) -> Any:
    found, default = values
    return found.get(row_id, default)


__all__ = ["Finder", "Match", "where_clause"]
