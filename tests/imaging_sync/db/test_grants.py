"""The runtime role's privileges are declared for every table, deny by default (imaging_sync/db/grants.py).

A table that a migration adds without an entry would get no grant at all
from ``db upgrade``, and the services would fail on it in production only:
these tests fail first.
"""

from __future__ import annotations

from sqlalchemy import create_engine, text

from imaging_sync.db import grants
from imaging_sync.db.models import Base

KNOWN = {"SELECT", "INSERT", "UPDATE", "DELETE"}


def test_every_table_of_the_models_has_a_declared_grant() -> None:
    undeclared = sorted(set(Base.metadata.tables) - set(grants.TABLES))
    assert not undeclared, f"add these tables to imaging_sync/db/grants.py TABLES (with only what the services use): {undeclared}"


def test_declared_privileges_are_only_row_privileges() -> None:
    """TRUNCATE, TRIGGER and REFERENCES are never granted: each lets a role change or pin a table beyond its rows' use."""
    for table, privileges in grants.TABLES.items():
        assert privileges and privileges <= KNOWN, table


def test_the_audit_tables_are_append_only_for_the_services() -> None:
    assert set(grants.AUDIT_TABLES) == {"audit_log", "audit_completion", "audit_disclosure", "audit_seal"}
    for table in grants.AUDIT_TABLES:
        assert grants.TABLES[table] == {"SELECT", "INSERT"}


def test_every_relation_of_a_migrated_postgres_database_is_declared(postgres_url: str) -> None:
    """Tables and sequences made by migrations alone (alembic_version, audit_seq) too; partitions are reached through their parent."""
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                "AND relkind IN ('r', 'p', 'S', 'v', 'm') AND NOT relispartition")).all()
    finally:
        engine.dispose()
    tables = {name for name, kind in rows if kind != "S"}
    sequences = {name for name, kind in rows if kind == "S"}
    assert tables and not tables - set(grants.TABLES), sorted(tables - set(grants.TABLES))
    assert not sequences - set(grants.SEQUENCES), sorted(sequences - set(grants.SEQUENCES))
