"""The Celery internals our code reads, pinned: a Celery upgrade that moves them fails here, loudly, first.

pyproject.toml caps Celery below the next minor release for the same reason;
lifting the cap starts with this file.
"""

from __future__ import annotations

import datetime as dt

from celery import Celery, current_app
from celery.schedules import crontab

from jobs.schedule import next_run_after


def test_a_crontab_keeps_the_fields_it_was_built_from() -> None:
    """jobs.schedule.next_run_after rebuilds a crontab from its ``_orig_*`` fields to ask it about another moment."""
    cron = crontab(minute="5", hour="6,18", day_of_week="mon-fri", day_of_month="*", month_of_year="*")
    fields = (cron._orig_minute, cron._orig_hour, cron._orig_day_of_week, cron._orig_day_of_month, cron._orig_month_of_year)
    assert fields == ("5", "6,18", "mon-fri", "*", "*")
    moment = dt.datetime(2026, 12, 3, 7, 0, tzinfo=dt.UTC)  # a Thursday
    assert next_run_after(cron, moment) == dt.datetime(2026, 12, 3, 18, 5, tzinfo=dt.UTC)


def test_the_current_app_proxy_still_hands_out_the_app_behind_it() -> None:
    """jobs.app closes a worker's runtime at shutdown through ``current_app._get_current_object()``."""
    app = current_app._get_current_object()
    assert isinstance(app, Celery) and app is current_app._get_current_object()
