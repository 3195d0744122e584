"""Seals over the audit log: every row sealed once under concurrent writers; verify names what the owner changed."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import uuid6
from click.testing import CliRunner
from sqlalchemy import Engine, text

from app.cli import cli
from devtools.toml_config import write_config
from imaging_sync import audit, audit_seals
from imaging_sync.audit import AuditEvent
from imaging_sync.config import BucketConfig, DatabaseConfig, StorageConfig
from imaging_sync.db.engine import create_db_engine
from storage.audit_store import AuditObjectStore
from storage.embedded import EmbeddedS3
from storage.registry import BucketRegistry


def entry(engine: Engine, resource_id: str, **overrides: object) -> uuid.UUID:
    values: dict[str, object] = {"channel": "http", "actor": "abc123", "action": "read", "outcome": "success", "resource_type": "study", "resource_id": resource_id}
    values.update(overrides)
    return audit.record_now(engine, AuditEvent(**values))  # type: ignore[arg-type]


def streamed(engine: Engine) -> uuid.UUID:
    """A two-step entry with a completion, as a C-FIND writes it."""
    handle = audit.begin(engine, AuditEvent(channel="dicom", actor="VIEWER_AE", action="c-find", client_addr="127.0.0.1"))
    handle.finish("success", status=0, detail={"matches": 3})
    return handle.id


def db_id(engine: Engine, value: uuid.UUID) -> object:
    """A UUID as the column stores it (SQLite: 32 hex digits)."""
    return value if engine.dialect.name == "postgresql" else value.hex


def as_owner(engine: Engine, statement: str, table: str = "audit_log", **params: object) -> None:
    """What the tables' owner can do despite the append-only triggers: switch them off (PostgreSQL) or drop them (SQLite)."""
    params = {k: db_id(engine, v) if isinstance(v, uuid.UUID) else v for k, v in params.items()}
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            conn.execute(text(statement), params)
            conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
        else:
            for name in conn.scalars(text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"), {"t": table}).all():
                conn.execute(text(f'DROP TRIGGER "{name}"'))
            conn.execute(text(statement), params)


def seal_all(engine: Engine) -> list[audit_seals.Seal]:
    """Seal until nothing is left unsealed: a transaction elsewhere on the server (another test's, still ending) may hold the horizon a moment."""
    made: list[audit_seals.Seal] = []
    deadline = time.monotonic() + 30
    while True:
        made.extend(audit_seals.seal(engine).seals)
        if audit_seals.verify(engine).unsealed == 0 or time.monotonic() > deadline:
            return made
        time.sleep(0.05)


def problems(engine: Engine, **kwargs: object) -> list[audit_seals.Problem]:
    return audit_seals.verify(engine, **kwargs).problems  # type: ignore[arg-type]


def test_a_clean_log_verifies_and_every_row_is_sealed_once(engine: Engine) -> None:
    for i in range(5):
        entry(engine, f"s-{i}")
    streamed(engine)
    first = seal_all(engine)
    assert sum(s.row_count for s in first) == 7  # five entries, the streamed entry and its completion
    assert audit_seals.seal(engine).seals == [], "nothing new: no seal"
    entry(engine, "s-9")
    second = seal_all(engine)
    assert [s.row_count for s in second] == [1]
    assert second[0].seal_no == first[-1].seal_no + 1 and second[0].prev_hash == first[-1].hash
    report = audit_seals.verify(engine)
    assert report.ok, [p.describe() for p in report.problems]
    assert (report.seals, report.rows, report.unsealed) == (len(first) + 1, 8, 0)


def test_a_row_changed_by_the_owner_is_named(engine: Engine) -> None:
    entries = [entry(engine, f"s-{i}") for i in range(4)]
    seal_all(engine)
    as_owner(engine, "UPDATE audit_log SET actor = 'rewritten' WHERE id = :id", id=entries[2])
    found = problems(engine)
    assert [(p.kind, p.table, p.entry_id) for p in found] == [("changed", "audit_log", str(entries[2]))]
    assert "row changed since it was sealed" in found[0].describe()


def test_a_row_removed_by_the_owner_is_named_by_its_sequence_number(engine: Engine) -> None:
    entries = [entry(engine, f"s-{i}") for i in range(4)]
    (made,) = seal_all(engine)
    with engine.connect() as conn:
        seq = next(r.seq for r in audit_seals.rows_of_seal(conn, made.seal_no) if r.values["id"] == entries[1])
    as_owner(engine, "DELETE FROM audit_log WHERE id = :id", id=entries[1])
    found = problems(engine)
    assert [(p.kind, p.table, p.seq) for p in found] == [("removed", "audit_log", seq)]


def test_a_back_dated_row_inserted_by_the_owner_is_named(engine: Engine) -> None:
    entry(engine, "s-0")
    seal_all(engine)
    forged = uuid6.uuid7()
    hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    with engine.begin() as conn:  # INSERT is allowed: the forgery is its date
        conn.execute(text("INSERT INTO audit_log (id, at, channel, actor, action, outcome) VALUES (:id, :at, 'cli', 'cli:nobody', 'read', 'success')"),
                     {"id": db_id(engine, forged), "at": hours_ago})
    seal_all(engine)
    found = problems(engine)
    assert [(p.kind, p.entry_id) for p in found] == [("back_dated", str(forged))]


@pytest.mark.postgres
def test_a_row_slipped_into_a_sealed_range_is_named_as_inserted_out_of_order(pg_url: str) -> None:
    engine = create_db_engine(DatabaseConfig(url=pg_url))
    try:
        entry(engine, "s-0")
        (made,) = seal_all(engine)
        forged = uuid6.uuid7()
        as_owner(engine, "INSERT INTO audit_log (id, at, channel, actor, action, outcome, txid) VALUES (:id, now(), 'cli', 'x', 'read', 'success', :txid)",
                 id=forged, txid=made.lo)
        found = problems(engine)
        assert [(p.kind, p.entry_id) for p in found] == [("inserted", str(forged))]
    finally:
        engine.dispose()


def test_a_seal_altered_or_removed_by_the_owner_is_named(engine: Engine) -> None:
    made = []
    for i in range(3):
        entry(engine, f"s-{i}")
        made.extend(seal_all(engine))
    first, second = made[0].seal_no, made[1].seal_no
    as_owner(engine, "UPDATE audit_seal SET row_count = 7 WHERE seal_no = :n", table="audit_seal", n=first)
    assert [(p.kind, p.seal_no) for p in problems(engine)] == [("seal_altered", first)]
    as_owner(engine, "DELETE FROM audit_seal WHERE seal_no = :n", table="audit_seal", n=second)
    kinds = {(p.kind, p.seal_no) for p in problems(engine)}
    assert ("seal_missing", second) in kinds


def test_a_seal_never_spans_two_months(engine: Engine) -> None:
    last_month = dt.datetime.now(dt.UTC).replace(day=1) - dt.timedelta(days=3)
    old = uuid.UUID(int=(int(last_month.timestamp() * 1000) << 80) | (uuid6.uuid7().int & ((1 << 80) - 1)))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO audit_log (id, at, channel, actor, action, outcome) VALUES (:id, :at, 'http', 'k', 'read', 'success')"),
                     {"id": db_id(engine, old), "at": last_month})
    entry(engine, "s-now")
    made = seal_all(engine)
    assert [(s.month, s.row_count) for s in made] == [(dt.date(last_month.year, last_month.month, 1), 1), (dt.date.today().replace(day=1), 1)]
    assert audit_seals.verify(engine).ok


@pytest.mark.postgres
def test_concurrent_writers_in_many_connections_never_leave_a_row_unsealed_or_sealed_twice(pg_url: str) -> None:
    engine = create_db_engine(DatabaseConfig(url=pg_url, pool_size=8))
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(150):
                entry(engine, f"w{worker}-{i}")
                if i % 10 == 0:
                    streamed(engine)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def seal_loop() -> None:
        while not stop.is_set():
            audit_seals.seal(engine)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(5)]
    sealer = threading.Thread(target=seal_loop)
    try:
        sealer.start()
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        sealer.join()
        seal_all(engine)
        assert not errors
        with engine.connect() as conn:
            total = sum(int(conn.scalar(text(f"SELECT count(*) FROM {t}"))) for t in audit_seals.TABLES)
            seals = list(audit_seals.iter_seals(conn))
        listed = [(table, seq) for s in seals for table, seq, _ in audit_seals.listed(s.rows)]
        assert len(listed) == len(set(listed)) == total, "every row in exactly one seal"
        assert len(seals) > 1
        report = audit_seals.verify(engine)
        assert report.ok and report.unsealed == 0, [p.describe() for p in report.problems]
    finally:
        engine.dispose()


@pytest.fixture
def locked_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[StorageConfig, str]]:
    """An embedded S3 bucket created with Object Lock, as a hospital's seal bucket would be."""
    name = f"isync-seals-{uuid.uuid4().hex[:8]}"
    with EmbeddedS3() as server:
        server.admin_client("us-east-1").create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        monkeypatch.setenv("SEALS_KEY_ID", "AKIASEALS")
        monkeypatch.setenv("SEALS_SECRET", "seals-secret")
        config = StorageConfig(buckets={name: BucketConfig(region="us-east-1", endpoint_url=server.endpoint_url, auth="keys", access_key_id_env="SEALS_KEY_ID",
                                                          secret_access_key_env="SEALS_SECRET", addressing_style="path")})
        yield config, name


def test_seals_copied_outside_under_object_lock_catch_a_consistent_rewrite_of_rows_and_seals(engine: Engine, locked_bucket: tuple[StorageConfig, str]) -> None:
    config, bucket = locked_bucket
    store = AuditObjectStore(BucketRegistry(config), bucket, "seals/", retention_years=5)
    victim = entry(engine, "s-0")
    entry(engine, "s-1")
    seal_all(engine)
    assert audit_seals.copy_out(engine, store) == 1 and store.names() == ["000000000001.json"]
    assert store.object_lock
    head = store._client.head_object(Bucket=bucket, Key="seals/000000000001.json")
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"].year >= dt.datetime.now(dt.UTC).year + 4
    assert audit_seals.verify(engine, outside=audit_seals.copies_outside(store)).ok

    # The owner rewrites a row and then the seal to match it: the database alone agrees with itself…
    as_owner(engine, "UPDATE audit_log SET actor = 'rewritten' WHERE id = :id", id=victim)
    with engine.connect() as conn:
        old = audit_seals.load(conn, 1)
        rows = audit_seals.rows_of_seal(conn, 1)
    assert len(rows) == 2, "both entries in the one seal"
    assert old is not None
    listing, digest = audit_seals.row_list(sorted(rows, key=lambda r: r.key))
    forged = audit_seals.Seal(**{**old.__dict__, "rows": listing, "digest": digest, "hash": b""})
    forged_hash = forged.computed_hash()
    as_owner(engine, "UPDATE audit_seal SET rows = :rows, digest = :digest, hash = :hash WHERE seal_no = 1", table="audit_seal",
             rows=listing, digest=digest, hash=forged_hash)
    assert audit_seals.verify(engine).ok
    # …but not with the copy kept outside.
    found = problems(engine, outside=audit_seals.copies_outside(store))
    assert [(p.kind, p.seal_no) for p in found] == [("outside_differs", 1)]


def test_the_cli_seals_and_verify_exits_1_naming_the_changed_row(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGING_SYNC_CONFIG", str(write_config(tmp_path / "imaging-sync.toml", sqlite_url)))
    engine = create_db_engine(DatabaseConfig(url=sqlite_url))
    try:
        victim = entry(engine, "s-0")
        runner = CliRunner()
        sealed = runner.invoke(cli, ["audit", "seal"])
        assert sealed.exit_code == 0 and "seal 1: 1 rows of" in sealed.output, sealed.output
        clean = runner.invoke(cli, ["audit", "verify"])
        assert clean.exit_code == 0 and "audit log verified: 1 seals over 1 rows match" in clean.output, clean.output
        as_owner(engine, "UPDATE audit_log SET resource_id = 'other' WHERE id = :id", id=victim)
        tampered = runner.invoke(cli, ["audit", "verify"])
        assert tampered.exit_code == 1, tampered.output
        assert "seal 1: audit_log seq" in tampered.output and f"(entry {victim}): row changed since it was sealed" in tampered.output
    finally:
        engine.dispose()


def test_the_doctor_fails_when_entries_are_left_unsealed_and_passes_once_sealed(engine: Engine) -> None:
    from app.doctor import check_audit_seals

    assert check_audit_seals(engine).status == "OK"
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with engine.begin() as conn:  # an entry the sealer has not reached in an hour: sealing has stopped
        conn.execute(text("INSERT INTO audit_log (id, at, channel, actor, action, outcome) VALUES (:id, :at, 'http', 'k', 'read', 'success')"),
                     {"id": db_id(engine, uuid6.uuid7()), "at": an_hour_ago})
    stalled = check_audit_seals(engine)
    assert stalled.status == "FAIL" and "1 audit entries older than 15 minutes are not sealed" in stalled.detail
    seal_all(engine)
    healthy = check_audit_seals(engine)
    assert healthy.status == "OK" and "newest seal" in healthy.detail


@pytest.mark.parametrize("statement", [
    "INSERT OR REPLACE INTO audit_log (id, at, channel, actor, action, outcome) VALUES (:id, :at, 'http', 'rewritten', 'read', 'success')",
    "REPLACE INTO audit_log (id, at, channel, actor, action, outcome) VALUES (:id, :at, 'http', 'rewritten', 'read', 'success')",
    "INSERT INTO audit_log (id, at, channel, actor, action, outcome) VALUES (:id, :at, 'http', 'rewritten', 'read', 'success') "
    "ON CONFLICT (id) DO UPDATE SET actor = excluded.actor",
], ids=["insert-or-replace", "replace", "upsert"])
def test_sqlite_refuses_a_replace_or_upsert_over_an_existing_entry(sqlite_url: str, statement: str) -> None:
    """REPLACE deletes the old row without firing its DELETE trigger: the BEFORE INSERT trigger (0011) refuses it first."""
    from sqlalchemy.exc import IntegrityError

    engine = create_db_engine(DatabaseConfig(url=sqlite_url))
    try:
        victim = entry(engine, "s-0")
        with pytest.raises(IntegrityError, match="audit_log is append-only"), engine.begin() as conn:
            conn.execute(text(statement), {"id": victim.hex, "at": dt.datetime.now(dt.UTC)})
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT actor FROM audit_log WHERE id = :id"), {"id": victim.hex}) == "abc123"
    finally:
        engine.dispose()
