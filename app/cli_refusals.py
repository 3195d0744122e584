"""``imaging-sync refusals``: who is knocking without credentials, for the operator on call.

Unauthenticated refusals (HTTP 401s, associations of DICOM peers we do not
know) are counted per client address and minute (:mod:`imaging_sync.audit_refusals`),
not written as audit entries. By default: the addresses refused most in the
last hour, with their peak minute, so that a flood and its source show at a
glance; ``--addr`` shows one address minute by minute with what it tried.
Like reading the audit log over the API, reading it here is recorded.
"""

from __future__ import annotations

import datetime as dt

import click

from app.cli_support import cli_actor, pass_core
from imaging_sync import audit_refusals
from imaging_sync.audit import AuditEvent, record_now
from imaging_sync.core import Core
from imaging_sync.db.models import utcnow


@click.command("refusals")
@click.option("--minutes", default=60, show_default=True, type=click.IntRange(1, 60 * 24 * 31), help="How far back to look.")
@click.option("--addr", "client_addr", help="One client address: its refusals minute by minute, with what it tried.")
@click.option("--channel", type=click.Choice(audit_refusals.CHANNELS), help="Only HTTP (401s) or DICOM (unknown calling AEs).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000), help="Rows to show.")
@pass_core
def refusals(core: Core, minutes: int, client_addr: str | None, channel: str | None, limit: int) -> None:
    """Unauthenticated refusals (401s, unknown DICOM peers): the addresses refused most, or one address by minute."""
    since = utcnow() - dt.timedelta(minutes=minutes)
    with core.engine.connect() as conn:
        if client_addr is None:
            totals = audit_refusals.totals(conn, since=since, channel=channel, limit=limit)
        else:
            rows = audit_refusals.search(conn, since=since, client_addr=client_addr, channel=channel, limit=limit)
    record_now(core.engine, AuditEvent(
        channel="cli", actor=cli_actor(), action="read_audit", outcome="success", resource_type="audit_refusal",
        query={"minutes": minutes, "addr": client_addr, "channel": channel, "limit": limit},
    ))
    if client_addr is None:
        if not totals:
            click.echo(f"no unauthenticated refusals in the last {minutes} minutes")
            return
        _table(["channel", "address", "refusals", "minutes", "peak/min", "first", "last"], [
            [t.channel, t.client_addr or "(unknown)", str(t.count), str(t.minutes), str(t.peak), _fmt(t.first_at), _fmt(t.last_at)] for t in totals
        ])
        return
    if not rows:
        click.echo(f"no unauthenticated refusals from {client_addr} in the last {minutes} minutes")
        return
    _table(["minute", "channel", "refusals", "first", "last", "tried (sample)"], [
        [_fmt(r["minute"]), r["channel"], str(r["count"]), _fmt(r["first_at"]), _fmt(r["last_at"]), "; ".join(r["sample"])] for r in rows
    ])


def _fmt(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ")


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
