"""Unauthenticated refusals counted, not one audit row each: ``audit_refusal``

A caller without credentials (or with unusable ones: an HTTP 401; a DICOM
peer whose calling AE title is not listed, or not from its address) was one
``audit_log`` row per refusal: 373 bytes, kept for years, and 981 a second
from one client was 31 GB a day. Such refusals are now one row per channel,
client address and minute (:mod:`imaging_sync.audit_refusals`): the first and
last time, how many, and a small bounded sample of what was tried. Refusals
of an authenticated caller and every disclosure stay full audit entries.

The key starts with the minute, so "what was refused in the last hour" and a
future pruning of old minutes are ranges of the primary key; the second
index answers "what has this address been trying".

Unlike the audit tables the rows are updated (the count, the last time, the
sample): the runtime role needs SELECT, INSERT and UPDATE here, never DELETE.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import imaging_sync.db.types

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_refusal",
        sa.Column("minute", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("client_addr", sa.String(length=64), nullable=False),
        sa.Column("first_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("sample", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False),
        sa.PrimaryKeyConstraint("minute", "channel", "client_addr", name=op.f("pk_audit_refusal")),
    )
    op.create_index(op.f("ix_audit_refusal_client_addr_minute"), "audit_refusal", ["client_addr", "minute"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_refusal_client_addr_minute"), table_name="audit_refusal")
    op.drop_table("audit_refusal")
