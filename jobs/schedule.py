"""The periodic schedule, as a pure function of the settings.

:func:`build_beat_schedule` returns Celery's ``beat_schedule`` dict: each
enabled partner's sync on its crontab (``[partners.NAME] schedule`` or
``jobs.default_schedule``, read in ``jobs.timezone``), the outbox relay and
the alerts check on intervals, and a daily prune. Celery beat runs it; the
embedded scheduler (:mod:`jobs.embedded`) runs the very same entries in-process.

Overlap is harmless by construction: two beats (or a late tick and a slow
run) may queue two syncs of one partner, and the runner's database lock makes
the second end ``skipped``, recorded. Each scheduled sync also ``expires``
after the shortest gap between two of its ticks, so a backlog of missed
ticks (workers down for a day) collapses into at most one queued sync per
partner instead of a pile.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import crontab, schedule

from imaging_sync.config import PartnerConfig, Settings, crontab_fields
from imaging_sync.task_names import CHECK_ALERTS, PRUNE, RELAY_ATNA, RELAY_OUTBOX, SEAL_AUDIT, SYNC_PARTNER

# The daily prune, in jobs.timezone: early morning, away from the default 06:00/18:00 syncs.
PRUNE_CRONTAB = "30 3 * * *"
SCHEDULE_TRIGGER = "schedule"  # sync_run.trigger of scheduled runs

NowFun = Callable[[], dt.datetime]


class ZonedCrontab(crontab):  # type: ignore[misc]  # Celery ships no type information: crontab is Any
    """Celery's crontab, read in a time zone of its own rather than the app's.

    The schedule must mean the same thing under Celery beat (whose app has
    ``timezone`` set too) and under the embedded scheduler (no app at all), so
    the zone travels with the crontab. Parsing and next-run arithmetic are
    Celery's; only ``tz`` and pickling (beat's shelve file) differ.
    """

    def __init__(self, minute: Any = "*", hour: Any = "*", day_of_week: Any = "*", day_of_month: Any = "*",
                 month_of_year: Any = "*", *, zone: str = "UTC", **kwargs: Any) -> None:
        self.zone = zone
        super().__init__(minute, hour, day_of_week, day_of_month, month_of_year, **kwargs)

    @classmethod
    def from_expression(cls, expression: str, zone: str, nowfun: NowFun | None = None) -> ZonedCrontab:
        """``"m h dom mon dow"`` (validated by the config already) in ``zone``."""
        return cls(*crontab_fields(expression), zone=zone, nowfun=nowfun)

    @property
    def tz(self) -> dt.tzinfo:
        return ZoneInfo(self.zone)

    def __reduce__(self) -> tuple[Any, ...]:
        cls, fields, kwargs = super().__reduce__()
        return cls, fields, {**kwargs, "zone": self.zone}

    def __setstate__(self, state: Any) -> None:
        state = dict(state)
        self.zone = state.pop("zone", "UTC")
        super().__setstate__(state)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ZonedCrontab) and other.zone != self.zone:
            return False
        equal: bool = super().__eq__(other)  # crontab's own comparison (untyped)
        return equal

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value like crontab

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} {self.zone}>"


def partner_crontab(settings: Settings, partner: PartnerConfig, nowfun: NowFun | None = None) -> ZonedCrontab:
    """The partner's sync schedule: its own crontab or ``jobs.default_schedule``, in ``jobs.timezone``."""
    return ZonedCrontab.from_expression(partner.schedule or settings.jobs.default_schedule, settings.jobs.timezone, nowfun)


def next_run_after(cron: crontab, moment: dt.datetime) -> dt.datetime:
    """The first tick of ``cron`` strictly after ``moment`` (aware), in the crontab's zone."""
    probe = ZonedCrontab(cron._orig_minute, cron._orig_hour, cron._orig_day_of_week, cron._orig_day_of_month,
                         cron._orig_month_of_year, zone=getattr(cron, "zone", "UTC"), nowfun=lambda: moment)
    remaining: dt.timedelta = probe.remaining_estimate(moment)  # Celery's arithmetic (untyped)
    return (moment + remaining).astimezone(probe.tz)


def next_run_times(cron: crontab, moment: dt.datetime, count: int) -> list[dt.datetime]:
    """The next ``count`` ticks after ``moment``."""
    found: list[dt.datetime] = []
    for _ in range(count):
        moment = next_run_after(cron, moment)
        found.append(moment)
    return found


def shortest_gap(cron: crontab, samples: int = 64) -> dt.timedelta:
    """The shortest time between two consecutive ticks, over the next ``samples`` ticks from a fixed date."""
    zone = ZoneInfo(getattr(cron, "zone", "UTC"))
    ticks = next_run_times(cron, dt.datetime(2024, 1, 1, tzinfo=zone), samples)
    return min(b - a for a, b in itertools.pairwise(ticks))


def build_beat_schedule(settings: Settings, nowfun: NowFun | None = None) -> dict[str, dict[str, Any]]:
    """Celery ``beat_schedule`` for these settings (``nowfun``: a clock for the embedded scheduler and tests)."""
    jobs = settings.jobs
    entries: dict[str, dict[str, Any]] = {}
    for partner in settings.enabled_partners():
        cron = partner_crontab(settings, partner, nowfun)
        entries[f"sync-partner-{partner.name}"] = {
            "task": SYNC_PARTNER,
            "schedule": cron,
            "kwargs": {"name": partner.name, "trigger": SCHEDULE_TRIGGER},
            "options": {"expires": shortest_gap(cron).total_seconds()},
        }
    if settings.outbox.has_sink:  # with no sink the sync writes no events: nothing to relay
        entries["relay-outbox"] = {
            "task": RELAY_OUTBOX,
            "schedule": schedule(dt.timedelta(seconds=jobs.outbox_relay_seconds), nowfun=nowfun),
            "options": {"expires": jobs.outbox_relay_seconds},
        }
    # Always: a seal is what makes a later change to the audit log visible (imaging_sync.audit_seals).
    entries["seal-audit"] = {
        "task": SEAL_AUDIT,
        "schedule": schedule(dt.timedelta(seconds=settings.audit.seal_interval_seconds), nowfun=nowfun),
        "options": {"expires": settings.audit.seal_interval_seconds},
    }
    atna = settings.audit.atna
    if atna is not None:  # the sealed audit log to the Audit Record Repository (imaging_sync.atna.relay)
        entries["relay-atna"] = {
            "task": RELAY_ATNA,
            "schedule": schedule(dt.timedelta(seconds=atna.interval_seconds), nowfun=nowfun),
            "options": {"expires": atna.interval_seconds},
        }
    entries["check-alerts"] = {
        "task": CHECK_ALERTS,
        "schedule": schedule(dt.timedelta(seconds=jobs.alerts_check_seconds), nowfun=nowfun),
        "options": {"expires": jobs.alerts_check_seconds},
    }
    entries["prune"] = {
        "task": PRUNE,
        "schedule": ZonedCrontab.from_expression(PRUNE_CRONTAB, jobs.timezone, nowfun),
        "kwargs": {"days": jobs.prune_days},
        "options": {"expires": dt.timedelta(days=1).total_seconds()},
    }
    return entries
