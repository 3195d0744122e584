"""Alerts: one message when an incident opens, one when it clears, never one per retry.

Incidents are rows of ``alert_state`` keyed by what is wrong and where
(``sync_failed:b``, ``partner_auth:b``, ``rejected_share:b``,
``partner_stale:b``, ``outbox_backlog``). Opening, notifying and resolving
are conditional updates, so several workers evaluating the same facts send
each message once. A notification that could not be sent is retried at the
next evaluation. Messages name the partner, what failed, since when and the
run to look at; they never carry patient data.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
from sqlalchemy import Engine, RowMapping, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from imaging_sync.config import AlertsConfig, Settings, read_secret
from imaging_sync.db.models import AlertState, PartnerState, SyncRun, table_of, utcnow
from imaging_sync.errors import PartnerAuthError
from imaging_sync.outbox import relay as outbox_relay
from imaging_sync.statuses import RunStatus
from imaging_sync.sync.runner import RunResult

log = logging.getLogger(__name__)
_alerts = table_of(AlertState)


@dataclass(frozen=True)
class AlertMessage:
    key: str
    kind: str
    state: str  # firing | resolved
    partner: str | None
    since: dt.datetime
    text: str
    run_id: uuid.UUID | None = None


class Notifier(Protocol):
    def send(self, message: AlertMessage) -> None: ...


class WebhookNotifier:
    """Slack incoming webhooks take ``{"text": …}``; the generic webhook gets the fields too."""

    def __init__(self, url: str, *, slack: bool, timeout: float) -> None:
        self._url = url
        self._slack = slack
        self._client = httpx.Client(timeout=timeout)

    def send(self, message: AlertMessage) -> None:
        body: dict[str, object] = {"text": message.text}
        if not self._slack:
            body.update(key=message.key, kind=message.kind, state=message.state, partner=message.partner,
                        since=message.since.isoformat(), run_id=str(message.run_id) if message.run_id else None)
        response = self._client.post(self._url, json=body)
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"alert webhook answered HTTP {response.status_code}")


def notifiers_from(config: AlertsConfig, environ: Mapping[str, str] | None = None) -> list[Notifier]:
    environ = os.environ if environ is None else environ
    found: list[Notifier] = []
    for slack, env_key, file_key in ((True, "slack_webhook_url_env", "slack_webhook_url_file"), (False, "webhook_url_env", "webhook_url_file")):
        url = _secret_value(config, env_key, file_key, environ)
        if url:
            found.append(WebhookNotifier(url, slack=slack, timeout=config.timeout_seconds))
    return found


def _secret_value(config: AlertsConfig, env_key: str, file_key: str, environ: Mapping[str, str]) -> str | None:
    secret = read_secret(f"alerts.{env_key.removesuffix('_env')}", getattr(config, env_key), getattr(config, file_key), environ)
    return None if secret is None else secret.reveal()


class Alerts:
    """Evaluates facts (finished runs, periodic checks) into incidents and messages."""

    def __init__(self, engine: Engine, settings: Settings, notifiers: Sequence[Notifier]) -> None:
        self.engine = engine
        self.settings = settings
        self.config = settings.alerts
        self.notifiers = list(notifiers)

    # -- facts ----------------------------------------------------------------

    def on_run(self, result: RunResult) -> None:
        """A runner observer: called with every finished sync run."""
        partner = result.partner
        if result.status == RunStatus.FAILED:
            if result.error_kind == PartnerAuthError.kind:
                self._fire(f"partner_auth:{partner}", "partner_auth", partner, f"partner {partner}: the partner refused our API key — {result.error}", result.run_id)
            else:
                self._fire(f"sync_failed:{partner}", "sync_failed", partner, f"partner {partner}: sync failed ({result.error_kind}) — {result.error}", result.run_id)
        elif result.status == RunStatus.SUCCEEDED:
            self._clear(f"partner_auth:{partner}", f"partner {partner}: the API key is accepted again", result.run_id)
            self._clear(f"sync_failed:{partner}", f"partner {partner}: sync succeeded again", result.run_id)
            fetched, rejected = result.counts["fetched"], result.counts["rejected"]
            share = rejected / fetched if fetched else 0.0
            if share > self.config.rejected_share:
                self._fire(f"rejected_share:{partner}", "rejected_share", partner,
                           f"partner {partner}: {rejected} of {fetched} items rejected ({share:.0%}, threshold {self.config.rejected_share:.0%}); "
                           f"see `imaging-sync rejected list --run {result.run_id}`",
                           result.run_id)
            elif fetched:
                self._clear(f"rejected_share:{partner}", f"partner {partner}: rejected items back under {self.config.rejected_share:.0%}", result.run_id)
        self.flush()

    def check(self, now: dt.datetime | None = None) -> None:
        """Periodic facts: outbox backlog age and partners not synced for too long."""
        now = now or utcnow()
        # With no sink no events are written; any left from before would wait for ever, so no backlog alert.
        oldest = outbox_relay.status(self.engine, recent=0).oldest_pending_at if self.settings.outbox.has_sink else None
        limit = dt.timedelta(minutes=self.config.outbox_max_age_minutes)
        if oldest is not None and now - oldest > limit:
            self._fire("outbox_backlog", "outbox_backlog", None, f"outbox: oldest undelivered event is {_age(now - oldest)} old (threshold {_age(limit)}); see `imaging-sync outbox status`", None)
        else:
            self._clear("outbox_backlog", "outbox: backlog delivered", None)
        stale = dt.timedelta(hours=self.config.partner_stale_hours)
        with self.engine.connect() as conn:
            last_success = dict(conn.execute(select(PartnerState.partner, PartnerState.last_success_at)).all())
            first_run = dict(conn.execute(select(SyncRun.partner, func.min(SyncRun.started_at)).group_by(SyncRun.partner)).all())
        for name, partner in self.settings.partners.items():
            if not partner.enabled:
                continue
            reference = last_success.get(name) or first_run.get(name)
            if reference is not None and reference.tzinfo is None:
                reference = reference.replace(tzinfo=dt.UTC)
            if reference is not None and now - reference > stale:
                what = f"last successful sync {_age(now - reference)} ago" if last_success.get(name) else f"never synced successfully (first attempt {_age(now - reference)} ago)"
                self._fire(f"partner_stale:{name}", "partner_stale", name, f"partner {name}: {what} (threshold {_age(stale)})", None)
            elif last_success.get(name) is not None:
                self._clear(f"partner_stale:{name}", f"partner {name}: synced successfully again", None)
        self.flush()

    # -- incidents ----------------------------------------------------------------

    def _fire(self, key: str, kind: str, partner: str | None, text: str, run_id: uuid.UUID | None) -> None:
        now = utcnow()
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert)(_alerts)
        with self.engine.begin() as conn:
            conn.execute(insert.values(key=key, kind=kind, partner=partner, opened_at=now, last_seen_at=now, message=text, run_id=run_id).on_conflict_do_nothing(index_elements=["key"]))
            # Re-open a resolved incident as a new one; refresh an open one without re-notifying.
            conn.execute(
                update(_alerts).where(_alerts.c.key == key, _alerts.c.resolved_at.is_not(None))
                .values(opened_at=now, resolved_at=None, notified_at=None, recovery_notified_at=None, message=text, run_id=run_id)
            )
            conn.execute(update(_alerts).where(_alerts.c.key == key).values(last_seen_at=now))

    def _clear(self, key: str, text: str, run_id: uuid.UUID | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(_alerts).where(_alerts.c.key == key, _alerts.c.resolved_at.is_(None))
                .values(resolved_at=utcnow(), message=text, run_id=run_id if run_id else _alerts.c.run_id)
            )

    def flush(self) -> None:
        """Send what is due: firing incidents not yet announced, resolutions of announced ones."""
        if not self.notifiers:
            return
        with self.engine.connect() as conn:
            unsent_opening = _alerts.c.notified_at.is_(None) & _alerts.c.resolved_at.is_(None)
            unsent_recovery = _alerts.c.resolved_at.is_not(None) & _alerts.c.notified_at.is_not(None) & _alerts.c.recovery_notified_at.is_(None)
            rows = conn.execute(select(_alerts).where(unsent_opening | unsent_recovery)).mappings().all()
        for row in rows:
            firing = row["resolved_at"] is None
            column = _alerts.c.notified_at if firing else _alerts.c.recovery_notified_at
            with self.engine.begin() as conn:  # claim the message: only one process sends it
                claimed = conn.execute(update(_alerts).where(_alerts.c.key == row["key"], column.is_(None), _alerts.c.opened_at == row["opened_at"]).values({column: utcnow()})).rowcount
            if not claimed:
                continue
            message = self._message(row, firing)
            try:
                for notifier in self.notifiers:
                    notifier.send(message)
            except Exception as exc:  # give the message back: the next evaluation retries it
                log.warning("alert %s could not be sent: %s", row["key"], exc)
                with self.engine.begin() as conn:
                    conn.execute(update(_alerts).where(_alerts.c.key == row["key"]).values({column: None}))

    @staticmethod
    def _message(row: RowMapping, firing: bool) -> AlertMessage:
        since: dt.datetime = row["opened_at"]
        stamp = since.strftime("%Y-%m-%d %H:%M UTC")
        run = f" Run: {row['run_id']} (`imaging-sync runs show {row['run_id']}`)." if row["run_id"] else ""
        prefix = f"[imaging-sync] FIRING since {stamp}: " if firing else f"[imaging-sync] RESOLVED (was failing since {stamp}): "
        return AlertMessage(key=str(row["key"]), kind=str(row["kind"]), state="firing" if firing else "resolved", partner=row["partner"],
                            since=since, text=prefix + str(row["message"]) + run, run_id=row["run_id"])


def _age(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
