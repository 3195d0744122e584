"""Accent-insensitive search forms, name words on subject and study, and the subject_name_token index

The REST API's ``name`` became a word-prefix search (``hong`` finds
``HONG^GILDONG``) and every name match became accent-insensitive
(``person_names.search_form``: NFKD, combining marks dropped, NFC, casefold).
Here, for the rows written before:

- ``patient_name_search`` of ``subject`` and ``study`` recomputed in the new
  folding (only rows whose value changes are written);
- ``patient_name_words`` (`` hong gildong``) added to both and filled;
- ``subject_name_token(token, subject_id)`` created and filled: one row per
  word of each subject's name, ``COLLATE "C"`` on PostgreSQL so that a word
  prefix is a range of the primary key in code-point order, as on SQLite;
- ``ix_study_live_date_id_name`` includes the words (PostgreSQL), so the
  newest-studies scan checks words index-only too.

Rows are read and written in batches of ``BATCH`` by key, in Python: the
folding is Unicode normalisation, which neither database does the same way.
The foldings are copied here as they are today (a migration must do what it
did the day it was written, whatever ``person_names`` becomes later).

Downgrade drops the words and the token table and puts back the 0007 folding
(NFKC, casefold), so that the code of 0007 finds what it expects.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BATCH = 2000
_WORD = re.compile(r"\w+")
_WORD_MAX_LENGTH = 64


def _fold(value: str | None) -> str | None:
    """person_names.search_form as of this revision."""
    if value is None:
        return None
    bare = "".join(ch for ch in unicodedata.normalize("NFKD", value) if not unicodedata.combining(ch))
    return unicodedata.normalize("NFC", bare).casefold()


def _fold_0007(value: str | None) -> str | None:
    """person_names.search_form before this revision."""
    return None if value is None else unicodedata.normalize("NFKC", value).casefold()


def _words(name: str | None) -> list[str]:
    """person_names.name_words as of this revision."""
    words: dict[str, None] = {}
    for word in _WORD.findall(_fold(name) or ""):
        words.setdefault(word[:_WORD_MAX_LENGTH])
    return list(words)


def _stored_words(name: str | None) -> str | None:
    """catalog.names.stored_words as of this revision."""
    return "".join(" " + word for word in _words(name)) or None


_meta = sa.MetaData()
_subject = sa.Table(
    "subject", _meta,
    sa.Column("id", sa.Uuid()), sa.Column("patient_name", sa.String(200)), sa.Column("patient_name_search", sa.String(200)), sa.Column("patient_name_words", sa.Text()),
)
_study = sa.Table(
    "study", _meta,
    sa.Column("id", sa.Uuid()), sa.Column("subject_id", sa.Uuid()), sa.Column("patient_name_search", sa.String(200)), sa.Column("patient_name_words", sa.Text()),
)
_token = sa.Table("subject_name_token", _meta, sa.Column("token", sa.String(64)), sa.Column("subject_id", sa.Uuid()))


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("subject", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_name_words", sa.Text(), nullable=True))
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_name_words", sa.Text(), nullable=True))
    op.create_table(
        "subject_name_token",
        sa.Column("token", sa.String(length=64, collation="C") if postgres else sa.String(length=64), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(["subject_id"], ["subject.id"], name=op.f("fk_subject_name_token_subject_id_subject"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token", "subject_id", name=op.f("pk_subject_name_token")),
    )
    op.create_index(op.f("ix_subject_name_token_subject_id"), "subject_name_token", ["subject_id"], unique=False)
    _refold_subjects(_fold, with_words=True)
    _copy_to_studies()
    _recreate_study_name_index(["patient_name_search", "patient_name_words"])


def downgrade() -> None:
    _recreate_study_name_index(["patient_name_search"])
    op.drop_index(op.f("ix_subject_name_token_subject_id"), table_name="subject_name_token")
    op.drop_table("subject_name_token")
    # Plain DROP COLUMN (SQLite ≥ 3.35 has it): batch mode would copy the tables, which the foreign keys refuse (see 0006).
    op.execute("ALTER TABLE study DROP COLUMN patient_name_words")
    op.execute("ALTER TABLE subject DROP COLUMN patient_name_words")
    _refold_subjects(_fold_0007, with_words=False)
    _copy_to_studies(with_words=False)


def _batches(table: sa.Table, *columns: Any) -> Any:
    """``table``'s rows (``columns``, the key first) in batches of BATCH, by key."""
    conn = op.get_bind()
    key = table.c.id
    last = None
    while True:
        query = sa.select(key, *columns).order_by(key).limit(BATCH)
        if last is not None:
            query = query.where(key > last)
        rows = conn.execute(query).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def _refold_subjects(fold: Callable[[str | None], str | None], *, with_words: bool) -> None:
    """Each subject's search form (and words, and tokens) from its name; only rows whose values change are written."""
    conn = op.get_bind()
    columns = [_subject.c.patient_name, _subject.c.patient_name_search] + ([_subject.c.patient_name_words] if with_words else [])
    changed_search = sa.update(_subject).where(_subject.c.id == sa.bindparam("_id")).values(patient_name_search=sa.bindparam("search"))
    changed_both = changed_search.values(patient_name_words=sa.bindparam("words"))
    for rows in _batches(_subject, *columns):
        changes, tokens = [], []
        for row in rows:
            search = fold(row.patient_name)
            if not with_words:
                if search != row.patient_name_search:
                    changes.append({"_id": row.id, "search": search})
                continue
            words = _stored_words(row.patient_name)
            if (search, words) != (row.patient_name_search, row.patient_name_words):
                changes.append({"_id": row.id, "search": search, "words": words})
            tokens += [{"token": word, "subject_id": row.id} for word in _words(row.patient_name)]
        if changes:
            conn.execute(changed_both if with_words else changed_search, changes)
        if tokens:
            conn.execute(sa.insert(_token), tokens)


def _copy_to_studies(*, with_words: bool = True) -> None:
    """Each study takes its subject's search form (and words); only rows whose values change are written."""
    conn = op.get_bind()
    subject = _subject.alias("s")
    columns = [_study.c.patient_name_search, subject.c.patient_name_search.label("subject_search")]
    if with_words:
        columns += [_study.c.patient_name_words, subject.c.patient_name_words.label("subject_words")]
    study_with_subject = _study.join(subject, subject.c.id == _study.c.subject_id)
    values: dict[str, sa.BindParameter[Any]] = {"patient_name_search": sa.bindparam("search")} | ({"patient_name_words": sa.bindparam("words")} if with_words else {})
    change = sa.update(_study).where(_study.c.id == sa.bindparam("_id")).values(values)
    last = None
    while True:
        query = sa.select(_study.c.id, *columns).select_from(study_with_subject).order_by(_study.c.id).limit(BATCH)
        if last is not None:
            query = query.where(_study.c.id > last)
        rows = conn.execute(query).all()
        if not rows:
            return
        last = rows[-1][0]
        changes = []
        for row in rows:
            want: tuple[Any, ...] = (row.subject_search, row.subject_words) if with_words else (row.subject_search,)
            have: tuple[Any, ...] = (row.patient_name_search, row.patient_name_words) if with_words else (row.patient_name_search,)
            if want != have:
                changes.append({"_id": row.id, "search": want[0], **({"words": want[1]} if with_words else {})})
        if changes:
            conn.execute(change, changes)


def _recreate_study_name_index(include: list[str]) -> None:
    """``ix_study_live_date_id_name`` with these columns beside the key (PostgreSQL; SQLite has no INCLUDE)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_study_live_date_id_name", table_name="study")
    op.create_index(
        "ix_study_live_date_id_name",
        "study",
        ["study_date", "id"],
        postgresql_include=include,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
