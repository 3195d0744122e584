"""A statement run straight on the PostgreSQL driver: built and compiled by SQLAlchemy once, executed by psycopg.

Why: a web viewer scrolling a series sends one DICOMweb request per frame,
hundreds a minute, and each runs two statements: the instance and its kept
header by three UIDs, and the audit entry that must commit before the frame
leaves. SQLAlchemy's path for running a statement (walking it to build its
cache key, hashing that key to find the compiled form, an execution context,
a result wrapper) was a third of the client's CPU for these two
(in process on PostgreSQL, 3,000 calls: the frame lookup 0.211 ms by
``conn.execute``, 0.245 by ``exec_driver_sql``, 0.142 here; the audit entry
with two disclosures 0.230 against 0.162). The statement itself stays SQLAlchemy's: its text, its casts, the bind
processors of its column types (JSON written by the engine's serializer) are
exactly what ``conn.execute`` would send. Only the execution is skipped.

What SQLAlchemy would otherwise do here is done here too: the statement joins
the connection's transaction (autobegin, so a commit-as-you-go caller's
``commit()`` commits it); a driver error becomes the same
``sqlalchemy.exc.DBAPIError`` subclass, parameters hidden; a lost connection
is invalidated so the pool does not lend it again. SQLite (and any other
dialect) takes the usual ``conn.execute``: its rows need SQLAlchemy's result
processing (UUIDs stored as text).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

Row = Sequence[Any]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    returns_rows: bool  # known from the statement: psycopg builds its whole column description to say so
    # Each parameter: its name given, its name in the SQL text, the value fixed in the statement (if any), its type's processor.
    binds: tuple[tuple[str, str, Any, Callable[[Any], Any] | None], ...]


class DirectStatement:
    """``statement``, compiled on first use, run on the driver when the connection is PostgreSQL's.

    Compiled once, for the first PostgreSQL dialect that runs it (every engine here is psycopg's).
    """

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None
        self._lock = threading.Lock()

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Row]:
        """The statement's rows (none for a statement that returns none), as ``conn.execute(...).all()`` gives them."""
        if conn.dialect.name != "postgresql":
            result = conn.execute(self.statement, dict(params))
            return list(result.all()) if result.returns_rows else []
        compiled = self._compiled or self._compile(conn.dialect)
        values = {}
        for name, key, fixed, process in compiled.binds:
            value = params[name] if name in params else fixed
            values[key] = value if process is None else process(value)
        if not conn.in_transaction():
            conn.begin()  # what conn.execute's autobegin does: the caller's commit() (or the block's end) covers it
        driver = conn.connection.driver_connection
        dbapi = conn.dialect.loaded_dbapi
        try:
            cursor = driver.execute(compiled.sql, values)  # type: ignore[union-attr]
            return cursor.fetchall() if compiled.returns_rows else []
        except dbapi.Error as error:
            lost = conn.dialect.is_disconnect(error, driver, None)
            if lost:
                conn.invalidate(error)
            raise DBAPIError.instance(compiled.sql, None, error, dbapi.Error, hide_parameters=True, connection_invalidated=lost, dialect=conn.dialect) from error

    def _compile(self, dialect: Dialect) -> _Compiled:
        with self._lock:
            if self._compiled is None:
                compiled = cast(ClauseElement, self.statement).compile(dialect=dialect)
                if not isinstance(compiled, SQLCompiler) or compiled.positional or compiled.post_compile_params:
                    raise TypeError("DirectStatement takes a statement with named parameters and no expanding (IN-list) ones")
                binds = {
                    name: (name, compiled.escaped_bind_names.get(name, name), param.effective_value, param.type.dialect_impl(dialect).bind_processor(dialect))
                    for param, name in compiled.bind_names.items()
                }
                returns_rows = bool(getattr(self.statement, "is_select", False) or compiled.effective_returning)
                self._compiled = _Compiled(compiled.string, returns_rows, tuple(binds.values()))
            return self._compiled


__all__ = ["DirectStatement"]
