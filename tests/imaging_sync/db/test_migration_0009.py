"""Migration 0009: the audit log's completion and disclosure tables, append-only, and their downgrade."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from imaging_sync import audit
from imaging_sync.audit import AuditEvent
from imaging_sync.db import migrate
from imaging_sync.ids import new_id


def test_0009_downgrades_to_the_log_alone_and_upgrades_back_append_only(engine: Engine) -> None:
    kept = audit.record_now(engine, AuditEvent(channel="cli", actor="cli:root", action="export", outcome="success"))
    migrate.downgrade(engine, "0008")
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            assert "audit_log" in tables and not tables & {"audit_completion", "audit_disclosure"}
    finally:
        migrate.upgrade(engine)

    handle = audit.begin(engine, AuditEvent(channel="dicom", actor="AE", action="c-find"), subject_ids=[new_id()])
    handle.finish("success")
    for table in ("audit_completion", "audit_disclosure"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(f"DELETE FROM {table}"))
    with engine.connect() as conn:
        assert {e["id"] for e in audit.search(conn)} == {kept, handle.id}
