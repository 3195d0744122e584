"""The embedded scheduler (single-process mode): the beat schedule in threads, driven by a test clock."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from jobs_fixtures import FAST_OUTBOX
from sqlalchemy import select

from app.assembly import open_core
from devtools.factories import simulator_partner
from devtools.index_state import live_index
from devtools.waiting import eventually
from devtools.webhook_receiver import WebhookReceiver
from imaging_sync.config import DatabaseConfig, JobsConfig, Settings, WebhookConfig
from imaging_sync.core import Core
from imaging_sync.db.models import SyncRun
from jobs.embedded import EmbeddedScheduler


class Clock:
    """A clock the test moves by hand; the scheduler reads it for every decision."""

    def __init__(self, start: dt.datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, **delta: float) -> None:
        with self._lock:
            self._now += dt.timedelta(**delta)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


@pytest.fixture
def make_core(db_url: str) -> Iterator[Callable[..., Core]]:
    cores: list[Core] = []

    def make(*partners: Any, webhook_url: str | None = None) -> Core:
        outbox = msgspec.structs.replace(FAST_OUTBOX, webhook=WebhookConfig(url=webhook_url)) if webhook_url else FAST_OUTBOX
        settings = Settings(
            database=DatabaseConfig(url=db_url),
            outbox=outbox,
            jobs=JobsConfig(timezone="Asia/Seoul", outbox_relay_seconds=5, alerts_check_seconds=60),
            partners={p.name: p for p in partners},
        )
        core = open_core(settings, configure_logs=False)
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.close()


def statuses(core: Core) -> list[str]:
    with core.engine.connect() as conn:
        return sorted(conn.execute(select(SyncRun.status)).scalars())


def test_a_due_crontab_fires_the_partner_sync_and_the_relay_delivers_its_events(make_core, start_simulator, receiver: WebhookReceiver) -> None:
    sim = start_simulator(studies=8)
    core = make_core(simulator_partner("b", sim.base_url, schedule="* * * * *"), webhook_url=receiver.url)
    clock = Clock(dt.datetime(2024, 3, 10, 12, 0, 30, tzinfo=dt.UTC))
    scheduler = EmbeddedScheduler(core, core.settings, clock=clock, max_sleep=0.05)
    with scheduler:
        clock.advance(seconds=30)  # 12:01:00: the every-minute crontab is due
        scheduler.wake()
        eventually(lambda: statuses(core) == ["succeeded"])
        clock.advance(seconds=5)  # the next relay tick, after the sync committed its events
        scheduler.wake()
        assert receiver.wait_for(lambda r: len(r.events()) == 8, timeout=15)
    assert live_index(core.engine, "b") == sim.dataset.expected_state()
    assert {e["type"] for e in receiver.events()} == {"study.created"}
    with core.engine.connect() as conn:
        assert conn.execute(select(SyncRun.trigger)).scalar_one() == "schedule"


def test_a_tick_while_the_partner_is_still_syncing_does_not_start_a_second_run(make_core, start_simulator, caplog: pytest.LogCaptureFixture) -> None:
    sim = start_simulator(studies=20)
    core = make_core(simulator_partner("b", sim.base_url, page_size=5, schedule="* * * * *"))
    clock = Clock(dt.datetime(2024, 3, 10, 12, 0, 30, tzinfo=dt.UTC))
    gate = sim.faults.block_on_page(2)
    scheduler = EmbeddedScheduler(core, core.settings, clock=clock, max_sleep=0.05)
    caplog.set_level(logging.INFO, logger="jobs.embedded")
    with scheduler:
        try:
            clock.advance(seconds=30)
            scheduler.wake()
            assert gate.wait_until_blocked(timeout=15)
            clock.advance(minutes=1)  # the next tick, while the first run waits on the partner
            scheduler.wake()
            eventually(lambda: any("still going" in r.getMessage() for r in caplog.records))
        finally:
            gate.release()
        eventually(lambda: statuses(core) == ["succeeded"])
    assert statuses(core) == ["succeeded"]  # one run, not a second one (nor a skipped one)


def test_stop_is_prompt_and_joins_its_threads(make_core) -> None:
    core = make_core()
    scheduler = EmbeddedScheduler(core, core.settings, max_sleep=30)
    scheduler.start()
    threads = [scheduler._scheduler, *scheduler._threads]
    started = time.monotonic()
    scheduler.stop()
    assert time.monotonic() - started < 2
    assert not any(t.is_alive() for t in threads)
