"""The audit tables partitioned by month on PostgreSQL, their rows moved in

``audit_log`` (on ``id``), ``audit_completion`` and ``audit_disclosure`` (on
``audit_id``) are range-partitioned on the entry's UUIDv7, whose first 48
bits are its millisecond time, so one month is one range of the key;
``audit_seal`` on ``month``. A month's rows and seals can then be archived and
dropped as whole partitions (``imaging-sync audit archive``), where the
append-only triggers refuse any DELETE. Existing rows are copied with their
``seq`` and ``txid``, so the seals made before stay true. Partitions exist
from the oldest row's month to 24 months ahead (``db upgrade`` keeps that
window), and a ``_default`` partition of each table takes a row of a month
without one, so an audit write never fails for want of a partition.

The month bounds are computed here as they are today (a migration must do
what it did the day it was written): see ``imaging_sync.db.partitions``.
``audit_archive`` records each archived month (where it went, its row count,
its seals' numbers and hashes) so that ``audit verify`` steps over them.
SQLite: only that table (one file, no partitions, nothing archived).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from alembic import op
from sqlalchemy import text
from sqlalchemy.dialects import postgresql

import imaging_sync.db.types

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# table -> (partition key, its indexes other than the primary key: name -> definition)
_TABLES = {
    "audit_log": ("id", {"ix_audit_log_at": "(at)", "ix_audit_log_actor_at": "(actor, at)",
                         "ix_audit_log_resource_type_resource_id": "(resource_type, resource_id)", "ix_audit_log_txid": "USING brin (txid)"}),
    "audit_completion": ("audit_id", {"ix_audit_completion_txid": "USING brin (txid)"}),
    "audit_disclosure": ("audit_id", {"ix_audit_disclosure_audit_id": "(audit_id)", "ix_audit_disclosure_txid": "USING brin (txid)"}),
    "audit_seal": ("month", {}),
}
_KEYS = {"audit_log": "id", "audit_completion": "audit_id", "audit_disclosure": "entity_id, audit_id", "audit_seal": "seal_no, month"}
_TRIGGER_FUNCTION = {"audit_log": "audit_log_append_only", "audit_completion": "audit_child_append_only",
                     "audit_disclosure": "audit_child_append_only", "audit_seal": "audit_child_append_only"}
_MONTHS_AHEAD = 24


def _next(month: dt.date) -> dt.date:
    return dt.date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def _floor(month: dt.date) -> str:
    return str(uuid.UUID(int=int(dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC).timestamp() * 1000) << 80))


def _bound(table: str, month: dt.date) -> str:
    return f"'{month.isoformat()}'" if _TABLES[table][0] == "month" else f"'{_floor(month)}'"


def upgrade() -> None:
    # Both backends: the record of archived months (what `audit verify` needs to step over them).
    op.create_table(
        "audit_archive",
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("archived_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("location", sa.String(length=512), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("seals", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("month", name=op.f("pk_audit_archive")),
    )
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("CREATE TRIGGER audit_archive_no_update_delete BEFORE UPDATE OR DELETE ON audit_archive FOR EACH ROW EXECUTE FUNCTION audit_child_append_only()")
    oldest_ms = bind.scalar(text("SELECT id FROM audit_log ORDER BY id LIMIT 1"))
    today = dt.datetime.now(dt.UTC).date().replace(day=1)
    first = today
    if oldest_ms is not None:
        moment = dt.datetime.fromtimestamp((oldest_ms.int >> 80) / 1000, tz=dt.UTC)
        first = min(first, dt.date(moment.year, moment.month, 1))
    months, month = [], first
    while month <= dt.date(today.year + (today.month + _MONTHS_AHEAD - 1) // 12, (today.month + _MONTHS_AHEAD - 1) % 12 + 1, 1):
        months.append(month)
        month = _next(month)

    # 1. The old tables step aside, names and all (index names are per schema).
    op.execute("ALTER TABLE audit_completion DROP CONSTRAINT fk_audit_completion_audit_id_audit_log")
    for table, (_, indexes) in _TABLES.items():
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_unpartitioned")
        op.execute(f"ALTER INDEX pk_{table} RENAME TO pk_{table}_unpartitioned")
        for name in indexes:
            op.execute(f"ALTER INDEX IF EXISTS {name} RENAME TO {name}_unpartitioned")
    # 2. The partitioned tables, their keys, indexes, partitions and triggers; the rows copied as they are.
    for table, (key, indexes) in _TABLES.items():
        op.execute(f"CREATE TABLE {table} (LIKE {table}_unpartitioned INCLUDING DEFAULTS) PARTITION BY RANGE ({key})")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({_KEYS[table]})")
        for name, definition in indexes.items():
            op.execute(f"CREATE INDEX {name} ON {table} {definition}")
        for month in months:
            op.execute(f"CREATE TABLE {table}_y{month.year:04d}m{month.month:02d} PARTITION OF {table} "
                       f"FOR VALUES FROM ({_bound(table, month)}) TO ({_bound(table, _next(month))})")
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_unpartitioned")
        function = _TRIGGER_FUNCTION[table]
        op.execute(f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {function}()")
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {function}()")
    op.execute("ALTER TABLE audit_completion ADD CONSTRAINT fk_audit_completion_audit_id_audit_log FOREIGN KEY (audit_id) REFERENCES audit_log (id)")
    # 3. The old tables go (DROP is not a row operation: their triggers go with them).
    for table in reversed(list(_TABLES)):
        op.execute(f"DROP TABLE {table}_unpartitioned")


def downgrade() -> None:
    op.drop_table("audit_archive")
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE audit_completion DROP CONSTRAINT fk_audit_completion_audit_id_audit_log")
    for table, (_, indexes) in _TABLES.items():
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_partitioned")
        op.execute(f"ALTER INDEX pk_{table} RENAME TO pk_{table}_partitioned")
        for name in indexes:
            op.execute(f"ALTER INDEX {name} RENAME TO {name}_partitioned")
    for table, (_, indexes) in _TABLES.items():
        op.execute(f"CREATE TABLE {table} (LIKE {table}_partitioned INCLUDING DEFAULTS)")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({_KEYS[table]})")
        for name, definition in indexes.items():
            op.execute(f"CREATE INDEX {name} ON {table} {definition}")
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_partitioned")
        function = _TRIGGER_FUNCTION[table]
        op.execute(f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {function}()")
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {function}()")
    op.execute("ALTER TABLE audit_completion ADD CONSTRAINT fk_audit_completion_audit_id_audit_log FOREIGN KEY (audit_id) REFERENCES audit_log (id)")
    for table in reversed(list(_TABLES)):
        op.execute(f"DROP TABLE {table}_partitioned")
