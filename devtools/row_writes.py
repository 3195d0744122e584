"""Count the rows written to chosen tables, with triggers: the proof that a sync wrote nothing.

PostgreSQL's ``xmin`` shows a row rewritten with the values it already had,
SQLite's ``rowid`` does not (an UPDATE keeps it), and ``updated_at`` is not set
by every statement (the facts of a study are not). A row trigger sees every
INSERT, UPDATE and DELETE on both databases, rows written by ``COPY``
included. :func:`recording_writes` installs them for the duration of a
``with`` block and removes them afterwards (a PostgreSQL test database is
shared by the tests of one worker).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import Engine, text

LOG_TABLE = "devtools_row_write"
_FUNCTION = "devtools_row_write_log"
_OPERATIONS = ("INSERT", "UPDATE", "DELETE")


class WriteLog:
    """The writes recorded so far: ``counts()`` gives ``{(table, operation): rows}``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def counts(self) -> Counter[tuple[str, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(text(f"SELECT table_name, operation, count(*) FROM {LOG_TABLE} GROUP BY table_name, operation"))
            return Counter({(table, operation): count for table, operation, count in rows})

    def clear(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(f"DELETE FROM {LOG_TABLE}"))


@contextmanager
def recording_writes(engine: Engine, tables: Sequence[str]) -> Iterator[WriteLog]:
    """Record each row written to ``tables`` while the block runs."""
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {LOG_TABLE} (table_name VARCHAR(63) NOT NULL, operation VARCHAR(6) NOT NULL)"))
        if postgres:
            conn.execute(text(
                f"CREATE FUNCTION {_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN INSERT INTO {LOG_TABLE} VALUES (TG_TABLE_NAME, TG_OP); RETURN NULL; END $$"
            ))
        for table in tables:
            if postgres:
                conn.execute(text(
                    f'CREATE TRIGGER {LOG_TABLE}_{table} AFTER INSERT OR UPDATE OR DELETE ON "{table}" FOR EACH ROW EXECUTE FUNCTION {_FUNCTION}()'
                ))
                continue
            for operation in _OPERATIONS:
                conn.execute(text(
                    f'CREATE TRIGGER {LOG_TABLE}_{table}_{operation.lower()} AFTER {operation} ON "{table}" '
                    f"BEGIN INSERT INTO {LOG_TABLE} VALUES ('{table}', '{operation}'); END"
                ))
    try:
        yield WriteLog(engine)
    finally:
        with engine.begin() as conn:
            for table in tables:
                if postgres:
                    conn.execute(text(f'DROP TRIGGER IF EXISTS {LOG_TABLE}_{table} ON "{table}"'))
                else:
                    for operation in _OPERATIONS:
                        conn.execute(text(f"DROP TRIGGER IF EXISTS {LOG_TABLE}_{table}_{operation.lower()}"))
            if postgres:
                conn.execute(text(f"DROP FUNCTION IF EXISTS {_FUNCTION}()"))
            conn.execute(text(f"DROP TABLE IF EXISTS {LOG_TABLE}"))
