"""``imaging-sync outbox …``: what an operator needs when downstream is not hearing about changes."""

from __future__ import annotations

import uuid

import click

from app.cli_support import cli_actor, pass_core
from imaging_sync.audit import AuditEvent, record_now
from imaging_sync.core import Core
from imaging_sync.outbox import relay


@click.group()
def outbox() -> None:
    """The transactional outbox (events told downstream)."""


@outbox.command("status")
@click.option("--recent", default=10, show_default=True, type=click.IntRange(0, 1000), help="How many recent failures to show.")
@pass_core
def outbox_status(core: Core, recent: int) -> None:
    """Counts by status, the oldest undelivered event's age, the latest failures."""
    report = relay.status(core.engine, recent=recent)
    if not core.settings.outbox.has_sink:
        click.echo("no sink configured ([outbox.webhook] or outbox.celery_task): the sync writes no change events")
    click.echo("  ".join(f"{name}: {count}" for name, count in report.counts.items()))
    age = report.oldest_pending_age()
    click.echo(f"oldest undelivered: {'none' if age is None else f'{int(age.total_seconds())}s old (since {report.oldest_pending_at:%Y-%m-%d %H:%M:%SZ})'}")
    for failure in report.recent_failures:
        click.echo(f"failed {failure['id']} {failure['event_type']} study {failure['aggregate_id']} after {failure['attempts']} attempts: {failure['last_error']}")


@outbox.command("retry-failed")
@click.option("--id", "ids", multiple=True, type=click.UUID, help="Only these event ids (repeatable); default: every failed event.")
@pass_core
def outbox_retry_failed(core: Core, ids: tuple[uuid.UUID, ...]) -> None:
    """Put failed events back in the queue (attempts reset)."""
    count = relay.retry_failed(core.engine, list(ids) or None)
    record_now(core.engine, AuditEvent(channel="cli", actor=cli_actor(), action="outbox_retry_failed", outcome="success",
                                       resource_type="outbox", detail={"ids": [str(i) for i in ids], "count": count}))
    click.echo(f"{count} failed events queued again")
