"""Monthly partitions of the audit tables on PostgreSQL: their bounds, names, creation ahead of time, listing.

Each audit table is range-partitioned on the entry's UUIDv7 (``audit_log.id``,
the others' ``audit_id``; ``audit_seal`` on ``month``): a UUIDv7 begins with
its millisecond timestamp, so the UUIDs of one month are one range, the key
every lookup already uses, and a month's entries, completions, disclosures
and seals sit in partitions that are archived and dropped together
(``imaging_sync.audit_archive``) instead of deleted row by row, which the
tables refuse. ``imaging-sync db upgrade`` (the owner's connection) creates
the partitions up to ``MONTHS_AHEAD`` months ahead; a row for a month without
one goes to the ``_default`` partition, so an audit write never fails for
want of a partition, and ``imaging-sync doctor`` warns when it holds rows.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import Connection, text

# table -> its partition key column
PARTITIONED = {"audit_log": "id", "audit_completion": "audit_id", "audit_disclosure": "audit_id", "audit_seal": "month"}
MONTHS_AHEAD = 24


def month_start(month: dt.date) -> dt.date:
    return dt.date(month.year, month.month, 1)


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def uuid7_floor(month: dt.date) -> uuid.UUID:
    """The smallest UUIDv7 of ``month`` (UTC): its first millisecond, every other bit zero."""
    moment = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    return uuid.UUID(int=int(moment.timestamp() * 1000) << 80)


def partition_name(table: str, month: dt.date) -> str:
    return f"{table}_y{month.year:04d}m{month.month:02d}"


def bounds(table: str, month: dt.date) -> tuple[str, str]:
    """The FROM and TO values (SQL literals) of ``table``'s partition for ``month``."""
    if PARTITIONED[table] == "month":
        return f"'{month_start(month).isoformat()}'", f"'{next_month(month).isoformat()}'"
    return f"'{uuid7_floor(month)}'", f"'{uuid7_floor(next_month(month))}'"


def create_month(conn: Connection, month: dt.date) -> list[str]:
    """Create ``month``'s partition of every audit table that lacks one; the partitions created."""
    made = []
    for table in PARTITIONED:
        name = partition_name(table, month)
        exists = conn.scalar(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name})
        if not exists:
            low, high = bounds(table, month)
            conn.execute(text(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ({low}) TO ({high})"))
            made.append(name)
    return made


def ensure_ahead(conn: Connection, today: dt.date | None = None, months: int = MONTHS_AHEAD) -> list[str]:
    """Partitions from this month to ``months`` ahead (the owner's connection; a no-op on SQLite)."""
    if conn.dialect.name != "postgresql":
        return []
    month, made = month_start(today or dt.datetime.now(dt.UTC).date()), []
    for _ in range(months + 1):
        made.extend(create_month(conn, month))
        month = next_month(month)
    return made


def months_present(conn: Connection, table: str = "audit_log") -> list[dt.date]:
    """The months that have a partition of ``table``, oldest first."""
    names = conn.scalars(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :table"
    ), {"table": table})
    found = []
    for name in names:
        tail = name.removeprefix(f"{table}_y")
        if len(tail) == 7 and tail[4] == "m" and tail[:4].isdigit() and tail[5:].isdigit():
            found.append(dt.date(int(tail[:4]), int(tail[5:]), 1))
    return sorted(found)


def default_rows(conn: Connection) -> int:
    """Rows in the ``_default`` partitions (a month without its partition): should be none."""
    return sum(int(conn.scalar(text(f"SELECT count(*) FROM {table}_default")) or 0) for table in PARTITIONED)


__all__ = ["MONTHS_AHEAD", "PARTITIONED", "bounds", "create_month", "default_rows", "ensure_ahead", "month_start", "months_present",
           "next_month", "partition_name", "uuid7_floor"]
