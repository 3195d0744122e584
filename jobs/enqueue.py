"""``imaging-sync sync --async``: queue syncs for the workers (entry point ``imaging_sync.hooks:enqueue_sync``)."""

from __future__ import annotations

import click
from kombu.exceptions import OperationalError as BrokerError

from imaging_sync.config import Settings
from imaging_sync.errors import ConfigError, ImagingSyncError
from jobs.app import broker_for_humans, create_app
from imaging_sync.task_names import SYNC_PARTNER


class BrokerUnavailableError(ImagingSyncError):
    """The Celery broker could not be reached to queue a task."""

    kind = "network"


def enqueue_sync(settings: Settings, partners: list[str], full: bool, study_id: str | None) -> list[str]:
    """Queue one ``sync_partner`` task per partner (none named: every enabled one); one line per task."""
    if study_id is not None and (len(partners) != 1 or full):
        raise click.UsageError("--study needs exactly one --partner and no --full")
    names = list(partners) or [p.name for p in sorted(settings.partners.values(), key=lambda p: (-p.priority, p.name)) if p.enabled]
    if not names:
        raise ConfigError("partners", "no partners configured: add a [partners.NAME] section (see README)")
    for name in names:
        settings.partner(name)  # fail on a typo before queueing anything
    # Only a producer: the workers store the results; subscribing to them here would need the backend up too.
    app = create_app(settings, result_backend=None)
    try:
        task = app.tasks[SYNC_PARTNER]
        lines = []
        for name in names:
            try:
                queued = task.apply_async(kwargs={"name": name, "full": full, "study_id": study_id})
            except BrokerError as exc:
                raise BrokerUnavailableError(f"cannot reach the Celery broker at {broker_for_humans(app)} ({settings.jobs.broker_url_key}): {exc}") from None
            what = f"refresh of study {study_id} of partner {name}" if study_id else f"{'full ' if full else ''}sync of partner {name}"
            lines.append(f"queued {what}: task {queued.id}")
        return lines
    finally:
        app.close()
