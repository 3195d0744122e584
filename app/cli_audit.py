"""`imaging-sync audit …`: seal the audit log, verify it, archive and restore whole months.

``verify`` is what an inspection asks for: it recomputes every seal from the
rows now in the database and names the first row changed, removed or
inserted out of order, and with ``--outside`` compares each seal with its
copy in ``[audit] seal_bucket``. Exit code 0 when everything matches, 1 when
anything does not (the problems on standard output, one a line).
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import click

from app.cli_support import CliContext, pass_ctx
from imaging_sync import audit_seals
from imaging_sync.errors import ConfigError

EXIT_PROBLEMS = 1
SHOWN = 50  # problems printed one a line; the rest are counted


@click.group("audit")
def audit() -> None:
    """The audit log: seals (tamper evidence), verification, monthly archives."""


def _copies(ctx: CliContext) -> audit_seals.SealCopies | None:
    """The seal copies' store ([audit] seal_bucket), or None when unset."""
    settings = ctx.settings
    if settings.audit.seal_bucket is None:
        return None
    from storage.audit_store import AuditObjectStore
    from storage.registry import BucketRegistry

    if settings.audit.seal_bucket not in settings.storage.buckets:
        raise ConfigError("audit.seal_bucket", f"{settings.audit.seal_bucket!r} is not a bucket of [storage.buckets]")
    return AuditObjectStore(BucketRegistry(settings.storage), settings.audit.seal_bucket, settings.audit.seal_prefix,
                            retention_years=settings.audit.retention_years)


@audit.command("seal")
@pass_ctx
def seal(ctx: CliContext) -> None:
    """Seal the rows written since the last seal now (the seal-audit job does this every [audit] seal_interval_seconds)."""
    engine = ctx.ready_core.engine
    result = audit_seals.seal_through_now(engine)
    copies = _copies(ctx)
    copied = audit_seals.copy_out(engine, copies) if copies is not None else 0
    if result.busy:
        click.echo("another sealer is running; nothing done")
        return
    for made in result.seals:
        click.echo(f"seal {made.seal_no}: {made.row_count} rows of {made.month:%Y-%m}")
    if not result.seals:
        click.echo("nothing new to seal")
    if copied:
        click.echo(f"{copied} seal(s) copied to {ctx.settings.audit.seal_bucket}")


@audit.command("verify")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Start at the first seal made on or after this day (UTC); the seal before it is trusted as the anchor.")
@click.option("--outside/--no-outside", default=None,
              help="Also compare each seal with its copy in [audit] seal_bucket (default: when the bucket is set).")
@pass_ctx
def verify(ctx: CliContext, since: dt.datetime | None, outside: bool | None) -> None:
    """Recompute every seal and name the first row changed, removed or inserted out of order (exit 1 if any)."""
    engine = ctx.ready_core.engine
    copies = _copies(ctx) if outside is not False else None
    if outside and copies is None:
        raise ConfigError("audit.seal_bucket", "--outside needs [audit] seal_bucket")
    outside_seals = audit_seals.copies_outside(copies) if copies is not None else None
    start = since.replace(tzinfo=dt.UTC) if since is not None else None
    report = audit_seals.verify(engine, since=start, outside=outside_seals)
    where = f" and their copies in {ctx.settings.audit.seal_bucket}" if outside_seals is not None else ""
    if report.ok:
        click.echo(f"audit log verified: {report.seals} seals over {report.rows} rows match{where}; {report.unsealed} rows not sealed yet")
        return
    click.echo(f"audit log NOT verified: {len(report.problems)} problem(s) in {report.seals} seals over {report.rows} rows{where}")
    for problem in report.problems[:SHOWN]:
        click.echo(f"  {problem.describe()}")
    if len(report.problems) > SHOWN:
        click.echo(f"  … and {len(report.problems) - SHOWN} more")
    sys.exit(EXIT_PROBLEMS)



@audit.command("atna-send")
@pass_ctx
def atna_send(ctx: CliContext) -> None:
    """Send the sealed audit log to the Audit Record Repository now ([audit.atna]; the relay-atna job does this on its interval).

    Exit 1 when a delivery failed: the position stays, and the next run sends the same seals again.
    """
    from imaging_sync.atna.relay import relay_for

    config = ctx.settings.audit.atna
    if config is None:
        raise ConfigError("audit.atna", "not configured: set [audit.atna] host (and transport) to send DICOM audit messages")
    result = relay_for(ctx.ready_core.engine, config).run_until_idle(force=True)
    click.echo(f"atna: {result.seals} seals, {result.reports} entries, {result.messages} messages sent over {config.transport} to "
               f"{config.host}:{config.effective_port}; {result.abandoned} operations with no end sent as failures; position: seal {result.cursor}")
    if result.error is not None:
        click.echo(f"atna: delivery failed, position unchanged: {result.error}")
        sys.exit(EXIT_PROBLEMS)


def _archive_store(ctx: CliContext) -> Any:
    """The archive bucket's store ([audit] archive_bucket); a ConfigError naming the key when unset."""
    settings = ctx.settings
    bucket = settings.audit.archive_bucket
    if bucket is None:
        raise ConfigError("audit.archive_bucket", "archiving needs a registered bucket for the archived months")
    if bucket not in settings.storage.buckets:
        raise ConfigError("audit.archive_bucket", f"{bucket!r} is not a bucket of [storage.buckets]")
    from storage.audit_store import AuditObjectStore
    from storage.registry import BucketRegistry

    return AuditObjectStore(BucketRegistry(settings.storage), bucket, settings.audit.archive_prefix, retention_years=settings.audit.retention_years)


def _owner_engine(ctx: CliContext) -> Any:
    """The owning role's connection (database.url): detaching and dropping partitions is the owner's alone."""
    from imaging_sync.db.engine import create_db_engine

    return create_db_engine(ctx.settings.database, "migrate")


@audit.command("archive")
@click.option("--before", "before_text", required=True, metavar="YYYY-MM", help="Archive every month before this one (not younger than [audit] online_months).")
@click.option("--dry-run", is_flag=True, help="Only list the months that would be archived.")
@pass_ctx
def archive(ctx: CliContext, before_text: str, dry_run: bool) -> None:
    """Export whole months to [audit] archive_bucket, check the upload against the seals, then drop them (PostgreSQL; run as the owner)."""
    from imaging_sync import audit_archive

    before = audit_archive.parse_month(before_text)
    ctx.ready_core  # noqa: B018 (the schema is current, or exit 4 with the fix)
    engine = _owner_engine(ctx)
    with engine.connect() as conn:
        months = audit_archive.archivable(conn, before, online_months=ctx.settings.audit.online_months)
    if not months:
        click.echo(f"no month before {before:%Y-%m} is left in the database")
        return
    if dry_run:
        click.echo("would archive: " + ", ".join(f"{m:%Y-%m}" for m in months))
        return
    store = _archive_store(ctx)
    for month in months:
        result = audit_archive.archive_month(engine, store, month)
        click.echo(f"{month:%Y-%m}: {sum(result.rows.values())} rows and {len(result.seals)} seals archived to {result.location}; partitions dropped")


@audit.command("restore")
@click.option("--month", "month_text", required=True, metavar="YYYY-MM", help="The archived month to put back.")
@pass_ctx
def restore(ctx: CliContext, month_text: str) -> None:
    """Put an archived month back from [audit] archive_bucket and verify it against its seals (exit 1 if it does not match)."""
    from imaging_sync import audit_archive

    month = audit_archive.parse_month(month_text)
    ctx.ready_core  # noqa: B018 (the schema is current, or exit 4 with the fix)
    report = audit_archive.restore_month(_owner_engine(ctx), _archive_store(ctx), month)
    if not report.ok:
        click.echo(f"{month:%Y-%m} restored but NOT verified:")
        for problem in report.problems[:SHOWN]:
            click.echo(f"  {problem.describe()}")
        sys.exit(EXIT_PROBLEMS)
    click.echo(f"{month:%Y-%m} restored: {report.rows} rows in {report.seals} seals, verified")


__all__ = ["audit"]
