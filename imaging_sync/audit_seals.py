"""Seals over the audit log: tamper evidence anyone can check, made without touching the write path.

The log's three tables (``audit_log``, ``audit_completion``,
``audit_disclosure``) refuse UPDATE and DELETE, but their owner can switch
that off. A seal makes any later change visible: it lists, in order, every
row written since the previous seal (table, sequence number and the first 8
bytes of the row's SHA-256), the SHA-256 over the full row hashes, and its
own hash over all of that and the previous seal's hash. ``audit verify``
recomputes every row and names the first one changed, removed or slipped in
out of order; copies of the seals kept outside the database (an object per
seal in ``[audit] seal_bucket``, under object lock where the store has it)
make rewriting the rows and the seals together visible too.

Which rows a seal covers must not depend on timing, with writers in many
processes committing out of order:

- **PostgreSQL.** Every row carries ``txid``, its writing transaction's id
  (64-bit, never wraps). A seal covers the rows with ``lo <= txid < hi``,
  where ``hi`` is the oldest transaction still running when it is made
  (``pg_snapshot_xmin``): every transaction below it has ended, so no row can
  join that range later, and the next seal starts where this one ended.
  Nothing is locked; the write path only fills two column defaults.
- **SQLite** (one writer at a time): the sealer takes the write lock and
  covers each table's rowids after the previous seal's.

A seal never spans two months (by the entry's UUIDv7 time, the key the
tables are partitioned on): a month archived with its seals verifies alone.
Seals are made by the ``seal-audit`` beat task (``[audit] seal_interval_seconds``),
the embedded scheduler, or ``imaging-sync audit seal``; one sealer at a time
(an advisory lock on PostgreSQL, the write lock on SQLite).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, literal_column, select, text
from sqlalchemy.dialects import postgresql, sqlite

from imaging_sync.db.models import AuditArchive, AuditExportCursor, AuditSeal, Base, table_of, utcnow

# table -> its code in a seal's row list; the order rows are listed in within a seal
TABLES = ("audit_log", "audit_completion", "audit_disclosure")
_CODE = {name: code for code, name in enumerate(TABLES)}
# table -> the column holding the entry's id (its UUIDv7 time decides the month)
_ENTRY = {"audit_log": "id", "audit_completion": "audit_id", "audit_disclosure": "audit_id"}
_ROW = struct.Struct(">BQ8s")  # table code, seq, first 8 bytes of the row's SHA-256
GENESIS = bytes(32)
_LOCK_KEY = 0x1A6E5C5E  # pg_try_advisory_xact_lock: one sealer at a time
_seal = table_of(AuditSeal)
_cursor = table_of(AuditExportCursor)
COPY_CURSOR = "seal-copies"  # audit_export_cursor: the last seal copied outside the database


# -- a row's hash ---------------------------------------------------------------------------------------


_AS_IS = frozenset({str, int, float, bool, type(None), dict, list})


def _plain(value: Any) -> Any:
    """A column value as JSON, the same whether read from the database or from an archive's JSON lines."""
    if type(value) in _AS_IS:  # most values: tested first, the sealer calls this for every column of every row
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def content(values: dict[str, Any]) -> dict[str, Any]:
    """What a row's hash covers: every column but ``txid`` (which only decides the seal), as plain JSON values."""
    return {name: _plain(value) for name, value in values.items() if name != "txid"}


# json.dumps with these arguments, built once (dumps builds an encoder per call when given any)
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def row_hash(table: str, seq: int, values: dict[str, Any]) -> bytes:
    """SHA-256 over the table, the row's seq and its content in canonical JSON (sorted keys, no spaces)."""
    body = content(values)
    body["seq"] = seq
    canonical = _CANONICAL_JSON.encode(body)
    return hashlib.sha256(table.encode() + b"\x00" + canonical.encode()).digest()


def month_of(entry_id: uuid.UUID | str) -> dt.date:
    """The month (its first day, UTC) of a UUIDv7's timestamp."""
    value = entry_id if isinstance(entry_id, uuid.UUID) else uuid.UUID(str(entry_id))
    moment = dt.datetime.fromtimestamp((value.int >> 80) / 1000, tz=dt.UTC)
    return dt.date(moment.year, moment.month, 1)


@dataclass(frozen=True)
class SealedRow:
    """One row of the audit log as a seal covers it."""

    table: str  # audit_log | audit_completion | audit_disclosure
    seq: int
    values: dict[str, Any]

    @property
    def hash(self) -> bytes:
        return row_hash(self.table, self.seq, self.values)

    @property
    def month(self) -> dt.date:
        return month_of(self.values[_ENTRY[self.table]])

    @property
    def key(self) -> tuple[int, int]:
        return _CODE[self.table], self.seq


def row_list(rows: Sequence[SealedRow]) -> tuple[bytes, bytes]:
    """(the seal's row list: code, seq, 8 bytes of hash per row; the SHA-256 over code, seq and full hashes)."""
    listing, digest = bytearray(), hashlib.sha256()
    for row in rows:
        full = row.hash
        listing += _ROW.pack(_CODE[row.table], row.seq, full[:8])
        digest.update(struct.pack(">BQ", _CODE[row.table], row.seq) + full)
    return bytes(listing), digest.digest()


def listed(rows_blob: bytes) -> list[tuple[str, int, bytes]]:
    """A seal's row list back as (table, seq, first 8 bytes of the hash)."""
    return [(TABLES[code], seq, short) for code, seq, short in _ROW.iter_unpack(rows_blob)]


# -- a seal ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seal:
    seal_no: int
    sealed_at: dt.datetime
    month: dt.date
    lo: int | None
    hi: int | None
    ranges: dict[str, list[int]] | None
    row_count: int
    rows: bytes
    digest: bytes
    prev_hash: bytes
    hash: bytes = field(default=b"")

    def header(self) -> dict[str, Any]:
        """Everything the seal's hash covers but the row list (covered through ``digest``), as plain JSON."""
        return {
            "seal_no": self.seal_no, "sealed_at": _plain(self.sealed_at), "month": self.month.isoformat(), "lo": self.lo, "hi": self.hi,
            "ranges": self.ranges, "row_count": self.row_count, "digest": self.digest.hex(), "prev_hash": self.prev_hash.hex(),
        }

    def computed_hash(self) -> bytes:
        return hashlib.sha256(json.dumps(self.header(), sort_keys=True, separators=(",", ":")).encode()).digest()

    def as_json(self) -> dict[str, Any]:
        """The seal as the object kept outside the database (and in an archive)."""
        return {**self.header(), "hash": self.hash.hex(), "rows": self.rows.hex()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Seal:
        return cls(
            seal_no=int(data["seal_no"]), sealed_at=dt.datetime.fromisoformat(data["sealed_at"]), month=dt.date.fromisoformat(data["month"]),
            lo=data["lo"], hi=data["hi"], ranges=data["ranges"], row_count=int(data["row_count"]), rows=bytes.fromhex(data["rows"]),
            digest=bytes.fromhex(data["digest"]), prev_hash=bytes.fromhex(data["prev_hash"]), hash=bytes.fromhex(data["hash"]),
        )

    @classmethod
    def from_row(cls, row: Any) -> Seal:
        m = row._mapping
        return cls(seal_no=m["seal_no"], sealed_at=m["sealed_at"], month=m["month"], lo=m["lo"], hi=m["hi"], ranges=m["ranges"],
                   row_count=m["row_count"], rows=bytes(m["rows"]), digest=bytes(m["digest"]), prev_hash=bytes(m["prev_hash"]), hash=bytes(m["hash"]))


def _sealed(seal: Seal) -> Seal:
    return Seal(**{**seal.__dict__, "hash": seal.computed_hash()})


# -- reading the rows a seal covers ---------------------------------------------------------------------


def _fetch(conn: Connection, table: str, where: str, params: dict[str, Any]) -> Iterator[SealedRow]:
    """The rows of ``table`` matching ``where``, in seq order (rowid on SQLite), with their columns' Python types.

    Per row only what must be: the sealer runs this over every row written
    since its last run (``bench/README.md``: its CPU is taken from the answers).
    """
    sa_table = table_of_name(table)
    postgres = conn.dialect.name == "postgresql"
    order = sa_table.c.seq if postgres else literal_column("rowid")
    columns = [c for c in sa_table.c if c.name not in ("seq", "txid")]
    names = tuple(c.name for c in columns)
    uuids = () if postgres else _uuid_columns(sa_table)  # psycopg returns UUIDs already; SQLite stores text
    statement = select(order.label("seq_"), *columns).where(text(where)).order_by(order).execution_options(yield_per=5000)
    for raw in conn.execute(statement, params):
        values = dict(zip(names, raw[1:], strict=True))
        for name in uuids:
            _as_uuid(values, name)
        yield SealedRow(table, int(raw[0]), values)


def _uuid_columns(sa_table: Any) -> tuple[str, ...]:
    return tuple(column.name for column in sa_table.c if column.type.python_type is uuid.UUID)


def _as_uuid(values: dict[str, Any], name: str) -> None:
    value = values.get(name)
    if value is not None and not isinstance(value, uuid.UUID):
        values[name] = uuid.UUID(str(value))



def table_of_name(name: str) -> Any:
    return Base.metadata.tables[name]


def _range_rows(conn: Connection, seal: Seal) -> Iterator[SealedRow]:
    """Every row in the seal's range and month, in list order, as a stream."""
    for table in TABLES:
        if conn.dialect.name == "postgresql":
            found = _fetch(conn, table, "txid >= :lo AND txid < :hi", {"lo": seal.lo, "hi": seal.hi})
        else:
            lo, hi = (seal.ranges or {}).get(table, [0, 0])
            found = _fetch(conn, table, "rowid > :lo AND rowid <= :hi", {"lo": lo, "hi": hi})
        yield from (row for row in found if row.month == seal.month)


def rows_of_seal(conn: Connection, seal_no: int) -> list[SealedRow]:
    """The rows seal ``seal_no`` covers, as they are in the database now (for exporters: the ATNA relay)."""
    seal = load(conn, seal_no)
    if seal is None:
        return []
    return list(_range_rows(conn, seal))


def seals_after(conn: Connection, seal_no: int, limit: int) -> list[int]:
    """Seal numbers greater than ``seal_no``, ascending, at most ``limit``."""
    return list(conn.scalars(select(_seal.c.seal_no).where(_seal.c.seal_no > seal_no).order_by(_seal.c.seal_no).limit(limit)))


def load(conn: Connection, seal_no: int) -> Seal | None:
    row = conn.execute(select(_seal).where(_seal.c.seal_no == seal_no)).first()
    return None if row is None else Seal.from_row(row)


def last(conn: Connection) -> Seal | None:
    row = conn.execute(select(_seal).order_by(_seal.c.seal_no.desc()).limit(1)).first()
    return None if row is None else Seal.from_row(row)


def iter_seals(conn: Connection, *, since: dt.datetime | None = None) -> Iterator[Seal]:
    """Every seal in order (from the first sealed at or after ``since``)."""
    query = select(_seal).order_by(_seal.c.seal_no)
    if since is not None:
        query = query.where(_seal.c.sealed_at >= since)
    for row in conn.execute(query):
        yield Seal.from_row(row)


# -- making seals ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealResult:
    seals: list[Seal]
    busy: bool = False  # another sealer held the lock: nothing done

    @property
    def rows(self) -> int:
        return sum(s.row_count for s in self.seals)


def seal_through_now(engine: Engine, *, timeout: float = 30.0, pause: float = 0.05) -> SealResult:
    """Seal until every row committed before this call is sealed (or ``timeout`` passes); what was made.

    On PostgreSQL the horizon waits for the oldest writing transaction still
    open anywhere on the server; this waits (briefly) for the ones that began
    before the call to end. What ``audit seal``, ``audit archive`` and tests
    want; the periodic task just seals what it can.
    """
    import time

    if engine.dialect.name != "postgresql":
        return seal(engine)
    with engine.begin() as conn:  # an id of our own: every transaction before it is below it
        mark = int(conn.scalar(text("SELECT pg_current_xact_id()::text::bigint")))
    made: list[Seal] = []
    deadline = time.monotonic() + timeout
    while True:
        result = seal(engine)
        made.extend(result.seals)
        with engine.connect() as conn:
            waiting = _unsealed(conn, last(conn), below_txid=mark)
        if not waiting and not result.busy:
            return SealResult(made)
        if time.monotonic() > deadline:
            return SealResult(made, busy=result.busy)
        time.sleep(pause)


class _Accumulator:
    """One month's part of a seal being made: its row list and digest, built row by row (nothing held)."""

    def __init__(self) -> None:
        self.listing, self.digest, self.count = bytearray(), hashlib.sha256(), 0

    def add(self, row: SealedRow) -> None:
        full, code = row.hash, _CODE[row.table]
        self.listing += _ROW.pack(code, row.seq, full[:8])
        self.digest.update(struct.pack(">BQ", code, row.seq) + full)
        self.count += 1


def seal(engine: Engine, *, now: dt.datetime | None = None) -> SealResult:
    """Seal every audit row written since the last seal (one seal per month they fall in); committed when this returns.

    Rows are read as a stream (tables in list order, each in seq order, the
    order a seal lists them in) and folded into each month's list and digest:
    a first seal over years of existing rows costs 17 bytes a row, not the rows.
    """
    now = now or utcnow()
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            if not conn.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _LOCK_KEY}):
                return SealResult([], busy=True)
            previous = last(conn)
            lo = previous.hi if previous is not None and previous.hi is not None else 0
            hi = int(conn.scalar(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")))
            if hi <= lo:
                return SealResult([])
            months = _accumulate(_fetch(conn, table, "txid >= :lo AND txid < :hi", {"lo": lo, "hi": hi}) for table in TABLES)
            return SealResult(_write(conn, previous, months, now, lo=lo, hi=hi, ranges=None))
    with engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
        previous = last(conn)
        before = (previous.ranges or {}) if previous is not None else {}
        ranges = {table: [int(before.get(table, [0, 0])[1]), int(conn.scalar(text(f"SELECT coalesce(max(rowid), 0) FROM {table}")) or 0)] for table in TABLES}
        months = _accumulate(_fetch(conn, table, "rowid > :lo AND rowid <= :hi", {"lo": low, "hi": high}) for table, (low, high) in ranges.items() if high > low)
        return SealResult(_write(conn, previous, months, now, lo=None, hi=None, ranges=ranges))


def _accumulate(streams: Iterable[Iterable[SealedRow]]) -> dict[dt.date, _Accumulator]:
    months: dict[dt.date, _Accumulator] = {}
    for stream in streams:
        for row in stream:
            accumulator = months.get(row.month)
            if accumulator is None:
                accumulator = months[row.month] = _Accumulator()
            accumulator.add(row)
    return months


def _write(conn: Connection, previous: Seal | None, months: dict[dt.date, _Accumulator], now: dt.datetime, *, lo: int | None, hi: int | None,
           ranges: dict[str, list[int]] | None) -> list[Seal]:
    """One seal per month with rows, chained in month order; none when nothing was written since the last seal."""
    made: list[Seal] = []
    prev_hash, seal_no = (previous.hash, previous.seal_no) if previous is not None else (GENESIS, 0)
    for month in sorted(months):
        accumulator = months[month]
        seal_no += 1
        made_seal = _sealed(Seal(seal_no=seal_no, sealed_at=now, month=month, lo=lo, hi=hi, ranges=ranges, row_count=accumulator.count,
                                 rows=bytes(accumulator.listing), digest=accumulator.digest.digest(), prev_hash=prev_hash))
        conn.execute(_seal.insert().values(**{k: v for k, v in made_seal.__dict__.items()}))
        made.append(made_seal)
        prev_hash = made_seal.hash
    return made


# -- copies outside the database ------------------------------------------------------------------------


class SealCopies(Protocol):
    """Where seal copies go: write-once objects by name (``storage.audit_store.AuditObjectStore``)."""

    def put(self, name: str, body: bytes, *, content_type: str = ...) -> str: ...

    def get(self, name: str) -> bytes: ...

    def names(self, under: str = "") -> list[str]: ...


def copy_name(seal_no: int) -> str:
    return f"{seal_no:012d}.json"


def cursor(conn: Connection, name: str) -> int:
    """The last seal an exporter (``name``) has handled; 0 before the first."""
    return int(conn.scalar(select(_cursor.c.seal_no).where(_cursor.c.name == name)) or 0)


def advance(conn: Connection, name: str, seal_no: int) -> None:
    """Move exporter ``name``'s cursor to ``seal_no`` (an upsert: the cursor is the one mutable row here)."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(_cursor)
    values = {"name": name, "seal_no": seal_no, "updated_at": utcnow()}
    conn.execute(insert.values(values).on_conflict_do_update(index_elements=["name"], set_={"seal_no": seal_no, "updated_at": values["updated_at"]}))


def copy_out(engine: Engine, copies: SealCopies, *, batch: int = 500) -> int:
    """Copy every seal not yet copied, in order; the cursor moves after each copy is written and read back. How many."""
    copied = 0
    while True:
        with engine.connect() as conn:
            after = cursor(conn, COPY_CURSOR)
            pending = [load(conn, n) for n in seals_after(conn, after, batch)]
        for current in pending:
            assert current is not None
            copies.put(copy_name(current.seal_no), json.dumps(current.as_json(), sort_keys=True).encode())
            with engine.begin() as conn:
                advance(conn, COPY_CURSOR, current.seal_no)
            copied += 1
        if len(pending) < batch:
            return copied


def copies_outside(copies: SealCopies) -> dict[int, Seal]:
    """Every seal copy kept outside the database, by number."""
    found: dict[int, Seal] = {}
    for name in copies.names():
        if name.endswith(".json") and name[:-5].isdigit():
            found[int(name[:-5])] = Seal.from_json(json.loads(copies.get(name)))
    return found


def seal_and_copy(engine: Engine, copies: SealCopies | None) -> tuple[SealResult, int]:
    """What the periodic task does: seal what is new, then copy every seal not yet outside (when a bucket is set)."""
    result = seal(engine)
    return result, (copy_out(engine, copies) if copies is not None else 0)


# -- verifying ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    kind: str  # changed | removed | inserted | back_dated | seal_altered | seal_missing | chain_broken | outside_differs | outside_missing
    seal_no: int | None
    table: str | None = None
    seq: int | None = None
    entry_id: str | None = None
    detail: str = ""

    def describe(self) -> str:
        where = f"seal {self.seal_no}" if self.seal_no is not None else "after the last seal"
        row = f": {self.table} seq {self.seq}" + (f" (entry {self.entry_id})" if self.entry_id else "") if self.table else ""
        text_ = {
            "changed": "row changed since it was sealed", "removed": "row removed since it was sealed",
            "inserted": "row inserted out of order (in a sealed range, never sealed)", "back_dated": "row back-dated (dated before the seal preceding it)",
            "seal_altered": "seal altered (its hash does not match its contents)", "seal_missing": "seal missing",
            "chain_broken": "seal does not follow the one before it", "outside_differs": "seal differs from its copy outside the database",
            "outside_missing": "seal copy outside the database is missing",
        }[self.kind]
        return f"{where}{row}: {text_}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class VerifyReport:
    seals: int = 0
    rows: int = 0
    unsealed: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


BACK_DATED_GRACE = dt.timedelta(minutes=10)  # an honest entry's time is within this of its transaction's end


class SealCheck:
    """One seal checked against rows fed in its list order (table, then seq): only a position and a digest held.

    The one place the rules of ``audit verify`` live: a row the list does not
    have was inserted out of order; a listed row that never comes was removed;
    a row whose hash differs was changed; an entry dated before the previous
    seal (less a grace) was back-dated. Used over the database (``verify``) and
    over an archive's rows (``imaging_sync.audit_archive``), whatever their size.
    """

    def __init__(self, seal: Seal, prev_hash: bytes | None, prev_sealed_at: dt.datetime | None = None) -> None:
        self.seal, self.prev_hash, self.prev_sealed_at = seal, prev_hash, prev_sealed_at
        self._entries = _ROW.iter_unpack(seal.rows)
        self._next: tuple[int, int, bytes] | None = next(self._entries, None)
        self._digest = hashlib.sha256()
        self.rows = 0
        self.problems: list[Problem] = []

    def feed(self, row: SealedRow) -> None:
        key, entry = row.key, str(row.values.get(_ENTRY[row.table]))
        self.rows += 1
        while self._next is not None and self._next[:2] < key:
            self._removed()
        if self._next is None or self._next[:2] != key:
            self.problems.append(Problem("inserted", self.seal.seal_no, row.table, row.seq, entry))
            return
        full = row.hash
        if full[:8] != self._next[2]:
            self.problems.append(Problem("changed", self.seal.seal_no, row.table, row.seq, entry))
        elif self.prev_sealed_at is not None and row.table == "audit_log" and row.values.get("at") is not None \
                and _moment(row.values["at"]) < _aware(self.prev_sealed_at) - BACK_DATED_GRACE:
            self.problems.append(Problem("back_dated", self.seal.seal_no, row.table, row.seq, entry, detail=f"dated {_plain(row.values['at'])}"))
        self._digest.update(struct.pack(">BQ", *key) + full)
        self._next = next(self._entries, None)

    def _removed(self) -> None:
        assert self._next is not None
        code, seq, _ = self._next
        self.problems.append(Problem("removed", self.seal.seal_no, TABLES[code], seq))
        self._next = next(self._entries, None)

    def finish(self) -> list[Problem]:
        """Every problem of the seal, in list order (the seal's own first)."""
        while self._next is not None:
            self._removed()
        own: list[Problem] = []
        if self.seal.computed_hash() != self.seal.hash:
            own.append(Problem("seal_altered", self.seal.seal_no))
        if self.prev_hash is not None and self.seal.prev_hash != self.prev_hash:
            own.append(Problem("chain_broken", self.seal.seal_no, detail=f"seal {self.seal.seal_no - 1} precedes it"))
        if not own and not self.problems and len(self.seal.rows) // _ROW.size != self.seal.row_count:
            own.append(Problem("seal_altered", self.seal.seal_no, detail="row count"))
        if not own and not self.problems and self._digest.digest() != self.seal.digest:
            own.append(Problem("seal_altered", self.seal.seal_no, detail="digest"))
        return own + sorted(self.problems, key=lambda p: (_CODE.get(p.table or "", 0), p.seq or 0))


def verify_seal(seal: Seal, rows: Iterable[SealedRow], prev_hash: bytes | None, prev_sealed_at: dt.datetime | None = None) -> list[Problem]:
    """What is wrong with one seal and the rows now in its range (empty: nothing); see :class:`SealCheck`."""
    check = SealCheck(seal, prev_hash, prev_sealed_at)
    for row in sorted(rows, key=lambda r: r.key):
        check.feed(row)
    return check.finish()


def _moment(value: Any) -> dt.datetime:
    return _aware(value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value)))


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def verify(engine: Engine, *, since: dt.datetime | None = None, outside: dict[int, Seal] | None = None) -> VerifyReport:
    """Recompute every seal (from ``since``) against the rows now in the database; ``outside``: the copies kept elsewhere."""
    report = VerifyReport()
    with engine.connect() as conn:
        archived = archived_seals(conn)  # seals of archived months: number -> hash
        previous: Seal | None = None
        for current in iter_seals(conn, since=since):
            expected_prev = previous.seal_no + 1 if previous is not None else None
            if expected_prev is not None and current.seal_no != expected_prev:
                missing = [n for n in range(expected_prev, current.seal_no) if n not in archived]
                if missing:
                    report.problems.append(Problem("seal_missing", missing[0], detail=f"{len(missing)} seal(s) from {missing[0]}"))
            prev_hash: bytes | None
            prev_at: dt.datetime | None
            if previous is not None and previous.seal_no == current.seal_no - 1:
                prev_hash, prev_at = previous.hash, previous.sealed_at
            else:
                prev_hash, prev_at = archived.get(current.seal_no - 1), None
                if prev_hash is None and current.seal_no == 1:
                    prev_hash = GENESIS
                if prev_hash is None and previous is None and since is None:
                    report.problems.append(Problem("seal_missing", current.seal_no - 1, detail="the seals before the first one in the database"))
            check = SealCheck(current, prev_hash, prev_at)
            for row in _range_rows(conn, current):
                check.feed(row)
            report.problems.extend(check.finish())
            if outside is not None:
                copy = outside.get(current.seal_no)
                if copy is None:
                    report.problems.append(Problem("outside_missing", current.seal_no))
                elif copy.hash != current.hash or copy.rows != current.rows:
                    report.problems.append(Problem("outside_differs", current.seal_no))
            report.seals += 1
            report.rows += check.rows
            previous = current
        if outside is not None:
            newest = previous.seal_no if previous is not None else 0
            beyond = sorted(n for n in outside if n > newest)
            if beyond:
                report.problems.append(Problem("seal_missing", beyond[0], detail=f"{len(beyond)} seal(s) kept outside are not in the database"))
        report.unsealed = _unsealed(conn, previous)
    return report


def archived_seals(conn: Connection) -> dict[int, bytes]:
    """Seal number -> hash of every seal whose month was archived (``audit_archive``)."""
    found: dict[int, bytes] = {}
    for seals in conn.scalars(select(table_of(AuditArchive).c.seals)):
        found.update({int(number): bytes.fromhex(value) for number, value in (seals or {}).items()})
    return found


def _unsealed(conn: Connection, newest: Seal | None, *, below_txid: int | None = None) -> int:
    """Rows written after the newest seal (not yet sealed: not a problem); PostgreSQL: only those of transactions below ``below_txid``."""
    total = 0
    for table in TABLES:
        if conn.dialect.name == "postgresql":
            lo = newest.hi if newest is not None and newest.hi is not None else 0
            upper = "" if below_txid is None else " AND txid < :below"
            total += int(conn.scalar(text(f"SELECT count(*) FROM {table} WHERE txid >= :lo{upper}"), {"lo": lo, "below": below_txid}) or 0)
        else:
            lo = (newest.ranges or {}).get(table, [0, 0])[1] if newest is not None else 0
            total += int(conn.scalar(text(f"SELECT count(*) FROM {table} WHERE rowid > :lo"), {"lo": lo}) or 0)
    return total


__all__ = [
    "COPY_CURSOR", "GENESIS", "TABLES", "Problem", "Seal", "SealCheck", "SealCopies", "SealResult", "SealedRow", "VerifyReport", "advance", "content",
    "copies_outside", "copy_name", "copy_out", "cursor", "iter_seals", "last", "listed", "load", "month_of", "row_hash", "row_list",
    "rows_of_seal", "seal", "seal_and_copy", "seal_through_now", "seals_after", "verify", "verify_seal",
]
