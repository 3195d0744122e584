import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from imaging_sync import audit
from imaging_sync.audit import AuditEvent


def event(**overrides: object) -> AuditEvent:
    values: dict[str, object] = {"channel": "http", "actor": "abc123", "action": "read", "outcome": "success", "resource_type": "study", "resource_id": "s-1"}
    values.update(overrides)
    return AuditEvent(**values)  # type: ignore[arg-type]


def test_entries_are_searchable_newest_first_by_actor_and_resource(engine: Engine) -> None:
    audit.record_now(engine, event(resource_id="s-1"))
    audit.record_now(engine, event(actor="other", resource_id="s-2", outcome="denied", status=403))
    audit.record_now(engine, event(resource_type="instance", resource_id="i-9", action="issue_url"))
    with engine.connect() as conn:
        mine = audit.search(conn, actor="abc123")
        studies = audit.search(conn, resource="study")
        one = audit.search(conn, resource="study:s-2")
    assert [e["resource_id"] for e in mine] == ["i-9", "s-1"]
    assert {e["resource_id"] for e in studies} == {"s-1", "s-2"}
    assert [(e["actor"], e["outcome"], e["status"]) for e in one] == [("other", "denied", 403)]


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET outcome = 'success'", "DELETE FROM audit_log"])
def test_the_database_itself_refuses_to_change_or_delete_audit_entries(engine: Engine, statement: str) -> None:
    audit.record_now(engine, event(outcome="denied"))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    with engine.connect() as conn:
        assert [e["outcome"] for e in audit.search(conn)] == ["denied"]


@pytest.mark.postgres
def test_truncate_is_refused_on_postgresql(pg_url: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(pg_url)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("TRUNCATE audit_log"))
    engine.dispose()


def test_unknown_outcome_is_a_programming_error(engine: Engine) -> None:
    with pytest.raises(ValueError):
        audit.record_now(engine, event(outcome="meh"))
