"""A search form for the referring physician's name: every stored person name matches the same way

PatientName matched on its folded search form (``person_names.search_form``:
accents dropped, width and case folded) while ReferringPhysicianName was
compared as SQL ``lower()``: ``émile*`` found ``ÉMILE^ZOLA`` as a patient and
not as a referring physician. ``study.referring_physician_name_search`` holds
the folded form of ``referring_physician_name``; ``imaging_sync.query.keys``
gives every PN key its search column, and the sync keeps it
(``sync.apply``).

Existing rows are filled in batches of ``BATCH`` by key, in Python (the
folding is Unicode normalisation, which neither database does the same way),
writing only rows that have a name. The folding is copied here as it is today
(a migration must do what it did the day it was written, whatever
``person_names`` becomes later). No index: a referring physician's name is a
filter on studies another condition or the date order already narrows, as
it was before.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import unicodedata
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BATCH = 2000


def _fold(value: str | None) -> str | None:
    """person_names.search_form as of this revision."""
    if value is None:
        return None
    bare = "".join(ch for ch in unicodedata.normalize("NFKD", value) if not unicodedata.combining(ch))
    return unicodedata.normalize("NFC", bare).casefold()


_study = sa.Table(
    "study", sa.MetaData(),
    sa.Column("id", sa.Uuid()), sa.Column("referring_physician_name", sa.String(200)), sa.Column("referring_physician_name_search", sa.Text()),
)


def upgrade() -> None:
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.add_column(sa.Column("referring_physician_name_search", sa.Text(), nullable=True))
    _fill()


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite ≥ 3.35 has it): batch mode would copy the table, which the foreign keys refuse (see 0006).
    op.execute("ALTER TABLE study DROP COLUMN referring_physician_name_search")


def _fill() -> None:
    """Each study with a referring physician's name gets its search form, batch by batch in key order."""
    conn = op.get_bind()
    change = sa.update(_study).where(_study.c.id == sa.bindparam("_id")).values(referring_physician_name_search=sa.bindparam("search"))
    last: Any = None
    while True:
        query = (
            sa.select(_study.c.id, _study.c.referring_physician_name)
            .where(_study.c.referring_physician_name.is_not(None))
            .order_by(_study.c.id)
            .limit(BATCH)
        )
        if last is not None:
            query = query.where(_study.c.id > last)
        rows = conn.execute(query).all()
        if not rows:
            return
        last = rows[-1][0]
        conn.execute(change, [{"_id": row.id, "search": _fold(row.referring_physician_name)} for row in rows])
