"""What the services' database role may do, table by table: the one declaration, deny by default.

On PostgreSQL the tables are owned by the role of ``database.url``, which
only ``imaging-sync db upgrade`` connects as; every other process connects
as ``database.runtime_role`` (:func:`imaging_sync.db.engine.connection_url`).
An owner can do anything to its tables whatever the triggers say (``ALTER
TABLE audit_log DISABLE TRIGGER``, ``DROP TRIGGER``, ``ALTER COLUMN … TYPE …
USING`` rewriting every row without firing a trigger, replacing the trigger
function, renaming the table and putting another in its place); a role with
only INSERT and SELECT can do none of that. ``db upgrade`` applies this table
after every migration (:mod:`imaging_sync.db.roles`): each relation of the
schema loses every privilege it has for the runtime role, then gets exactly
what is listed here, so a table a later migration adds, or a partition, has
nothing until it is listed (``tests/imaging_sync/db/test_grants.py`` fails
for a table of ``Base.metadata`` that is not). Rows written through a
partitioned parent are checked against the parent's grants alone, so the
partitions themselves get none.

Each entry says which code needs it, found by reading every statement the
services run: a privilege nobody uses is a privilege an attacker gets free.
"""

from __future__ import annotations

from collections.abc import Mapping

SELECT, INSERT, UPDATE, DELETE = "SELECT", "INSERT", "UPDATE", "DELETE"

# Written once, read for ever: the database refuses every change (triggers, and, for the services, these grants).
APPEND_ONLY = frozenset({SELECT, INSERT})

TABLES: Mapping[str, frozenset[str]] = {
    # The index (imaging_sync/sync/apply.py, catalog/facts.py; read by catalog/, the API, the DICOM node).
    # Entities are soft-deleted (deleted_at), never deleted. SELECT … FOR UPDATE on study (catalog/facts.py) needs UPDATE.
    "subject": frozenset({SELECT, INSERT, UPDATE}),
    "study": frozenset({SELECT, INSERT, UPDATE}),
    "series": frozenset({SELECT, INSERT, UPDATE}),
    "instance": frozenset({SELECT, INSERT, UPDATE}),
    # A partner's link or location that its snapshot no longer lists is deleted (sync/apply.py).
    "entity_link": frozenset({SELECT, INSERT, UPDATE, DELETE}),
    "instance_location": frozenset({SELECT, INSERT, UPDATE, DELETE}),
    # DICOMweb's header cache: written on first read or by the background reader, replaced when the object changed
    # (imaging_sync/catalog/headers.py).
    "instance_header": frozenset({SELECT, INSERT, UPDATE, DELETE}),
    # Name words: the difference is deleted and inserted, never updated (catalog/facts.refresh_name_tokens).
    "subject_name_token": frozenset({SELECT, INSERT, DELETE}),
    # Bookmarks and runs (sync/runner.py); old runs and their rejected items are pruned (jobs/work.prune).
    "partner_state": frozenset({SELECT, INSERT, UPDATE}),
    "sync_run": frozenset({SELECT, INSERT, UPDATE, DELETE}),
    "rejected_item": frozenset({SELECT, INSERT, DELETE}),
    # API keys: created, revoked and stamped last_used_at (imaging_sync/apikeys.py); never deleted.
    "api_key": frozenset({SELECT, INSERT, UPDATE}),
    # The outbox: claimed and settled by UPDATE, delivered events pruned (outbox/relay.py).
    "outbox_event": frozenset({SELECT, INSERT, UPDATE, DELETE}),
    # Incidents: opened by INSERT … ON CONFLICT DO NOTHING, then conditional UPDATEs (imaging_sync/alerts.py).
    "alert_state": frozenset({SELECT, INSERT, UPDATE}),
    # The audit trail: INSERT and SELECT only (imaging_sync/audit.py, the seals).
    "audit_log": APPEND_ONLY,
    "audit_completion": APPEND_ONLY,
    "audit_disclosure": APPEND_ONLY,
    "audit_seal": APPEND_ONLY,
    # Archived months, with their seals' hashes: read by `audit verify` to check the chain across the gap. Written only by
    # `imaging-sync audit archive`, which detaches and drops partitions and so must run as the owner (connection_url "migrate").
    "audit_archive": frozenset({SELECT}),
    # Where the seals' export has got to: one row per sink, moved forward.
    "audit_export_cursor": frozenset({SELECT, INSERT, UPDATE}),
    # Unauthenticated refusals counted per address and minute: upserted (INSERT … ON CONFLICT DO UPDATE).
    "audit_refusal": frozenset({SELECT, INSERT, UPDATE}),
    # Alembic's own table: every process checks the schema is current before it starts (Core.require_current_schema).
    "alembic_version": frozenset({SELECT}),
}

# nextval() on the audit log's order (migration 0011: a column default) needs USAGE.
SEQUENCES: Mapping[str, frozenset[str]] = {
    "audit_seq": frozenset({"USAGE"}),
}

# On the database: connect, and temporary tables (db/bulk.py stages COPY rows in one before INSERT … ON CONFLICT).
DATABASE = frozenset({"CONNECT", "TEMPORARY"})

# The audit tables the services may only append to: `imaging-sync doctor` FAILs when its connection could do more.
AUDIT_TABLES = tuple(name for name, privileges in TABLES.items() if privileges == APPEND_ONLY)

# What ``has_table_privilege`` is asked beyond INSERT and SELECT (ALTER, DROP and the triggers are the owner's, asked separately).
BEYOND_APPEND = ("UPDATE", "DELETE", "TRUNCATE", "TRIGGER", "REFERENCES")
