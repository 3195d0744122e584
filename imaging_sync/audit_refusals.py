"""Unauthenticated refusals, counted per channel, client address and minute: one row, not one entry each.

A caller that presented no credentials, or credentials that cannot be used
(an HTTP 401: no key, an unknown, expired or revoked one; a DICOM peer whose
calling AE title is not listed, or calls from an address its entry does not
allow), is refused before anything is read, and proved no identity. Written
as audit entries these were a 373-byte row each, kept for years: 981 a second
from one client was 31 GB a day. Here each is one upsert into
``audit_refusal`` (migration 0012)::

    INSERT … VALUES (minute, channel, addr, now, now, 1, [tried])
    ON CONFLICT (minute, channel, client_addr) DO UPDATE SET count = count + 1, last_at = …, sample = …

so a flood from one address is one row a minute, whatever its rate. The row
keeps the first and last time, the count and a sample of at most
:data:`SAMPLE_SIZE` distinct things tried (:func:`http_attempt`: the method
and the path, never the query string nor a header; :func:`dicom_attempt`: the
AE titles), each cleaned like every value of the audit log
(:func:`imaging_sync.audit.clean`) and capped at :data:`SAMPLE_TEXT`
characters. Never a key or secret: of a refused API key only the public
prefix it claims (``isk_<prefix>_…``), which ``apikeys list`` shows anyway.

What stays a full audit entry (:mod:`imaging_sync.audit`): every refusal of a
caller who *did* authenticate (403 denied, a DIMSE ``0124``, a listed AE over
its association limit) and every access that disclosed anything. The rule is
here, the edges call it: the REST API's audit middleware for every 401
(``api.auditing``), the DICOM node for associations rejected as *calling AE
title not recognised* and for limits enforced before any AE was admitted
(``dicom.handlers``).

Like the audit log, a refusal is recorded before the caller reads it; if the
row cannot be written :class:`~imaging_sync.errors.AuditUnavailableError` is
raised (its text names the database error's class only) and the edge answers
as it would for an entry that could not be written.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, TextClause, and_, bindparam, func, or_, select, text, tuple_
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import String

from imaging_sync.audit import clean
from imaging_sync.db.models import AuditRefusal, table_of, utcnow
from imaging_sync.db.types import UTCDateTime
from imaging_sync.errors import AuditUnavailableError
from imaging_sync.logs import describe_failure

CHANNELS = ("http", "dicom")
SAMPLE_SIZE = 8  # distinct things tried kept per row; the rest only counted
SAMPLE_TEXT = 160  # characters of one of them (longer ones end in "…")
MAX_ADDR = 64  # the column's width

_refusal = table_of(AuditRefusal)


@dataclass(frozen=True)
class Refusal:
    """One unauthenticated refusal as an edge describes it: on which channel, from where, what was tried."""

    channel: str  # http | dicom
    client_addr: str | None
    tried: str  # one sample entry: http_attempt(...) or dicom_attempt(...)
    at: dt.datetime = field(default_factory=utcnow)


def http_attempt(method: str | None, path: str | None, *, reason: str | None = None, claimed_prefix: str | None = None) -> str:
    """What an HTTP caller tried, as a sample entry: ``GET /api/v1/studies (invalid isk_ab12cd34)``.

    The path only: the query string (a patient's name or ID in a search) is
    left out, and so is every header. ``reason`` is the authentication
    failure (missing, invalid, expired, revoked); ``claimed_prefix`` the
    public prefix a refused key claimed, never the key.
    """
    tried = f"{method or '-'} {(path or '/').partition('?')[0]}"
    why = " ".join(part for part in (reason, f"isk_{claimed_prefix}" if claimed_prefix else None) if part)
    return f"{tried} ({why})" if why else tried


def dicom_attempt(calling_ae: str | None, called_ae: str | None, reason: str) -> str:
    """What a DICOM peer tried, as a sample entry: ``STORESCU -> IMAGING_SYNC (calling_ae_not_listed)``."""
    return f"{calling_ae or '-'} -> {called_ae or '-'} ({reason})"


def minute_of(at: dt.datetime) -> dt.datetime:
    """The minute a refusal is counted in (UTC, seconds zeroed)."""
    return at.astimezone(dt.UTC).replace(second=0, microsecond=0)


# -- writing ---------------------------------------------------------------------------------------------

_TYPES = (
    bindparam("minute", type_=UTCDateTime()), bindparam("at", type_=UTCDateTime()),
    bindparam("channel", type_=String()), bindparam("client_addr", type_=String()), bindparam("tried", type_=String()),
)


@functools.lru_cache(maxsize=4)
def _upsert(dialect: str) -> TextClause:
    """The upsert of one refusal: one statement, one round trip, atomic on its own (PostgreSQL autocommit).

    The sample grows by the new attempt only while it has fewer than
    :data:`SAMPLE_SIZE` entries and does not hold it already; ``first_at`` and
    ``last_at`` take the least and greatest, whatever order concurrent writers
    commit in. SQLite (3.24 and later) takes the same ``ON CONFLICT`` syntax;
    only the JSON functions differ.
    """
    if dialect == "postgresql":
        new_sample = "jsonb_build_array(CAST(:tried AS text))"
        least, greatest = "LEAST", "GREATEST"
        keep = f"jsonb_array_length(audit_refusal.sample) >= {SAMPLE_SIZE} OR audit_refusal.sample @> excluded.sample"
        grown = "audit_refusal.sample || excluded.sample"
    else:
        new_sample = "json_array(:tried)"
        least, greatest = "min", "max"  # SQLite's scalar min/max; its datetimes are ISO text, ordered as text
        keep = (
            f"json_array_length(audit_refusal.sample) >= {SAMPLE_SIZE} OR EXISTS "
            "(SELECT 1 FROM json_each(audit_refusal.sample) AS tried WHERE tried.value = json_extract(excluded.sample, '$[0]'))"
        )
        grown = "json_insert(audit_refusal.sample, '$[#]', json_extract(excluded.sample, '$[0]'))"
    return text(
        "INSERT INTO audit_refusal (minute, channel, client_addr, first_at, last_at, count, sample) "
        f"VALUES (:minute, :channel, :client_addr, :at, :at, 1, {new_sample}) "
        "ON CONFLICT (minute, channel, client_addr) DO UPDATE SET "
        "count = audit_refusal.count + 1, "
        f"first_at = {least}(audit_refusal.first_at, excluded.first_at), "
        f"last_at = {greatest}(audit_refusal.last_at, excluded.last_at), "
        f"sample = CASE WHEN {keep} THEN audit_refusal.sample ELSE {grown} END"
    ).bindparams(*_TYPES)


def count(conn: Connection, refusal: Refusal) -> None:
    """Count ``refusal`` in its address's row of its minute, within the caller's transaction.

    Raises :class:`AuditUnavailableError` when the database refuses (roll
    back; the caller answers as for an audit entry that could not be written);
    ``ValueError`` for a channel not in :data:`CHANNELS`.
    """
    if refusal.channel not in CHANNELS:
        raise ValueError(f"unknown channel {refusal.channel!r} (one of {', '.join(CHANNELS)})")
    params = {
        "minute": minute_of(refusal.at),
        "at": refusal.at,
        "channel": refusal.channel,
        "client_addr": clean(refusal.client_addr or "", max_text=MAX_ADDR - 1),
        "tried": clean(refusal.tried, max_text=SAMPLE_TEXT),
    }
    try:
        conn.execute(_upsert(conn.dialect.name), params)
    except SQLAlchemyError as error:
        raise _unavailable(error) from None


def count_now(engine: Engine, refusal: Refusal) -> None:
    """:func:`count` in a transaction of its own, committed on return."""
    with _own_transaction(engine) as conn:
        count(conn, refusal)


def _unavailable(error: BaseException) -> AuditUnavailableError:
    return AuditUnavailableError(f"the audit log could not count the refusal: {describe_failure(error)}")


@contextmanager
def _own_transaction(engine: Engine) -> Iterator[Connection]:
    """PostgreSQL: autocommit (the upsert is one statement); SQLite: BEGIN IMMEDIATE … COMMIT."""
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
                return
            conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn
    except SQLAlchemyError as error:
        raise _unavailable(error) from None


# -- reading ---------------------------------------------------------------------------------------------

_COLUMNS = ("minute", "channel", "client_addr", "first_at", "last_at", "count", "sample")


def search(
    conn: Connection,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    client_addr: str | None = None,
    channel: str | None = None,
    limit: int = 100,
    before: tuple[dt.datetime, str, str] | None = None,
) -> list[dict[str, Any]]:
    """Rows newest minute first (then channel, address): ``minute``, ``channel``, ``client_addr``,
    ``first_at``, ``last_at``, ``count``, ``sample``.

    ``since`` and ``until`` bound the minutes (a minute counts when it starts
    in ``[since, until)``, so ``since`` is rounded down to its minute);
    ``before`` continues a listing after its last row's (minute, channel,
    client_addr).
    """
    conditions = []
    if since is not None:
        conditions.append(_refusal.c.minute >= minute_of(since))
    if until is not None:
        conditions.append(_refusal.c.minute < until)
    if client_addr is not None:
        conditions.append(_refusal.c.client_addr == client_addr)
    if channel is not None:
        conditions.append(_refusal.c.channel == channel)
    if before is not None:
        minute, chan, addr = before
        conditions.append(or_(
            _refusal.c.minute < minute,
            and_(_refusal.c.minute == minute, tuple_(_refusal.c.channel, _refusal.c.client_addr) > tuple_(bindparam("c", chan), bindparam("a", addr))),
        ))
    stmt = (
        select(*(_refusal.c[name] for name in _COLUMNS)).where(*conditions)
        .order_by(_refusal.c.minute.desc(), _refusal.c.channel, _refusal.c.client_addr).limit(limit)
    )
    return [dict(row) for row in conn.execute(stmt).mappings()]


@dataclass(frozen=True)
class AddressTotal:
    """One address's unauthenticated refusals on one channel over a window: what an operator on call looks at first."""

    channel: str
    client_addr: str
    count: int
    minutes: int  # minutes with at least one refusal
    first_at: dt.datetime
    last_at: dt.datetime
    peak: int  # the most in one minute


def totals(conn: Connection, *, since: dt.datetime, until: dt.datetime | None = None, channel: str | None = None, limit: int = 20) -> list[AddressTotal]:
    """The addresses refused most since ``since`` (and before ``until``), most refusals first."""
    conditions = [_refusal.c.minute >= minute_of(since)]
    if until is not None:
        conditions.append(_refusal.c.minute < until)
    if channel is not None:
        conditions.append(_refusal.c.channel == channel)
    total = func.sum(_refusal.c["count"]).label("total")
    stmt = (
        select(
            _refusal.c.channel, _refusal.c.client_addr, total, func.count().label("minutes"),
            func.min(_refusal.c.first_at).label("first_at"), func.max(_refusal.c.last_at).label("last_at"),
            func.max(_refusal.c["count"]).label("peak"),
        )
        .where(*conditions).group_by(_refusal.c.channel, _refusal.c.client_addr)
        .order_by(total.desc(), _refusal.c.client_addr).limit(limit)
    )
    return [
        AddressTotal(row["channel"], row["client_addr"], int(row["total"]), int(row["minutes"]), row["first_at"], row["last_at"], int(row["peak"]))
        for row in conn.execute(stmt).mappings()
    ]


__all__ = [
    "CHANNELS", "SAMPLE_SIZE", "SAMPLE_TEXT", "AddressTotal", "Refusal", "count", "count_now", "dicom_attempt", "http_attempt",
    "minute_of", "search", "totals",
]
