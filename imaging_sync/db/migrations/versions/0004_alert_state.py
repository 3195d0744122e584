"""Alert incidents: one row per open or recently resolved incident

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import imaging_sync.db.types

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_state",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("partner", sa.String(length=63), nullable=True),
        sa.Column("opened_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=True),
        sa.Column("notified_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("recovery_notified_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_alert_state")),
    )


def downgrade() -> None:
    op.drop_table("alert_state")
