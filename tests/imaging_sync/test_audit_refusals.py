"""Unauthenticated refusals: one row per channel, address and minute, counted, with a small clean sample."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import Engine, func, select, text

from imaging_sync import audit_refusals
from imaging_sync.audit_refusals import Refusal, dicom_attempt, http_attempt
from imaging_sync.db.models import AuditEntry, AuditRefusal
from imaging_sync.errors import AuditUnavailableError

T0 = dt.datetime(2026, 3, 1, 9, 15, 20, tzinfo=dt.UTC)


def refused(at: dt.datetime = T0, addr: str | None = "203.0.113.7", tried: str = "GET /api/v1/studies (missing)", channel: str = "http") -> Refusal:
    return Refusal(channel=channel, client_addr=addr, tried=tried, at=at)


def rows(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return audit_refusals.search(conn)


def test_refusals_of_one_address_in_one_minute_are_one_row_with_count_first_last_and_a_bounded_sample(engine: Engine) -> None:
    for i in range(50):
        audit_refusals.count_now(engine, refused(T0 + dt.timedelta(seconds=i % 30), tried=http_attempt("GET", f"/api/v1/studies/{i % 12}", reason="missing")))

    [row] = rows(engine)
    assert (row["minute"], row["channel"], row["client_addr"], row["count"]) == (T0.replace(second=0), "http", "203.0.113.7", 50)
    assert (row["first_at"], row["last_at"]) == (T0, T0 + dt.timedelta(seconds=29))
    assert row["sample"] == [f"GET /api/v1/studies/{i} (missing)" for i in range(audit_refusals.SAMPLE_SIZE)]  # distinct, first come, capped
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(AuditEntry)).scalar_one() == 0  # no audit entry each


def test_another_minute_address_or_channel_is_another_row(engine: Engine) -> None:
    audit_refusals.count_now(engine, refused())
    audit_refusals.count_now(engine, refused(T0 + dt.timedelta(minutes=1)))
    audit_refusals.count_now(engine, refused(addr="198.51.100.1"))
    audit_refusals.count_now(engine, refused(addr=None, channel="dicom", tried=dicom_attempt("PROBE", "IMAGING_SYNC", "calling_ae_not_listed")))

    found = {(r["minute"].minute, r["channel"], r["client_addr"]): (r["count"], r["sample"]) for r in rows(engine)}  # type: ignore[attr-defined]
    assert found == {
        (15, "http", "203.0.113.7"): (1, ["GET /api/v1/studies (missing)"]),
        (16, "http", "203.0.113.7"): (1, ["GET /api/v1/studies (missing)"]),
        (15, "http", "198.51.100.1"): (1, ["GET /api/v1/studies (missing)"]),
        (15, "dicom", ""): (1, ["PROBE -> IMAGING_SYNC (calling_ae_not_listed)"]),
    }


def test_what_was_tried_keeps_the_path_but_never_the_query_nor_a_key_and_is_cleaned(engine: Engine) -> None:
    tried = http_attempt("GET", "/api/v1/studies?patient_id=P-SECRET&name=HONG^GILDONG", reason="invalid", claimed_prefix="ab12cd34")
    assert tried == "GET /api/v1/studies (invalid isk_ab12cd34)"
    audit_refusals.count_now(engine, refused(tried=tried))
    audit_refusals.count_now(engine, refused(tried="GET /api/v1/\x00" + "x" * 500))

    [row] = rows(engine)
    first, second = row["sample"]  # type: ignore[misc]
    assert first == tried
    assert second.startswith("GET /api/v1/\\x00x") and second.endswith("…") and len(second) == audit_refusals.SAMPLE_TEXT


def test_concurrent_writers_lose_no_count(engine: Engine) -> None:
    threads, each = 4, 50

    def flood() -> None:
        for _ in range(each):
            audit_refusals.count_now(engine, refused())

    workers = [threading.Thread(target=flood) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    [row] = rows(engine)
    assert row["count"] == threads * each


def test_totals_rank_addresses_over_a_window_and_search_pages_newest_first(engine: Engine) -> None:
    for minute in range(3):
        for _ in range(minute + 1):
            audit_refusals.count_now(engine, refused(T0 + dt.timedelta(minutes=minute)))
    audit_refusals.count_now(engine, refused(addr="198.51.100.1"))

    with engine.connect() as conn:
        ranked = audit_refusals.totals(conn, since=T0 - dt.timedelta(hours=1))
        first_page = audit_refusals.search(conn, limit=2)
        last = first_page[-1]
        rest = audit_refusals.search(conn, limit=10, before=(last["minute"], last["channel"], last["client_addr"]))
        recent = audit_refusals.search(conn, since=T0 + dt.timedelta(minutes=1, seconds=30))
    assert [(t.client_addr, t.count, t.minutes, t.peak) for t in ranked] == [("203.0.113.7", 6, 3, 3), ("198.51.100.1", 1, 1, 1)]
    assert ranked[0].first_at == T0 and ranked[0].last_at == T0 + dt.timedelta(minutes=2)
    assert [(r["minute"].minute, r["client_addr"]) for r in first_page + rest] == [  # type: ignore[attr-defined]
        (17, "203.0.113.7"), (16, "203.0.113.7"), (15, "198.51.100.1"), (15, "203.0.113.7"),
    ]
    assert [r["minute"].minute for r in recent] == [17, 16]  # type: ignore[attr-defined]  # since rounds down to its minute


def test_a_refusal_that_cannot_be_counted_raises_audit_unavailable_without_values(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE audit_refusal"))
    try:
        with pytest.raises(AuditUnavailableError) as raised:
            audit_refusals.count_now(engine, refused(tried="GET /api/v1/subjects/P-SECRET-77"))
        assert "P-SECRET-77" not in str(raised.value) and "203.0.113.7" not in str(raised.value)
    finally:
        with engine.begin() as conn:
            AuditRefusal.__table__.create(conn)


def test_an_unknown_channel_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="unknown channel"):
        audit_refusals.count_now(engine, refused(channel="cli"))
