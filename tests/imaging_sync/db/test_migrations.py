"""The migrations build exactly the schema the models describe, on both backends."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from imaging_sync.db import migrate
from imaging_sync.db.models import Base


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    assert migrate.is_current(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = [d for d in compare_metadata(context, Base.metadata) if not _is_extra_index(d)]
    assert differences == []


def _is_extra_index(difference: object) -> bool:
    """PostgreSQL-only search indexes (pattern, trigram) are created by SQL in 0002, not by the models."""
    return isinstance(difference, tuple) and difference[0] == "remove_index" and difference[1].name.startswith("ix_subject_patient_name_search_")
