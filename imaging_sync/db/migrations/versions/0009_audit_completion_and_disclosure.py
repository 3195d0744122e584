"""The audit log's two child tables: how a started entry ended, and whose data an entry disclosed

- ``audit_completion(audit_id, at, outcome, status, detail)``: the end of a
  two-step entry (outcome ``started``, written before a C-FIND's first match
  or a C-MOVE's first file leaves). A row of its own, not an update, so the
  log stays append-only and a process killed mid-operation leaves its
  ``started`` entry behind.
- ``audit_disclosure(entity_id, audit_id, kind)``: one row per subject and
  per study an entry's answer carried. The primary key starts with the
  entity: "who has seen patient X" is a range of it, newest entry first.
  No foreign keys from it (to the entry or the entity): its rows are
  written only by ``imaging_sync.audit``, with or after their entry, and
  the key check cost 4 µs a row; the record must outlive the index's rows.

Both refuse UPDATE and DELETE in the database itself, as ``audit_log`` does
(0002): a trigger on both backends, and TRUNCATE too on PostgreSQL.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import imaging_sync.db.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TABLES = ("audit_completion", "audit_disclosure")


def upgrade() -> None:
    op.create_table(
        "audit_completion",
        sa.Column("audit_id", sa.Uuid(), nullable=False),
        sa.Column("at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True),
        sa.ForeignKeyConstraint(["audit_id"], ["audit_log.id"], name=op.f("fk_audit_completion_audit_id_audit_log")),
        sa.PrimaryKeyConstraint("audit_id", name=op.f("pk_audit_completion")),
    )
    op.create_table(
        "audit_disclosure",
        sa.Column("entity_id", sa.Uuid(), nullable=False),
        sa.Column("audit_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.PrimaryKeyConstraint("entity_id", "audit_id", name=op.f("pk_audit_disclosure")),
    )
    with op.batch_alter_table("audit_disclosure", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_disclosure_audit_id"), ["audit_id"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE FUNCTION audit_child_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
            END $$
        """)
        for table in _TABLES:
            op.execute(f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION audit_child_append_only()")
            op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION audit_child_append_only()")
    else:
        for table in _TABLES:
            for operation in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END"
                )


def downgrade() -> None:
    # The tables go with their triggers (on both backends); then the function they used.
    with op.batch_alter_table("audit_disclosure", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_disclosure_audit_id"))
    op.drop_table("audit_disclosure")
    op.drop_table("audit_completion")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_child_append_only()")
