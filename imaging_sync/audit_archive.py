"""Whole months of the audit log archived to a bucket, checked, then dropped; and restored from there.

Years of audit log are kept at a bounded cost: months older than
``[audit] online_months`` leave the database as three objects under
``[audit] archive_prefix``/``YYYY-MM/`` in ``[audit] archive_bucket``, each
written once under object lock (COMPLIANCE, ``retention_years``) where the
bucket has it:

- ``audit.jsonl.gz``: every row of the month's three tables, one JSON line
  each (table, seq, txid and the columns as their hash covers them);
- ``seals.json``: the month's seals, as ``imaging_sync.audit_seals`` made them;
- ``manifest.json``: counts, seal numbers and hashes, each object's SHA-256.

Nothing unarchived is ever dropped. ``archive_month`` first seals what is
new and refuses a month with rows not sealed yet; after the upload it reads
the objects back and recomputes every seal of the month from the exported
rows (the same check as ``audit verify``, on what the bucket now holds) and
compares the counts with the database; only then are the month's partitions
detached and dropped, in one transaction with the ``audit_archive`` row that
lets ``audit verify`` step over the month. ``restore_month`` puts a month
back from its objects and verifies it. PostgreSQL only: on SQLite the audit
log is one file and stays whole.
"""

from __future__ import annotations

import bisect
import datetime as dt
import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Column, Connection, Engine, MetaData, Table, insert, select, text

from imaging_sync import audit_seals
from imaging_sync.audit_seals import TABLES, Seal, SealedRow
from imaging_sync.db import partitions
from imaging_sync.db.models import AuditArchive, AuditSeal, table_of, utcnow
from imaging_sync.errors import ConfigError, ValidationError

FORMAT = "imaging-sync-audit-archive/1"
DATA, SEALS, MANIFEST = "audit.jsonl.gz", "seals.json", "manifest.json"
_archive = table_of(AuditArchive)


class ArchiveStore(Protocol):
    """Write-once objects by name (``storage.audit_store.AuditObjectStore``)."""

    bucket: str
    prefix: str

    def put(self, name: str, body: bytes, *, content_type: str = ...) -> str: ...

    def put_file(self, name: str, path: str, *, content_type: str = ...) -> str: ...  # the SHA-256 it verified

    def get(self, name: str) -> bytes: ...

    def download(self, name: str, path: str) -> None: ...

    def names(self, under: str = "") -> list[str]: ...


@dataclass(frozen=True)
class ArchiveResult:
    month: dt.date
    rows: dict[str, int]
    seals: list[int]
    location: str


def parse_month(value: str) -> dt.date:
    """``YYYY-MM`` as the month's first day; a ValidationError naming the value otherwise."""
    try:
        return dt.datetime.strptime(value, "%Y-%m").date()
    except ValueError:
        raise ValidationError("month", f"{value!r} is not a month (YYYY-MM)") from None


def _months_before(today: dt.date, count: int) -> dt.date:
    month = partitions.month_start(today)
    for _ in range(count):
        month = dt.date(month.year - (month.month == 1), (month.month - 2) % 12 + 1, 1)
    return month


def archivable(conn: Connection, before: dt.date, *, online_months: int, today: dt.date | None = None) -> list[dt.date]:
    """Months with partitions older than ``before`` that may leave the database (older than ``online_months``)."""
    if conn.dialect.name != "postgresql":
        raise ConfigError("database.url", "archiving the audit log needs PostgreSQL (its monthly partitions); an SQLite audit log stays whole")
    oldest_allowed = _months_before(today or utcnow().date(), online_months)
    if before > oldest_allowed:
        raise ValidationError("--before", f"{before:%Y-%m} would archive months kept online ([audit] online_months = {online_months}: "
                                          f"months before {oldest_allowed:%Y-%m} only)")
    return [m for m in partitions.months_present(conn) if m < before]


def _rows(conn: Connection, table: str, month: dt.date) -> Iterator[tuple[SealedRow, int]]:
    """The month's rows of ``table`` from its partition, in seq order, with their txid."""
    parent = audit_seals.table_of_name(table)
    # The partition itself, with the parent's column types (a select on the parent would scan every month).
    sa_table = Table(partitions.partition_name(table, month), MetaData(), *(Column(c.name, c.type) for c in parent.c))
    columns = [c for c in sa_table.c if c.name not in ("seq", "txid")]
    statement = select(sa_table.c.seq, sa_table.c.txid, *columns).order_by(sa_table.c.seq)
    statement = statement.execution_options(yield_per=10000)
    for raw in conn.execute(statement):
        values = dict(zip((c.name for c in columns), raw[2:], strict=True))
        yield SealedRow(table, int(raw[0]), values), int(raw[1])


def _line(row: SealedRow, txid: int) -> bytes:
    return json.dumps({"table": row.table, "seq": row.seq, "txid": txid, "values": audit_seals.content(row.values)},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def read_export(path: str) -> Iterator[tuple[SealedRow, int]]:
    """The rows of an ``audit.jsonl.gz`` back as (row, txid); values stay as JSON gives them (hashes are over that form)."""
    with gzip.open(path, "rb") as handle:
        for line in handle:
            data = json.loads(line)
            yield SealedRow(data["table"], int(data["seq"]), data["values"]), int(data["txid"])


def check_export(path: str, seals: list[Seal]) -> dict[str, int]:
    """Recompute every seal from the exported rows, streaming: each row in one seal, every list and digest equal. Counts per table."""
    checks = {s.seal_no: audit_seals.SealCheck(s, None) for s in seals}
    ranges = sorted((s.lo, s.hi, s.seal_no) for s in seals if s.lo is not None and s.hi is not None)
    starts = [lo for lo, _, _ in ranges]
    counts = dict.fromkeys(TABLES, 0)
    for row, txid in read_export(path):
        counts[row.table] += 1
        at = bisect.bisect_right(starts, txid) - 1
        if at < 0 or not (ranges[at][0] <= txid < ranges[at][1]):
            raise ValidationError("archive", f"{row.table} seq {row.seq}: exported but in no seal of the month")
        checks[ranges[at][2]].feed(row)
    for check in checks.values():
        problems = check.finish()
        if problems:
            raise ValidationError("archive", f"the export does not match its seals: {problems[0].describe()}")
    return counts


def archive_month(engine: Engine, store: ArchiveStore, month: dt.date) -> ArchiveResult:
    """Export ``month``, upload it, check what the bucket holds against the seals and the database, then drop its partitions."""
    name = f"{month:%Y-%m}/"
    audit_seals.seal_through_now(engine)
    with engine.connect() as conn:
        newest = audit_seals.last(conn)
        horizon = newest.hi if newest is not None and newest.hi is not None else 0
        unsealed = sum(int(conn.scalar(text(f"SELECT count(*) FROM {partitions.partition_name(t, month)} WHERE txid >= :h"), {"h": horizon}) or 0)
                       for t in TABLES)
        if unsealed:
            raise ValidationError("month", f"{month:%Y-%m} has {unsealed} rows not sealed yet (a transaction still open?): try again later")
        seals = [s for s in audit_seals.iter_seals(conn) if s.month == month]
        db_counts = {t: int(conn.scalar(text(f"SELECT count(*) FROM {partitions.partition_name(t, month)}")) or 0) for t in TABLES}
        with tempfile.TemporaryDirectory(prefix="imaging-sync-archive-") as scratch:
            data = os.path.join(scratch, DATA)
            with gzip.open(data, "wb", compresslevel=6) as out:
                for table in TABLES:
                    for row, txid in _rows(conn, table, month):
                        out.write(_line(row, txid))
            seals_body = json.dumps([s.as_json() for s in seals], sort_keys=True).encode()
            # put_file reads the object back and compares it with the file: from then on the file is what the bucket holds.
            data_sha256 = store.put_file(name + DATA, data, content_type="application/gzip")
            store.put(name + SEALS, seals_body)
            # Recompute every seal from those rows and the seals as the bucket holds them, compare counts.
            exported = check_export(data, [Seal.from_json(s) for s in json.loads(store.get(name + SEALS))])
            if exported != db_counts:
                raise ValidationError("archive", f"the export's counts {exported} differ from the database's {db_counts}")
            manifest = {
                "format": FORMAT, "month": f"{month:%Y-%m}", "created_at": utcnow().isoformat(), "rows": db_counts,
                "seals": {str(s.seal_no): s.hash.hex() for s in seals},
                "files": {DATA: data_sha256, SEALS: hashlib.sha256(seals_body).hexdigest()},
            }
    manifest_body = json.dumps(manifest, sort_keys=True, indent=1).encode()
    location = store.put(name + MANIFEST, manifest_body)
    with engine.begin() as conn:
        conn.execute(insert(_archive).values(month=month, archived_at=utcnow(), location=f"{store.bucket}/{store.prefix}{name}",
                                             row_count=sum(db_counts.values()), seals=manifest["seals"],
                                             manifest_sha256=hashlib.sha256(manifest_body).hexdigest()))
        # Children first: audit_completion's key refers to audit_log's.
        for table in ("audit_seal", "audit_disclosure", "audit_completion", "audit_log"):
            partition = partitions.partition_name(table, month)
            conn.execute(text(f"ALTER TABLE {table} DETACH PARTITION {partition}"))
            conn.execute(text(f"DROP TABLE {partition}"))
    return ArchiveResult(month=month, rows=db_counts, seals=[s.seal_no for s in seals], location=location)


def restore_month(engine: Engine, store: ArchiveStore, month: dt.date) -> audit_seals.VerifyReport:
    """Put an archived month back from its objects (into partitions made for it), then verify its seals against the rows."""
    if engine.dialect.name != "postgresql":
        raise ConfigError("database.url", "restoring an archived month needs PostgreSQL")
    name = f"{month:%Y-%m}/"
    manifest = json.loads(store.get(name + MANIFEST))
    seals = [Seal.from_json(s) for s in json.loads(store.get(name + SEALS))]
    with tempfile.TemporaryDirectory(prefix="imaging-sync-restore-") as scratch:
        data = os.path.join(scratch, DATA)
        store.download(name + DATA, data)
        if file_sha256(data) != manifest["files"][DATA]:
            raise ValidationError("archive", f"{name}{DATA} differs from its manifest")
        check_export(data, seals)
        with engine.begin() as conn:
            partitions.create_month(conn, month)
            for row, txid in read_export(data):
                sa_table = audit_seals.table_of_name(row.table)
                values: dict[str, Any] = {**_typed_back(sa_table, row.values), "seq": row.seq, "txid": txid}
                conn.execute(insert(sa_table).values(values))
            for current in seals:
                conn.execute(insert(table_of(AuditSeal)).values(**{k: v for k, v in current.__dict__.items()}))
    report = audit_seals.VerifyReport()
    with engine.connect() as conn:
        for current in seals:
            rows = audit_seals.rows_of_seal(conn, current.seal_no)
            report.problems.extend(audit_seals.verify_seal(current, rows, None))
            report.seals += 1
            report.rows += len(rows)
    return report


def file_sha256(path: str) -> str:
    """SHA-256 (hex) of a file, read in blocks: an archived month is hundreds of megabytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _typed_back(sa_table: Any, values: dict[str, Any]) -> dict[str, Any]:
    """JSON values back to the column types (UUIDs, times, dates) for the insert."""
    import uuid

    typed = dict(values)
    for column in sa_table.c:
        value = typed.get(column.name)
        if value is None or not isinstance(value, str):
            continue
        python_type = getattr(column.type, "python_type", None) if not hasattr(column.type, "impl") else getattr(column.type.impl, "python_type", None)
        if python_type is uuid.UUID:
            typed[column.name] = uuid.UUID(value)
        elif python_type is dt.datetime:
            typed[column.name] = dt.datetime.fromisoformat(value)
        elif python_type is dt.date:
            typed[column.name] = dt.date.fromisoformat(value)
    return typed


__all__ = ["DATA", "FORMAT", "MANIFEST", "SEALS", "ArchiveResult", "ArchiveStore", "archivable", "archive_month", "check_export", "file_sha256", "parse_month",
           "read_export", "restore_month"]
