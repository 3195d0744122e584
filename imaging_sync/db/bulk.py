"""Bulk inserts, the one place that knows how each backend does them fastest.

PostgreSQL: ``COPY`` (straight into the table, or into a temporary table and
then ``INSERT … SELECT … ON CONFLICT DO NOTHING`` when rows may already exist).
Profiling the sync showed executemany INSERTs spending most of a page in
client-side parameter handling; COPY removes that. SQLite: executemany, which
is already in-process and fast.

Rows are dicts of column → Python value; JSON columns take any value msgspec
can encode (dicts with dates and UUIDs included), on both backends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Column, Connection, Dialect, Table, insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError

from imaging_sync.db.engine import json_text


def _is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows that are known to be new (no conflict possible)."""
    if not rows:
        return
    if _is_postgres(conn):
        _copy(conn, table.name, table, rows)
    else:
        for start in range(0, len(rows), 2000):
            conn.execute(insert(table), list(rows[start : start + 2000]))


def insert_ignoring_conflicts(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], key_columns: Sequence[str]) -> set[tuple[Any, ...]]:
    """Insert rows unless their key exists (a concurrent writer may have added it); return the keys inserted."""
    if not rows:
        return set()
    if _is_postgres(conn):
        # Almost always none of them exists (the caller looked): COPY straight in
        # under a savepoint, and take the slower staging path only on a clash.
        try:
            with conn.begin_nested():
                _copy(conn, table.name, table, rows)
            return {tuple(row[c] for c in key_columns) for row in rows}
        except IntegrityError:
            return _copy_then_insert(conn, table, rows, key_columns)
    stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=list(key_columns)).returning(*(table.c[c] for c in key_columns))
    inserted: set[tuple[Any, ...]] = set()
    for start in range(0, len(rows), 2000):
        inserted.update(tuple(r) for r in conn.execute(stmt, list(rows[start : start + 2000])))
    return inserted


def key_in(conn: Connection, column: Any, values: Sequence[Any]) -> Any:
    """``column IN values`` as one array parameter on PostgreSQL (one round trip for thousands)."""
    if _is_postgres(conn):
        from sqlalchemy import any_, bindparam
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


KEYS_PER_LIST = 500  # values bound in one ``IN (…)`` list: SQLite's comfortable size, plenty for PostgreSQL


def chunks(values: Sequence[Any], size: int = KEYS_PER_LIST) -> Iterator[Sequence[Any]]:
    """``values`` in consecutive slices of at most ``size`` (for ``IN`` lists and batched statements)."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def chunk_size(conn: Connection) -> int:
    """How many keys one lookup takes: all of a page on PostgreSQL (one array parameter), KEYS_PER_LIST on SQLite."""
    return 100_000 if _is_postgres(conn) else KEYS_PER_LIST


def _columns(table: Table, rows: Sequence[dict[str, Any]]) -> list[str]:
    return [c.name for c in table.columns if c.name in rows[0]]


def _copy(conn: Connection, target: str, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Binary COPY: psycopg's C dumpers write UUIDs, times and integers without text round trips."""
    columns = _columns(table, rows)
    types = [_pg_type(table.c[c], conn.dialect) for c in columns]
    json_at = [i for i, t in enumerate(types) if t == "jsonb"]
    raw = _psycopg(conn)
    column_list = ", ".join(f'"{c}"' for c in columns)
    statement = f'COPY "{target}" ({column_list}) FROM STDIN (FORMAT BINARY)'
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(types)
            for row in rows:
                values = [row[c] for c in columns]
                for i in json_at:
                    if values[i] is not None:
                        values[i] = Jsonb(values[i], dumps=json_text)
                copy.write_row(values)
    except psycopg.Error as exc:
        # Surface driver errors as SQLAlchemy's, like every other statement (IntegrityError, OperationalError, …).
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc


def _psycopg(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under ``conn``: COPY is psycopg's API, not SQLAlchemy's.

    SQLAlchemy has no driver connection for a connection that was invalidated
    or closed; say so rather than fail later on ``None``.
    """
    raw = conn.connection.driver_connection
    if not isinstance(raw, psycopg.Connection):
        raise TypeError(f"bulk COPY needs a live psycopg connection, not {type(raw).__name__}")
    return raw


def _pg_type(column: Column[Any], dialect: Dialect) -> str:
    """The PostgreSQL type name psycopg needs to dump a column in binary COPY (``dialect``: the connection's)."""
    compiled = column.type.dialect_impl(dialect).compile(dialect=dialect).lower()
    if compiled.startswith(("varchar", "character varying")):
        return "varchar"
    if compiled.startswith("timestamp"):
        return "timestamptz" if "with time zone" in compiled else "timestamp"
    return {"integer": "int4", "bigint": "int8", "smallint": "int2", "boolean": "bool"}.get(compiled, compiled)


def _copy_then_insert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], key_columns: Sequence[str]) -> set[tuple[Any, ...]]:
    staging = f"staging_{table.name}"
    raw = _psycopg(conn)
    columns = _columns(table, rows)
    column_list = ", ".join(f'"{c}"' for c in columns)
    keys = ", ".join(f'"{c}"' for c in key_columns)
    with raw.cursor() as cursor:
        cursor.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" (LIKE "{table.name}") ON COMMIT DELETE ROWS')
    _copy(conn, staging, table, rows)
    with raw.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO "{table.name}" ({column_list}) SELECT {column_list} FROM "{staging}" ORDER BY {keys} '
            f"ON CONFLICT ({keys}) DO NOTHING RETURNING {keys}"
        )
        inserted = {tuple(r) for r in cursor.fetchall()}
        cursor.execute(f'TRUNCATE "{staging}"')
    return inserted
