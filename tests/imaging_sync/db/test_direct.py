"""A statement run on the driver behaves as ``conn.execute`` would: same rows, same transaction, same errors."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import JSON, Column, DateTime, Engine, MetaData, String, Table, Uuid, bindparam, create_engine, exc, insert, select, text

from imaging_sync.config import DatabaseConfig
from imaging_sync.db.direct import DirectStatement
from imaging_sync.db.engine import create_db_engine

_metadata = MetaData()
_probe = Table(
    "direct_probe", _metadata,
    Column("id", Uuid, primary_key=True), Column("name", String(64)), Column("doc", JSON), Column("at", DateTime(timezone=True)),
)
_INSERT = DirectStatement(insert(_probe).values(id=bindparam("id"), name=bindparam("name"), doc=bindparam("doc"), at=bindparam("at")))
_BY_NAME = select(_probe.c.id, _probe.c.name, _probe.c.doc, _probe.c.at).where(_probe.c.name == bindparam("name")).order_by(_probe.c.id)
_DIRECT_BY_NAME = DirectStatement(_BY_NAME)


@pytest.fixture
def probe(engine: Engine) -> Iterator[Engine]:
    _metadata.create_all(engine)
    yield engine
    _metadata.drop_all(engine)


def _row(name: str = "KIM^MINJI") -> dict[str, object]:
    return {"id": uuid.uuid4(), "name": name, "doc": {"modalities": ["CT", "MR"], "n": 3}, "at": dt.datetime(2026, 12, 4, 9, 30, tzinfo=dt.UTC)}


def test_rows_and_written_values_are_those_of_conn_execute(probe: Engine) -> None:
    rows = [_row(), _row(), _row("LEE^JOON")]
    with probe.begin() as conn:
        for row in rows:
            assert _INSERT.rows(conn, row) == []  # JSON through the engine's serializer, the UUID and the instant as SQLAlchemy binds them

    with probe.connect() as conn:
        direct = _DIRECT_BY_NAME.rows(conn, {"name": "KIM^MINJI"})
        usual = conn.execute(_BY_NAME, {"name": "KIM^MINJI"}).all()

    assert [tuple(r) for r in direct] == [tuple(r) for r in usual]
    assert sorted(r[0] for r in direct) == sorted(r["id"] for r in rows[:2])  # type: ignore[type-var]
    assert {tuple(r[2]["modalities"]) for r in direct} == {("CT", "MR")}
    assert all((r[3] if r[3].tzinfo else r[3].replace(tzinfo=dt.UTC)) == rows[0]["at"] for r in direct)  # SQLite keeps it naive


def test_an_insert_returning_gives_its_rows(probe: Engine) -> None:
    returning = DirectStatement(insert(_probe).values(id=bindparam("id"), name=bindparam("name")).returning(_probe.c.id, _probe.c.name))
    row = _row("CHOI^RETURNED")
    with probe.begin() as conn:
        assert [tuple(r) for r in returning.rows(conn, row)] == [(row["id"], "CHOI^RETURNED")]


def test_a_write_joins_the_connections_transaction_and_commits_or_rolls_back_with_it(probe: Engine) -> None:
    kept, dropped = _row("KEPT^ONE"), _row("DROPPED^ONE")
    with probe.connect() as conn:
        _INSERT.rows(conn, kept)
        conn.commit()  # commit as you go: the statement began the transaction, as conn.execute's autobegin does
        _INSERT.rows(conn, dropped)
        conn.rollback()

    with probe.connect() as conn:
        assert [r[1] for r in _DIRECT_BY_NAME.rows(conn, {"name": "KEPT^ONE"})] == ["KEPT^ONE"]
        assert _DIRECT_BY_NAME.rows(conn, {"name": "DROPPED^ONE"}) == []


@pytest.mark.postgres
def test_a_driver_error_is_sqlalchemys_error_with_the_parameters_hidden(pg_url: str) -> None:
    engine = create_db_engine(DatabaseConfig(url=pg_url))
    _metadata.create_all(engine)
    try:
        row = _row("PARK^SECRET")
        with engine.begin() as conn:
            _INSERT.rows(conn, row)
        with engine.connect() as conn, pytest.raises(exc.IntegrityError) as raised:
            _INSERT.rows(conn, row)

        assert raised.value.orig is not None and getattr(raised.value.orig, "sqlstate", None) == "23505"
        assert "PARK^SECRET" not in str(raised.value.params) and raised.value.hide_parameters
    finally:
        _metadata.drop_all(engine)
        engine.dispose()


@pytest.mark.postgres
def test_a_lost_connection_is_invalidated_and_the_pool_lends_a_new_one(pg_url: str) -> None:
    engine = create_db_engine(DatabaseConfig(url=pg_url, pool_size=1))
    _metadata.create_all(engine)
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with admin.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(exc.DBAPIError) as raised:
                _DIRECT_BY_NAME.rows(conn, {"name": "ANY"})
            assert raised.value.connection_invalidated

        with engine.connect() as conn:  # the one pooled connection was dropped, not lent again broken
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
            assert _DIRECT_BY_NAME.rows(conn, {"name": "ANY"}) == []
    finally:
        _metadata.drop_all(engine)
        engine.dispose()
        admin.dispose()


@pytest.mark.postgres
def test_a_statement_with_an_in_list_parameter_is_refused(pg_url: str) -> None:
    engine = create_db_engine(DatabaseConfig(url=pg_url))
    try:
        with engine.connect() as conn, pytest.raises(TypeError, match="expanding"):
            DirectStatement(select(_probe.c.id).where(_probe.c.id.in_(bindparam("ids", expanding=True)))).rows(conn, {"ids": []})
    finally:
        engine.dispose()
