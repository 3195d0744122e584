"""Study and series facts as columns: modalities, series and instance counts, partners

Every study search result shows these; aggregated per page from series,
instance and entity_link they were half of a date-range search's cost (see
``imaging_sync.catalog.facts``, which keeps them from now on). Existing rows
are filled here from the same rows, set-based.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.add_column(sa.Column("modalities", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("series_count", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("instance_count", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("partners", sa.Text(), server_default="", nullable=False))
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instance_count", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("partners", sa.Text(), server_default="", nullable=False))
    _fill()


def _fill() -> None:
    """The facts of every existing row, from its live children and its links (both databases' SQL)."""
    postgres = op.get_bind().dialect.name == "postgresql"

    def sorted_list(value: str, separator: str, source: str) -> str:
        """Distinct ``value``s of ``source`` (``FROM … WHERE …``), sorted and joined, or '' for none.

        string_agg(DISTINCT … ORDER BY …) on PostgreSQL; on SQLite, group_concat
        over a sorted DISTINCT subquery (SQLite keeps that order in practice).
        """
        if postgres:
            return f"coalesce((SELECT string_agg(DISTINCT {value}, '{separator}' ORDER BY {value}) {source}), '')"
        return f"coalesce((SELECT group_concat(v, '{separator}') FROM (SELECT DISTINCT {value} AS v {source} ORDER BY 1)), '')"

    series_partners = sorted_list("l.partner", ",", "FROM entity_link l WHERE l.entity_type = 'series' AND l.entity_id = series.id")
    op.execute(
        f"""
        UPDATE series SET
          instance_count = (SELECT count(*) FROM instance i WHERE i.series_id = series.id AND i.deleted_at IS NULL),
          partners = {series_partners}
        WHERE deleted_at IS NULL
        """
    )
    study_partners = sorted_list("l.partner", ",", "FROM entity_link l WHERE l.entity_type = 'study' AND l.entity_id = study.id")
    modalities = sorted_list("s.modality", "\\", "FROM series s WHERE s.study_id = study.id AND s.deleted_at IS NULL")
    op.execute(
        f"""
        UPDATE study SET
          modalities = {modalities},
          series_count = (SELECT count(*) FROM series s WHERE s.study_id = study.id AND s.deleted_at IS NULL),
          instance_count = (SELECT coalesce(sum(s.instance_count), 0) FROM series s WHERE s.study_id = study.id AND s.deleted_at IS NULL),
          partners = {study_partners}
        """
    )


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite ≥ 3.35 has it): batch mode would copy ``study`` into a new table,
    # which the foreign keys of ``series`` refuse once there are rows.
    for table, column in (("series", "partners"), ("series", "instance_count"), ("study", "partners"), ("study", "instance_count"), ("study", "series_count"), ("study", "modalities")):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
