"""DICOMweb's header cache: ``instance_header``

The index holds search attributes only. DICOMweb metadata (every attribute
of a file's header) and pixel frames need the file itself, which stays in the
partner's bucket: its header is read once with ranged GETs and kept here,
with the byte ranges of its bulk data and frames, keyed by instance and
checked against the object's ETag (:mod:`imaging_sync.dicom_header`,
:mod:`imaging_sync.catalog.headers`). A row with ``failure`` records a header
that could not be read (the error's kind), for the background reader.

The runtime role needs SELECT, INSERT, UPDATE and DELETE (a changed object's
row is replaced).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import imaging_sync.db.types

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "instance_header",
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("partner", sa.String(length=63), nullable=False),
        sa.Column("bucket", sa.String(length=63), nullable=True),
        sa.Column("key", sa.String(length=1024), nullable=True),
        sa.Column("etag", sa.String(length=128), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=True),  # JSON text, answered as it is (no parse, no serialisation)
        sa.Column("bulk", _JSON, nullable=True),
        sa.Column("frames", _JSON, nullable=True),
        sa.Column("failure", sa.String(length=32), nullable=True),
        sa.Column("read_at", imaging_sync.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["instance.id"], name=op.f("fk_instance_header_instance_id_instance")),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instance_header")),
    )


def downgrade() -> None:
    op.drop_table("instance_header")
