"""The tasks through a real Celery worker and Redis, against the partner simulator over HTTP."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from jobs_fixtures import IGNORE_SETEX
from sqlalchemy import func, select

from app import cli
from devtools.factories import simulator_partner
from devtools.index_state import live_index
from devtools.toml_config import write_config
from devtools.waiting import eventually
from devtools.webhook_receiver import WebhookReceiver
from imaging_sync.config import JobsConfig, Settings
from imaging_sync.db.models import OutboxEvent, PartnerState, RejectedItem, SyncRun, utcnow
from imaging_sync.task_names import CHECK_ALERTS, PRUNE, READ_HEADERS, RELAY_ATNA, RELAY_OUTBOX, RETRY_FAILED_OUTBOX, SEAL_AUDIT, SYNC_ALL, SYNC_PARTNER
from jobs.app import create_app

pytestmark = IGNORE_SETEX


def run_statuses(jobs: Any) -> list[str]:
    with jobs.engine().connect() as conn:
        return sorted(conn.execute(select(SyncRun.status)).scalars())


def test_every_task_is_acked_late_requeued_on_worker_loss_and_prefetches_one() -> None:
    app = create_app(Settings(jobs=JobsConfig(timezone="Asia/Seoul")))  # configuration only: no broker needed
    ours = [task for name, task in app.tasks.items() if name.startswith("imaging_sync.jobs.")]
    assert {t.name for t in ours} == {SYNC_PARTNER, SYNC_ALL, RELAY_OUTBOX, RETRY_FAILED_OUTBOX, PRUNE, CHECK_ALERTS, SEAL_AUDIT, RELAY_ATNA, READ_HEADERS}
    for task in ours:
        assert task.acks_late is True and task.reject_on_worker_lost is True, task.name
        assert task.serializer == "json", task.name
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.timezone == "Asia/Seoul"
    assert app.tasks[SYNC_PARTNER].soft_time_limit and app.tasks[SYNC_PARTNER].time_limit > app.tasks[SYNC_PARTNER].soft_time_limit
    assert conf.task_soft_time_limit and conf.task_time_limit > conf.task_soft_time_limit
    app.close()


def test_sync_partner_through_a_worker_records_a_succeeded_run_and_the_index_matches_the_partner(jobs: Any, start_simulator) -> None:
    sim = start_simulator(studies=25)
    app = jobs.app(simulator_partner("b", sim.base_url, page_size=10))
    with jobs.worker(app):
        result = app.tasks[SYNC_PARTNER].delay("b").get(timeout=30)
    assert result["status"] == "succeeded", result
    assert result["counts"]["created"] == 25 and result["counts"]["pages"] == 3
    engine = jobs.engine()
    assert live_index(engine, "b") == sim.dataset.expected_state()
    with engine.connect() as conn:
        run = conn.execute(select(SyncRun)).one()
    assert str(run.id) == result["run_id"] and run.status == "succeeded" and run.trigger == "task"


def test_a_second_sync_while_the_first_holds_the_partner_lock_ends_skipped_and_is_recorded(jobs: Any, start_simulator) -> None:
    sim = start_simulator(studies=20)
    app = jobs.app(simulator_partner("b", sim.base_url, page_size=5))
    gate = sim.faults.block_on_page(2)
    with jobs.worker(app, concurrency=2):
        first = app.tasks[SYNC_PARTNER].delay("b")
        try:
            assert gate.wait_until_blocked(timeout=20)
            second = app.tasks[SYNC_PARTNER].delay("b").get(timeout=20)
        finally:
            gate.release()
        done = first.get(timeout=30)
    assert second["status"] == "skipped" and second["error_kind"] == "locked"
    assert done["status"] == "succeeded" and done["counts"]["created"] == 20
    assert run_statuses(jobs) == ["skipped", "succeeded"]
    assert live_index(jobs.engine(), "b") == sim.dataset.expected_state()


def test_relay_outbox_through_the_worker_delivers_the_sync_events_to_the_webhook(sqlite_jobs: Any, start_simulator) -> None:
    sim = start_simulator(studies=12)
    with WebhookReceiver() as receiver:
        app = sqlite_jobs.app(simulator_partner("b", sim.base_url), webhook_url=receiver.url)
        with sqlite_jobs.worker(app):
            assert app.tasks[SYNC_PARTNER].delay("b").get(timeout=30)["status"] == "succeeded"
            relayed = app.tasks[RELAY_OUTBOX].delay().get(timeout=30)
            again = app.tasks[RELAY_OUTBOX].delay().get(timeout=30)
        events = receiver.events()
    assert relayed["configured"] and relayed["delivered"] == 12 and again["claimed"] == 0
    assert Counter(e["type"] for e in events) == {"study.created": 12}
    assert {e["payload"]["partner"] for e in events} == {"b"}
    with sqlite_jobs.engine().connect() as conn:
        assert dict(conn.execute(select(OutboxEvent.status, func.count()).group_by(OutboxEvent.status)).all()) == {"done": 12}


def test_relay_outbox_hands_each_event_to_the_configured_celery_task(sqlite_jobs: Any, start_simulator) -> None:
    sim = start_simulator(studies=7)
    app = sqlite_jobs.app(simulator_partner("b", sim.base_url), celery_task="tests.collect_outbox_event")
    received: list[dict[str, Any]] = []

    @app.task(name="tests.collect_outbox_event")
    def collect(event: dict[str, Any]) -> None:  # a downstream consumer, living in the same worker here
        received.append(event)

    with sqlite_jobs.worker(app):
        assert app.tasks[SYNC_PARTNER].delay("b").get(timeout=30)["status"] == "succeeded"
        assert app.tasks[RELAY_OUTBOX].delay().get(timeout=30)["delivered"] == 7
        deadline = time.monotonic() + 15
        while len(received) < 7 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(received) == 7 and {e["type"] for e in received} == {"study.created"}
    assert len({e["id"] for e in received}) == 7 and all(e["payload"]["partner"] == "b" for e in received)


def test_relay_outbox_without_a_sink_does_nothing(sqlite_jobs: Any) -> None:
    app = sqlite_jobs.app()
    with sqlite_jobs.worker(app, concurrency=1):
        assert app.tasks[RELAY_OUTBOX].delay().get(timeout=20) == {"configured": False, "claimed": 0, "delivered": 0, "retried": 0, "failed": 0}


def test_sync_all_fans_out_one_sync_per_enabled_partner(sqlite_jobs: Any, start_simulator) -> None:
    b, c = start_simulator("b", studies=6), start_simulator("c", studies=4, seed=7, uid_root="1.2.826.0.1.3680043.10.5678")
    app = sqlite_jobs.app(simulator_partner("b", b.base_url), simulator_partner("c", c.base_url), simulator_partner("d", "http://127.0.0.1:9", enabled=False))
    engine = sqlite_jobs.engine()

    def runs(ids: dict[str, str]) -> dict[str, tuple[str, int]]:
        with engine.connect() as conn:
            rows = conn.execute(select(SyncRun.id, SyncRun.status, SyncRun.created).where(SyncRun.id.in_([uuid.UUID(i) for i in ids.values()])))
            by_id = {str(run_id): (status, created) for run_id, status, created in rows}
        return {name: by_id[run_id] for name, run_id in ids.items()}

    with sqlite_jobs.worker(app):
        queued = app.tasks[SYNC_ALL].delay().get(timeout=20)["queued"]  # partner -> the run recorded as queued
        assert set(queued) == {"b", "c"}
        def all_done() -> dict[str, tuple[str, int]] | None:
            found = runs(queued)
            return found if all(status == "succeeded" for status, _ in found.values()) else None

        finished = eventually(all_done, timeout=30, what="both queued runs carried on by the workers")
    assert finished == {"b": ("succeeded", 6), "c": ("succeeded", 4)}


def test_prune_retry_and_alert_checks_run_through_the_worker(jobs: Any) -> None:
    app = jobs.app()
    engine = jobs.engine()
    now, long_ago = utcnow(), utcnow() - dt.timedelta(days=100)
    old, kept_latest, recent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    failed_event, old_done = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        for run_id, partner, at in ((old, "b", long_ago), (kept_latest, "c", long_ago), (recent, "b", now)):
            conn.execute(SyncRun.__table__.insert().values(id=run_id, partner=partner, status="succeeded", trigger="test", full=False, started_at=at, finished_at=at))
        conn.execute(RejectedItem.__table__.insert().values(id=uuid.uuid4(), run_id=old, partner="b", partner_item_id="x", kind="validation", reason="r", payload="{}", created_at=long_ago))
        conn.execute(PartnerState.__table__.insert().values(partner="c", last_run_id=kept_latest, updated_at=now))
        for event_id, status, at in ((failed_event, "failed", now), (old_done, "done", long_ago)):
            conn.execute(OutboxEvent.__table__.insert().values(id=event_id, event_type="study.updated", aggregate_type="study", aggregate_id=uuid.uuid4(), payload={},
                                                               status=status, attempts=3, next_attempt_at=at, created_at=at, processed_at=at))
    with jobs.worker(app):
        pruned = app.tasks[PRUNE].delay(30).get(timeout=20)
        requeued = app.tasks[RETRY_FAILED_OUTBOX].delay([str(failed_event)]).get(timeout=20)
        checked = app.tasks[CHECK_ALERTS].delay().get(timeout=20)
    assert pruned == {"sync_runs": 1, "rejected_items": 1, "outbox_events": 1, "days": 30}
    assert requeued == {"requeued": 1} and checked == {"checked": True}
    with engine.connect() as conn:
        assert set(conn.execute(select(SyncRun.id)).scalars()) == {kept_latest, recent}
        assert conn.execute(select(func.count()).select_from(RejectedItem)).scalar_one() == 0
        assert dict(conn.execute(select(OutboxEvent.id, OutboxEvent.status)).all()) == {failed_event: "pending"}


def test_sync_async_on_the_command_line_queues_a_task_the_worker_runs(sqlite_jobs: Any, start_simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim = start_simulator(studies=5)
    partner = simulator_partner("b", sim.base_url)
    config = write_config(tmp_path / "imaging-sync.toml", sqlite_jobs.db_url, partner)
    config.write_text(config.read_text() + f'\n[jobs]\nbroker_url = "{sqlite_jobs.broker_url}"\n')
    cli.main(["--config", str(config), "sync", "--async", "--partner", "b"])
    line = capsys.readouterr().out.strip()
    match = re.fullmatch(r"queued sync of partner b: run ([0-9a-f-]{36}) \(`imaging-sync runs show \1`\)", line)
    assert match, line
    run_id, engine = uuid.UUID(match.group(1)), sqlite_jobs.engine()

    def status() -> str:
        with engine.connect() as conn:
            return str(conn.execute(select(SyncRun.status).where(SyncRun.id == run_id)).scalar_one())

    assert status() == "queued", "recorded before any worker has the task"
    app = sqlite_jobs.app(partner)
    with sqlite_jobs.worker(app, concurrency=1):
        eventually(lambda: status() == "succeeded", timeout=30, what="the worker carries the queued run on")
    assert live_index(engine, "b") == sim.dataset.expected_state()


def test_after_a_sync_the_worker_reads_the_new_instances_headers_and_records_what_it_cannot_read(sqlite_jobs: Any, start_simulator) -> None:
    """The simulator's buckets are not in this deployment's storage registry: every header read is refused and
    recorded per instance (``bucket_refused``), the worker goes on, nothing crashes."""
    from imaging_sync.catalog.headers import progress
    from imaging_sync.db.models import InstanceHeader

    sim = start_simulator(studies=3, series=1, instances=2)
    app = sqlite_jobs.app(simulator_partner("b", sim.base_url), read_headers=True)
    engine = sqlite_jobs.engine()
    with sqlite_jobs.worker(app):
        assert app.tasks[SYNC_PARTNER].delay("b").get(timeout=30)["status"] == "succeeded"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                rows = conn.execute(select(InstanceHeader.failure)).scalars().all()
            if len(rows) == 6:
                break
            time.sleep(0.2)
        again = app.tasks[READ_HEADERS].delay("b").get(timeout=30)
    assert rows == ["bucket_refused"] * 6
    assert again == {"partner": "b", "read": 0, "failed": {}}  # failures are not retried unless asked
    with engine.connect() as conn:
        [b] = progress(conn)
    assert (b.partner, b.kept, b.failed, b.unread) == ("b", 0, {"bucket_refused": 6}, 0)
