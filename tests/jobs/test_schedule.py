"""The beat schedule: a pure function of the settings, with Celery's crontab doing the arithmetic."""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
import redis
from celery.beat import PersistentScheduler

from devtools.factories import simulator_partner
from devtools.toml_config import write_config
from imaging_sync.config import JobsConfig, OutboxConfig, Settings, WebhookConfig, load_settings
from imaging_sync.errors import ConfigError
from imaging_sync.task_names import CHECK_ALERTS, PRUNE, QUEUE, RELAY_OUTBOX, SYNC_PARTNER
from jobs.app import create_app
from jobs.schedule import ZonedCrontab, build_beat_schedule, next_run_times

SEOUL = ZoneInfo("Asia/Seoul")


def seoul_settings(**partner_overrides: Any) -> Settings:
    return Settings(
        jobs=JobsConfig(timezone="Asia/Seoul", outbox_relay_seconds=20, alerts_check_seconds=120, prune_days=30),
        partners={
            "b": simulator_partner("b", "http://127.0.0.1:9"),
            "c": simulator_partner("c", "http://127.0.0.1:9", **partner_overrides),
            "off": simulator_partner("off", "http://127.0.0.1:9", enabled=False),
        },
    )


def test_the_default_crontab_fires_twice_a_day_at_06_and_18_in_the_configured_zone() -> None:
    entry = build_beat_schedule(seoul_settings())["sync-partner-b"]
    assert entry["task"] == SYNC_PARTNER and entry["kwargs"] == {"name": "b", "trigger": "schedule"}
    now = dt.datetime(2024, 3, 10, 5, 59, 30, tzinfo=SEOUL)
    assert next_run_times(entry["schedule"], now, 3) == [
        dt.datetime(2024, 3, 10, 6, 0, tzinfo=SEOUL),
        dt.datetime(2024, 3, 10, 18, 0, tzinfo=SEOUL),
        dt.datetime(2024, 3, 11, 6, 0, tzinfo=SEOUL),
    ]
    # From a UTC "now" (10:00Z is 19:00 in Seoul): the next run is 06:00 Seoul, 21:00Z.
    utc_now = dt.datetime(2024, 3, 10, 10, 0, tzinfo=dt.UTC)
    (next_run,) = next_run_times(entry["schedule"], utc_now, 1)
    assert next_run == dt.datetime(2024, 3, 11, 6, 0, tzinfo=SEOUL)
    assert next_run.astimezone(dt.UTC) == dt.datetime(2024, 3, 10, 21, 0, tzinfo=dt.UTC)


def test_the_schedule_says_it_is_due_at_the_tick_and_not_before() -> None:
    clock = {"now": dt.datetime(2024, 3, 10, 5, 59, 0, tzinfo=SEOUL)}
    cron = build_beat_schedule(seoul_settings(), nowfun=lambda: clock["now"])["sync-partner-b"]["schedule"]
    last_run = clock["now"]
    due, next_in = cron.is_due(last_run)
    assert (due, next_in) == (False, 60.0)
    clock["now"] = dt.datetime(2024, 3, 10, 6, 0, 0, tzinfo=SEOUL)
    due, next_in = cron.is_due(last_run)
    assert due and next_in == 12 * 3600


def test_a_partner_override_is_honoured_and_disabled_partners_are_not_scheduled() -> None:
    entries = build_beat_schedule(seoul_settings(schedule="30 2 * * 1"))  # Mondays 02:30
    assert "sync-partner-off" not in entries
    sunday = dt.datetime(2024, 3, 10, 12, 0, tzinfo=SEOUL)
    assert next_run_times(entries["sync-partner-c"]["schedule"], sunday, 2) == [
        dt.datetime(2024, 3, 11, 2, 30, tzinfo=SEOUL),
        dt.datetime(2024, 3, 18, 2, 30, tzinfo=SEOUL),
    ]
    # Missed ticks do not pile up: a queued sync expires when the next one is due.
    assert entries["sync-partner-b"]["options"]["expires"] == 12 * 3600
    assert entries["sync-partner-c"]["options"]["expires"] == 7 * 24 * 3600


def test_relay_alerts_and_prune_run_on_their_configured_cadence() -> None:
    settings = seoul_settings()
    assert "relay-outbox" not in build_beat_schedule(settings)  # no sink: nothing to relay to
    with_sink = msgspec.structs.replace(settings, outbox=OutboxConfig(webhook=WebhookConfig(url="http://127.0.0.1:9/hook")))
    entries = build_beat_schedule(with_sink)
    assert entries["relay-outbox"]["task"] == RELAY_OUTBOX and entries["relay-outbox"]["schedule"].run_every == dt.timedelta(seconds=20)
    assert entries["check-alerts"]["task"] == CHECK_ALERTS and entries["check-alerts"]["schedule"].run_every == dt.timedelta(seconds=120)
    assert entries["prune"]["task"] == PRUNE and entries["prune"]["kwargs"] == {"days": 30}
    monday_noon = dt.datetime(2024, 3, 11, 12, 0, tzinfo=SEOUL)
    assert next_run_times(entries["prune"]["schedule"], monday_noon, 1) == [dt.datetime(2024, 3, 12, 3, 30, tzinfo=SEOUL)]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[jobs]\ndefault_schedule = "0 24 * * *"\n', "jobs.default_schedule"),
        ('[partners.b]\nbase_url = "http://127.0.0.1:9"\napi_key_env = "K"\nschedule = "0 6 * *"\n', "partners.b.schedule"),
    ],
)
def test_a_bad_crontab_in_the_config_is_an_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "imaging-sync.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {"K": "k"})
    assert caught.value.key == key and "crontab" in caught.value.reason


def test_the_app_carries_the_schedule_and_beat_keeps_the_zone_across_restarts(tmp_path: Path) -> None:
    settings = seoul_settings()
    app = create_app(settings)
    try:
        assert app.conf.timezone == "Asia/Seoul"
        assert set(app.conf.beat_schedule) == set(build_beat_schedule(settings))
        scheduler = PersistentScheduler(app=app, schedule_filename=str(tmp_path / "beat"), lazy=False)
        scheduler.sync()
        scheduler.close()
        again = PersistentScheduler(app=app, schedule_filename=str(tmp_path / "beat"), lazy=False)
        cron = again.schedule["sync-partner-b"].schedule
        again.close()
    finally:
        app.close()
    assert isinstance(cron, ZonedCrontab) and cron.zone == "Asia/Seoul"
    assert pickle.loads(pickle.dumps(cron)) == cron


@pytest.mark.slow
def test_imaging_sync_beat_queues_the_scheduled_tasks_on_the_broker(redis_url: str, sqlite_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "imaging-sync.toml", sqlite_url, simulator_partner("b", "http://127.0.0.1:9"))
    config.write_text(config.read_text() + f'\n[jobs]\nbroker_url = "{redis_url}"\nalerts_check_seconds = 0.2\n')
    log = tmp_path / "beat.log"
    command = [sys.executable, "-m", "app", "--config", str(config), "beat", "--schedule-file", str(tmp_path / "beat"), "--max-interval", "0.2"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and client.llen(QUEUE) < 2 and process.poll() is None:
            time.sleep(0.05)
        queued = client.lrange(QUEUE, 0, -1)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
        client.close()
    assert len(queued) >= 2, log.read_text(errors="replace")
    headers = [json.loads(m)["headers"] for m in queued]
    assert {h["task"] for h in headers} == {CHECK_ALERTS}
    assert all(h["expires"] for h in headers)  # a tick nobody ran in time is dropped, not piled up
