"""The audit write of one read that discloses patient data, before and after audit-before-answer.

What an edge pays per operation on PostgreSQL, measured alone (no HTTP, no
DICOM) so that the audit's own share shows through a shared machine's noise:

- ``before``: one complete entry in a transaction of its own (BEGIN, INSERT,
  COMMIT: what ``record_now`` did before, and what the DICOM node wrote after
  each C-FIND);
- ``record (autocommit)``: the same entry as ``record_now`` writes it now (one
  statement in autocommit);
- ``begin+50+finish``: ``begin`` with a page of 50 studies and their 50
  subjects in the same statement, then ``finish`` (a C-FIND's whole answer in
  one batch);
- ``begin, disclose 50, finish``: the same with the batch in a statement of
  its own (a C-FIND whose matches come in a second batch);
- ``REST search entry + 50``: the REST API's entry of a 50-study page with its
  disclosures, on a connection in autocommit (as ``api.db`` keeps it), against
  the same entry without them.

The variants run interleaved (one round of each, repeated), on a database of
their own that is dropped at the end. Prints median and p90 in ms.

    python bench/audit_write.py [--rounds 2000] [--batch 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from imaging_sync import audit
from imaging_sync.audit import AuditEvent
from imaging_sync.config import DatabaseConfig
from imaging_sync.db import migrate
from imaging_sync.db.engine import create_db_engine
from imaging_sync.db.models import AuditEntry
from imaging_sync.ids import new_id, new_ids

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATABASE = "imaging_sync_bench_audit"
QUERY = {"QueryRetrieveLevel": "STUDY", "PatientName": "KIM*", "StudyDate": "20240101-20241231", "model": "study_root"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50, help="studies per page (each with its own subject)")
    args = parser.parse_args()

    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    url = make_url(ADMIN_URL).set(database=DATABASE).render_as_string(hide_password=False)
    engine = create_db_engine(DatabaseConfig(url=url, pool_size=2))
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar()
        rest_conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")

        def event(outcome: str = "success") -> AuditEvent:
            return AuditEvent(channel="dicom", actor="PACS_A", action="c-find", outcome=outcome, client_addr="10.1.2.3", query=QUERY, resource_type="study")

        def page() -> tuple[list[uuid.UUID], list[uuid.UUID]]:
            ids = new_ids(2 * args.batch)
            return ids[: args.batch], ids[args.batch :]

        def before() -> None:  # record_now as it was: BEGIN, INSERT, COMMIT
            values = {"id": new_id(), **{name: getattr(event(), name) for name in audit._FIELDS}, "detail": {"matches": args.batch}}
            with engine.begin() as conn:
                conn.execute(AuditEntry.__table__.insert(), values)

        def record_autocommit() -> None:
            audit.record_now(engine, AuditEvent(**{**_fields(event()), "detail": {"matches": args.batch}}))

        def begin_with_page() -> None:
            subjects, studies = page()
            handle = audit.begin(engine, event("started"), subject_ids=subjects, study_ids=studies)
            handle.finish("success", status=0, detail={"matches": args.batch})

        def begin_then_disclose() -> None:
            subjects, studies = page()
            handle = audit.begin(engine, event("started"))
            handle.disclose(subject_ids=subjects, study_ids=studies)
            handle.finish("success", status=0, detail={"matches": args.batch})

        def rest_plain() -> None:
            audit.record(rest_conn, AuditEvent(channel="http", actor="abcdef123456", action="search", outcome="success", method="GET", path="/api/v1/studies",
                                               query={"name": "kim"}, status=200, detail={"results": args.batch}))

        def rest_disclosing() -> None:
            subjects, studies = page()
            audit.record(
                rest_conn,
                AuditEvent(channel="http", actor="abcdef123456", action="search", outcome="success", method="GET", path="/api/v1/studies",
                           query={"name": "kim"}, status=200, detail={"results": args.batch}),
                subject_ids=subjects, study_ids=studies,
            )

        variants: dict[str, Callable[[], None]] = {
            "before: one entry, BEGIN/INSERT/COMMIT": before,
            "record_now (autocommit)": record_autocommit,
            f"begin + {args.batch} studies & subjects, finish": begin_with_page,
            f"begin, disclose {args.batch}, finish": begin_then_disclose,
            "REST search entry, no disclosures": rest_plain,
            f"REST search entry + {args.batch} disclosures": rest_disclosing,
        }
        timings: dict[str, list[float]] = {name: [] for name in variants}
        for run in variants.values():  # warm-up: connections, prepared statements, caches
            for _ in range(50):
                run()
        for _ in range(args.rounds):
            for name, run in variants.items():
                start = time.perf_counter()
                run()
                timings[name].append(time.perf_counter() - start)
        rest_conn.close()
        print(f"PostgreSQL {version}, {args.rounds} rounds, a page of {args.batch} studies of {args.batch} patients; ms")
        print(f"{'variant':<48} {'median':>8} {'p90':>8}")
        for name, values in timings.items():
            values.sort()
            print(f"{name:<48} {statistics.median(values) * 1000:8.3f} {values[int(len(values) * 0.9)] * 1000:8.3f}")
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        admin.dispose()


def _fields(event: AuditEvent) -> dict[str, object]:
    return {name: getattr(event, name) for name in audit._FIELDS}


if __name__ == "__main__":
    main()
