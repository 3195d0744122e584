"""Sealing the audit log: an order for its rows, the seals, and no rewrite through SQLite's REPLACE

- ``seq`` on ``audit_log``, ``audit_completion`` and ``audit_disclosure``: on
  PostgreSQL one shared sequence (``audit_seq``) numbers every row as it is
  written, and ``txid`` records the writing transaction (``pg_current_xact_id``,
  64 bits, never wraps). A seal covers exactly the rows whose transactions
  ended before the oldest one still running when it was made
  (``imaging_sync.audit_seals``), which concurrent writers in many processes
  cannot break. BRIN indexes on ``txid``: rows arrive in its order, and a
  BRIN index costs the insert almost nothing. On SQLite (one writer at a time)
  the sealer holds the write lock and uses ``rowid``; the columns stay NULL.
- ``audit_seal``: one row per seal, chained by hash; append-only like the log.
- ``audit_export_cursor``: how far each exporter (the ATNA relay) has sent,
  by seal number.
- SQLite: ``INSERT OR REPLACE`` deletes the old row without firing its DELETE
  trigger, and an upsert could rewrite it: a BEFORE INSERT trigger refuses an
  insert whose key already exists (on ``audit_disclosure`` it skips it, which
  is what the writer's ``ON CONFLICT DO NOTHING`` asks).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import imaging_sync.db.types

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_AUDIT_TABLES = ("audit_log", "audit_completion", "audit_disclosure")
# table -> its key columns, for SQLite's refusal of an insert over an existing row
_KEYS = {"audit_log": ("id",), "audit_completion": ("audit_id",), "audit_disclosure": ("entity_id", "audit_id")}


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("CREATE SEQUENCE audit_seq AS bigint")
    for table in _AUDIT_TABLES:
        if postgres:
            # One statement: existing rows get their numbers in the rewrite it makes (no row trigger fires).
            op.execute(f"ALTER TABLE {table} ADD COLUMN seq bigint DEFAULT nextval('audit_seq'), "
                       f"ADD COLUMN txid bigint DEFAULT (pg_current_xact_id()::text::bigint)")
            op.execute(f"CREATE INDEX ix_{table}_txid ON {table} USING brin (txid)")
        else:
            # Plain ALTER TABLE ADD COLUMN: a batch rebuild would drop the table's append-only triggers.
            op.add_column(table, sa.Column("seq", sa.BigInteger(), nullable=True))
            op.add_column(table, sa.Column("txid", sa.BigInteger(), nullable=True))
    op.create_table(
        "audit_seal",
        sa.Column("seal_no", sa.BigInteger(), nullable=False),
        sa.Column("sealed_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("lo", sa.BigInteger(), nullable=True),
        sa.Column("hi", sa.BigInteger(), nullable=True),
        sa.Column("ranges", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("rows", sa.LargeBinary(), nullable=False),
        sa.Column("digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        # month in the key: the table is partitioned by month on PostgreSQL (0013), whose keys must hold the partition key.
        sa.PrimaryKeyConstraint("seal_no", "month", name=op.f("pk_audit_seal")),
    )
    op.create_table(
        "audit_export_cursor",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("seal_no", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_audit_export_cursor")),
    )
    if postgres:
        op.execute("CREATE TRIGGER audit_seal_no_update_delete BEFORE UPDATE OR DELETE ON audit_seal FOR EACH ROW EXECUTE FUNCTION audit_child_append_only()")
        op.execute("CREATE TRIGGER audit_seal_no_truncate BEFORE TRUNCATE ON audit_seal FOR EACH STATEMENT EXECUTE FUNCTION audit_child_append_only()")
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_seal_no_{operation.lower()} BEFORE {operation} ON audit_seal "
                f"BEGIN SELECT RAISE(ABORT, 'audit_seal is append-only: {operation} refused'); END"
            )
        for table in (*_AUDIT_TABLES, "audit_seal"):
            keys = _KEYS.get(table, ("seal_no",))
            match = " AND ".join(f"{k} = NEW.{k}" for k in keys)
            # A disclosure already recorded is skipped, as the writer's ON CONFLICT DO NOTHING asks (and
            # REPLACE then rewrites nothing); anywhere else the statement fails.
            action = "RAISE(IGNORE)" if table == "audit_disclosure" else f"RAISE(ABORT, '{table} is append-only: an insert over an existing row refused')"
            op.execute(f"CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table} WHEN EXISTS (SELECT 1 FROM {table} WHERE {match}) BEGIN SELECT {action}; END")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if not postgres:
        for table in (*_AUDIT_TABLES, "audit_seal"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_replace")
    op.drop_table("audit_export_cursor")
    op.drop_table("audit_seal")
    for table in _AUDIT_TABLES:
        if postgres:
            op.execute(f"DROP INDEX IF EXISTS ix_{table}_txid")
        op.drop_column(table, "txid")
        op.drop_column(table, "seq")
    if postgres:
        op.execute("DROP SEQUENCE IF EXISTS audit_seq")
