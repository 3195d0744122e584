"""Alerts to a real local webhook receiver: once per incident, once on recovery."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import msgspec
import pytest
from sqlalchemy import Engine

from devtools.datagen import DatasetSpec
from devtools.factories import UNREACHED_WEBHOOK, settings_for, simulator_partner
from devtools.simulator import PartnerSimulator, SimulatorConfig
from devtools.webhook_receiver import WebhookReceiver
from imaging_sync.alerts import Alerts, WebhookNotifier
from imaging_sync.config import AlertsConfig
from imaging_sync.db.models import OutboxEvent, utcnow
from imaging_sync.sync.runner import SyncRunner


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


@pytest.fixture
def sim() -> Iterator[PartnerSimulator]:
    with PartnerSimulator(DatasetSpec(partner="b", studies=6), SimulatorConfig(api_key="sim-key")) as simulator:
        yield simulator


def wire(engine: Engine, sim: PartnerSimulator, receiver: WebhookReceiver, *, sink: bool = True, **alert_settings: object) -> tuple[SyncRunner, Alerts]:
    url = engine.url.render_as_string(hide_password=False)
    settings = settings_for(url, simulator_partner("b", sim.base_url), webhook_url=UNREACHED_WEBHOOK if sink else None)
    settings = msgspec.structs.replace(settings, alerts=AlertsConfig(**alert_settings))  # type: ignore[arg-type]
    alerts = Alerts(engine, settings, [WebhookNotifier(receiver.url, slack=False, timeout=5)])
    return SyncRunner(engine, settings, after_run=[alerts.on_run]), alerts


def messages(receiver: WebhookReceiver) -> list[tuple[str, str]]:
    return [(r["json"]["key"], r["json"]["state"]) for r in receiver.requests]


def test_a_failing_partner_alerts_once_and_recovers_once(engine: Engine, sim: PartnerSimulator, receiver: WebhookReceiver) -> None:
    runner, _ = wire(engine, sim, receiver)
    sim.faults.fail_next(100, status=503)
    first = runner.sync("b")
    runner.sync("b")  # still failing: no second alert
    assert messages(receiver) == [("sync_failed:b", "firing")]
    alert = receiver.requests[0]["json"]
    assert alert["partner"] == "b" and alert["run_id"] == str(first.run_id)
    assert "sync failed (network)" in alert["text"] and "FIRING since" in alert["text"]

    sim.faults.clear()
    assert runner.sync("b").ok
    runner.sync("b")
    assert messages(receiver) == [("sync_failed:b", "firing"), ("sync_failed:b", "resolved")]

    sim.faults.fail_next(100, status=500)
    runner.sync("b")  # a new incident after recovery is announced again
    assert messages(receiver)[-1] == ("sync_failed:b", "firing")


def test_a_rejected_key_is_its_own_alert(engine: Engine, sim: PartnerSimulator, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, _ = wire(engine, sim, receiver)
    monkeypatch.setenv("IMAGING_SYNC_TEST_PARTNER_KEY", "not-the-key")
    runner.sync("b")
    assert messages(receiver) == [("partner_auth:b", "firing")]
    assert "not-the-key" not in receiver.requests[0]["json"]["text"]


def test_too_many_rejected_items_alert(engine: Engine, sim: PartnerSimulator, receiver: WebhookReceiver) -> None:
    runner, _ = wire(engine, sim, receiver, rejected_share=0.1)
    for n in range(3):
        sim.dataset.inject_raw({"id": f"bad-{n}", "updated_at": "2026-01-01T00:00:00Z", "study_instance_uid": "1.02"}, sort_id=f"bad-{n}")
    assert runner.sync("b").ok
    assert messages(receiver) == [("rejected_share:b", "firing")]
    assert "3 of 9 items rejected" in receiver.requests[0]["json"]["text"]


def test_outbox_backlog_and_stale_partner_checks(engine: Engine, sim: PartnerSimulator, receiver: WebhookReceiver) -> None:
    runner, alerts = wire(engine, sim, receiver, outbox_max_age_minutes=5, partner_stale_hours=1)
    assert runner.sync("b").ok  # writes pending outbox events, nobody relays them
    alerts.check(now=utcnow() + dt.timedelta(minutes=1))
    assert messages(receiver) == []
    later = utcnow() + dt.timedelta(hours=2)
    alerts.check(now=later)
    alerts.check(now=later)
    assert sorted(messages(receiver)) == [("outbox_backlog", "firing"), ("partner_stale:b", "firing")]
    with engine.begin() as conn:
        conn.execute(OutboxEvent.__table__.update().values(status="done"))
    assert runner.sync("b").ok
    alerts.check()
    assert sorted(messages(receiver)[2:]) == [("outbox_backlog", "resolved"), ("partner_stale:b", "resolved")]


def test_no_backlog_alert_without_an_outbox_sink_even_for_events_left_from_before(engine: Engine, sim: PartnerSimulator, receiver: WebhookReceiver) -> None:
    runner, _ = wire(engine, sim, receiver)
    assert runner.sync("b").ok  # events written while a sink was configured, never relayed
    _, alerts = wire(engine, sim, receiver, sink=False, outbox_max_age_minutes=5)
    alerts.check(now=utcnow() + dt.timedelta(hours=2))
    assert ("outbox_backlog", "firing") not in messages(receiver)


def test_an_unreachable_alert_webhook_is_retried_later(engine: Engine, sim: PartnerSimulator, receiver: WebhookReceiver) -> None:
    runner, alerts = wire(engine, sim, receiver)
    receiver.fail_next(1)
    sim.faults.fail_next(100)
    runner.sync("b")
    assert messages(receiver) == []
    alerts.flush()
    assert messages(receiver) == [("sync_failed:b", "firing")]
