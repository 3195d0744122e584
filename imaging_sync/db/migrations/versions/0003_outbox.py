"""Transactional outbox: events written with the index changes they describe

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import imaging_sync.db.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_event",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("aggregate_type", sa.String(length=16), nullable=False),
        sa.Column("aggregate_id", sa.Uuid(), nullable=False),
        sa.Column("payload", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("processed_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_event")),
    )
    open_only = sa.text("status IN ('pending', 'processing')")
    op.create_index("ix_outbox_event_open", "outbox_event", ["id"], postgresql_where=open_only, sqlite_where=open_only)
    op.create_index("ix_outbox_event_aggregate_id_id", "outbox_event", ["aggregate_id", "id"])
    op.create_index("ix_outbox_event_status_created_at", "outbox_event", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_event_status_created_at", table_name="outbox_event")
    op.drop_index("ix_outbox_event_aggregate_id_id", table_name="outbox_event")
    op.drop_index("ix_outbox_event_open", table_name="outbox_event")
    op.drop_table("outbox_event")
