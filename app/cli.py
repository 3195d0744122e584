"""The ``imaging-sync`` command line (``python -m app`` is the same command).

Commands parse, call the core, print; the servers and workers are built by
:mod:`app.assembly` (``serve``, ``worker``, ``beat``: :mod:`app.cli_serve`). Errors are mapped to exit codes once,
in ``main``: 0 success, 1 a sync failed, 2 bad usage or configuration,
3 another process is syncing that partner, 4 the database is unreachable or
its schema is not current.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from app.cli_audit import audit
from app.cli_docs import docs
from app.cli_headers import headers
from app.cli_outbox import outbox
from app.cli_refusals import refusals
from app.cli_serve import beat, serve, worker
from app.cli_support import CliContext, cli_actor, pass_ctx
from app.demo import demo
from app.doctor import doctor
from app.viewer import viewer
from imaging_sync import apikeys as api_keys
from imaging_sync import audit as audit_log
from imaging_sync.audit import AuditEvent
from imaging_sync.catalog import operations as catalog
from imaging_sync.core import Core
from imaging_sync.db import migrate
from imaging_sync.db.engine import missing_sqlite_file
from imaging_sync.db.models import RejectedItem, SyncRun, utcnow
from imaging_sync.errors import ConfigError, DatabaseError, ImagingSyncError, NotFoundError, SyncLockedError, ValidationError
from imaging_sync.partners.wire import check_requested_id
from imaging_sync.sync.queue import SyncQueue
from imaging_sync.sync.runner import RunResult

EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_DATABASE = 1, 2, 3, 4



@click.group()
@click.option("--config", "config_path", envvar="IMAGING_SYNC_CONFIG", help="TOML config file (default: $IMAGING_SYNC_CONFIG, else ./imaging-sync.toml).")
@click.option("--verbose", "-v", is_flag=True, help="Also show libraries' log lines (Alembic, botocore, …) and INFO lines.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """imaging-sync: a federated index of partner imaging studies."""
    from_flag = ctx.get_parameter_source("config_path") is click.core.ParameterSource.COMMANDLINE
    ctx.obj = CliContext(config_path, config_flag=from_flag, verbose=verbose)


@cli.group("config")
def config_group() -> None:
    """The configuration file."""


@config_group.command("example")
def config_example() -> None:
    """Print a config file with every key, its default and what it does (docs/imaging-sync.example.toml)."""
    from imaging_sync.config_toml import render_example

    click.echo(render_example(), nl=False)


for command in (outbox, refusals, serve, worker, beat, doctor, demo, audit, docs, headers, viewer):
    cli.add_command(command)


# -- db ----------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_ctx
def db_upgrade(ctx: CliContext, revision: str) -> None:
    """Apply migrations (PostgreSQL or SQLite) as the owning role; then grant database.runtime_role what the services use."""
    settings = ctx.core.settings  # logging configured as for every command; the core's own engine is the services' role
    current, role = migrate.upgrade_database(settings.database, revision)
    if role is not None:
        click.echo(role.summary())
    click.echo(f"database at revision {current}")


@db.command("current")
@pass_ctx
def db_current(ctx: CliContext) -> None:
    """Show the schema revision and whether it is current (a missing SQLite file is not created)."""
    missing = missing_sqlite_file(ctx.core.engine)
    if missing is not None:
        click.echo(f"current: (no database: {missing} does not exist); code expects: {migrate.head_revision()}; run `imaging-sync db upgrade`")
        return
    current, head = migrate.current_revision(ctx.core.engine), migrate.head_revision()
    click.echo(f"current: {current or '(empty database)'}; code expects: {head}; {'up to date' if current == head else 'run `imaging-sync db upgrade`'}")


# -- sync ----------------------------------------------------------------------


@cli.command()
@click.option("--partner", "partners", multiple=True, help="Partner to sync (repeatable); default: every enabled partner.")
@click.option("--full", is_flag=True, help="Ignore the bookmark and re-read everything (unchanged items still cost no write).")
@click.option("--study", "study_id", help="Refresh only this study (the partner's id) now; needs one --partner.")
@click.option("--async", "queue", is_flag=True, help="Queue the sync for the workers instead of running it here.")
@click.option("--quiet", is_flag=True, help="No progress lines, only the summary.")
@pass_ctx
def sync(ctx: CliContext, partners: Sequence[str], full: bool, study_id: str | None, queue: bool, quiet: bool) -> None:
    """Pull changed studies from partners into the index."""
    if study_id is not None and (len(partners) != 1 or full):
        raise click.UsageError("--study needs exactly one --partner and no --full")
    if study_id is not None:
        try:
            check_requested_id(study_id, "--study")  # the same rule the API applies to a requested id
        except ValidationError as exc:
            raise click.BadParameter(exc.reason, param_hint="--study") from None
    settings = ctx.settings
    for name in partners:
        if name not in settings.partners:  # a typo fails before anything is synced or queued
            known = ", ".join(sorted(settings.partners)) or "none configured"
            raise click.BadParameter(f"no partner {name!r} in the config (known: {known})", param_hint="--partner")
    names = list(partners) or [p.name for p in settings.enabled_partners()]
    if not names:
        raise ConfigError("partners", "no partners configured: add a [partners.NAME] section (see README)")
    core = ctx.ready_core
    if queue:
        _queue_syncs(core, names, full=full, study_id=study_id)
        return
    if study_id is not None:
        result = core.runner.refresh_study(partners[0], study_id)
        click.echo(result.summary())
        _exit_for([result])
        return
    progress = None if quiet else _progress_printer()
    results = [core.runner.sync(name, full=full, progress=progress) for name in names]
    for result in results:
        click.echo(result.summary())
    _exit_for(results)


def _queue_syncs(core: Core, names: Sequence[str], *, full: bool, study_id: str | None) -> None:
    """``--async``: each sync queued for the workers with its run recorded ``queued`` (one line per run)."""
    queue = SyncQueue.on_broker(core.runner, core.settings.jobs.resolved_broker_url().reveal())
    try:
        for name in names:
            run_id = queue.queue(name, trigger="cli", full=full, study_id=study_id)
            what = f"refresh of study {study_id} of partner {name}" if study_id else f"{'full ' if full else ''}sync of partner {name}"
            click.echo(f"queued {what}: run {run_id} (`imaging-sync runs show {run_id}`)")
    finally:
        queue.close()


def _progress_printer() -> Callable[[RunResult], None]:
    last = {"at": 0.0}

    def show(result: RunResult) -> None:
        now = time.monotonic()
        if now - last["at"] < 1.0:
            return
        last["at"] = now
        c = result.counts
        rate = c["instances"] / result.seconds if result.seconds else 0.0
        click.echo(f"  {result.partner}: page {c['pages']}, {c['fetched']} studies, {c['instances']} instances ({rate:,.0f}/s), {c['rejected']} rejected", err=True)

    return show


def _exit_for(results: Sequence[RunResult]) -> None:
    if any(r.status == "failed" for r in results):
        sys.exit(EXIT_FAILED)
    if any(r.status == "skipped" for r in results):
        sys.exit(EXIT_LOCKED)


# -- partners, runs, rejected ------------------------------------------------------


@cli.group()
def partners() -> None:
    """Configured partners and their sync state."""


@partners.command("list")
@pass_ctx
def partners_list(ctx: CliContext) -> None:
    """Each partner: adapter, priority, enabled, base URL, bookmark, last run, last success."""
    core = ctx.ready_core
    with core.engine.connect() as conn:
        states = catalog.partner_states(conn, sorted(core.settings.partners))
    rows = []
    for name, partner in sorted(core.settings.partners.items()):
        state, run = states[name], states[name].last_run
        rows.append([
            name, partner.adapter, str(partner.priority), "yes" if partner.enabled else "no", partner.base_url,
            _fmt(state.bookmark),
            f"{run.status} {_fmt(run.started_at)}" if run else "-",
            _fmt(state.last_success_at),
        ])
    _table(["partner", "adapter", "priority", "enabled", "base url", "bookmark", "last run", "last success"], rows)


@cli.group()
def runs() -> None:
    """Sync run history."""


@runs.command("list")
@click.option("--partner")
@click.option("--status", type=click.Choice(catalog.RUN_STATUSES))
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@pass_ctx
def runs_list(ctx: CliContext, partner: str | None, status: str | None, limit: int) -> None:
    """The latest sync runs, newest first: status, duration and counts."""
    stmt = select(SyncRun).order_by(SyncRun.started_at.desc()).limit(limit)
    if partner:
        stmt = stmt.where(SyncRun.partner == partner)
    if status:
        stmt = stmt.where(SyncRun.status == status)
    with ctx.ready_core.sessions() as session:
        found = session.scalars(stmt).all()
    rows = [
        [str(r.id), r.partner, r.status, _fmt(r.started_at), _duration(r), str(r.fetched), str(r.created), str(r.updated), str(r.unchanged), str(r.deleted), str(r.rejected), (r.error_kind or "")]
        for r in found
    ]
    _table(["run", "partner", "status", "started", "took", "fetched", "created", "updated", "unchanged", "deleted", "rejected", "error"], rows)


@runs.command("show")
@click.argument("run_id", type=click.UUID)
@pass_ctx
def runs_show(ctx: CliContext, run_id: uuid.UUID) -> None:
    """One run in full: counts, timing, host, error (audited: an error's text can quote what a partner sent)."""
    core = ctx.ready_core
    with core.engine.connect() as conn:
        run, rejected = catalog.get_run(conn, run_id)
    _audit_before_printing(core, "read", "sync_run", resource_id=str(run.id), detail={"partner": run.partner, "has_error": run.error is not None})
    for label, value in [
        ("run", run.id), ("partner", run.partner), ("status", run.status), ("trigger", run.trigger), ("full", run.full),
        ("started", _fmt(run.started_at)), ("finished", _fmt(run.finished_at)), ("took", _duration(run)), ("since", _fmt(run.since)),
        ("pages", run.pages), ("fetched", run.fetched), ("created", run.created), ("updated", run.updated), ("unchanged", run.unchanged),
        ("deleted", run.deleted), ("rejected", f"{run.rejected} (see `imaging-sync rejected list --run {run.id}`: {rejected})"),
        ("instances", run.instances), ("host/pid", f"{run.host}/{run.pid}"), ("error kind", run.error_kind or "-"), ("error", run.error or "-"),
    ]:
        click.echo(f"{label:>10}: {value}")


@cli.group()
def rejected() -> None:
    """Partner items that broke the contract."""


@rejected.command("list")
@click.option("--partner")
@click.option("--run", "run_id", type=click.UUID)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--payload", is_flag=True, help="Also print each item's JSON (contains patient data).")
@pass_ctx
def rejected_list(ctx: CliContext, partner: str | None, run_id: uuid.UUID | None, limit: int, payload: bool) -> None:
    """Rejected items, newest first, with the reason (and with --payload the partner's JSON).

    Audited before anything is printed (the items listed; with --payload the
    indexed patients and studies the payloads show): if the entry cannot be
    written, nothing is printed and the command fails.
    """
    stmt = select(RejectedItem).order_by(RejectedItem.created_at.desc()).limit(limit)
    if partner:
        stmt = stmt.where(RejectedItem.partner == partner)
    if run_id:
        stmt = stmt.where(RejectedItem.run_id == run_id)
    core = ctx.ready_core
    with core.sessions() as session:
        found = session.scalars(stmt).all()
        subject_ids, study_ids = catalog.indexed_studies(session.connection(), [(i.partner, i.partner_item_id) for i in found]) if payload else ([], [])
    _audit_before_printing(
        core, "list", "rejected_item",
        detail={
            "payload": payload, "count": len(found), "partner": partner, "run": str(run_id) if run_id else None, "limit": limit,
            "newest": found[0].created_at.isoformat() if found else None, "oldest": found[-1].created_at.isoformat() if found else None,
            "items": [str(i.id) for i in found],
        },
        subject_ids=subject_ids, study_ids=study_ids,
    )
    if payload:
        for item in found:
            click.echo(f"{_fmt(item.created_at)} {item.partner} {item.partner_item_id or '(no id)'} [{item.kind}] {item.reason}\n  {item.payload}")
        return
    _table(["when", "partner", "partner id", "kind", "reason", "run"], [
        [_fmt(i.created_at), i.partner, i.partner_item_id or "(no id)", i.kind, i.reason, str(i.run_id)] for i in found
    ])


# -- apikeys: privileged, every action audited (channel "cli") -----------------------


@cli.group("apikeys")
def apikeys_group() -> None:
    """API keys of the REST API (roles: viewer, operator, auditor)."""


@apikeys_group.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(api_keys.ROLES), help="viewer: patient data and file URLs; operator: syncs; auditor: the audit log.")
@click.option("--expires-in-days", type=click.IntRange(1, 3650), help="Refuse the key after this many days (default: never).")
@pass_ctx
def apikeys_create(ctx: CliContext, name: str, role: str, expires_in_days: int | None) -> None:
    """Create a key; its token is printed once, on stdout, and cannot be shown again."""
    try:
        api_keys.check_new_key(name, role)
    except ValidationError as exc:
        raise click.BadParameter(exc.reason, param_hint=exc.path.upper()) from None
    core = ctx.ready_core
    expires_at = utcnow() + dt.timedelta(days=expires_in_days) if expires_in_days else None
    with core.engine.begin() as conn:  # the key and its audit entry commit together
        info, token = api_keys.create_key(conn, name, role, expires_at)
        audit_log.record(conn, AuditEvent(
            channel="cli", actor=cli_actor(), action="create_api_key", outcome="success", resource_type="api_key", resource_id=str(info.id),
            detail={"name": info.name, "role": role, "prefix": info.prefix, "expires_at": expires_at.isoformat() if expires_at else None},
        ))
    click.echo(token)
    click.echo(f"created {role} key {info.prefix} ({info.name}), {'expires ' + _fmt(expires_at) if expires_at else 'no expiry'}; keep the token now, it is not stored", err=True)


@apikeys_group.command("list")
@pass_ctx
def apikeys_list(ctx: CliContext) -> None:
    """Every key: prefix, name, role, status, when created, expires, last used (never the token)."""
    core = ctx.ready_core
    now = utcnow()
    with core.engine.begin() as conn:
        found = api_keys.list_keys(conn)
        audit_log.record(conn, AuditEvent(channel="cli", actor=cli_actor(), action="list_api_keys", outcome="success", resource_type="api_key", detail={"count": len(found)}))
    _table(["id", "prefix", "name", "role", "status", "created", "expires", "last used"], [
        [str(k.id), k.prefix, k.name, k.role, k.status(now), _fmt(k.created_at), _fmt(k.expires_at), _fmt(k.last_used_at)] for k in found
    ])


@apikeys_group.command("revoke")
@click.argument("key")
@pass_ctx
def apikeys_revoke(ctx: CliContext, key: str) -> None:
    """Revoke a key by id or prefix; every API worker refuses it within 5 seconds (each trusts a verified key that long)."""
    core = ctx.ready_core
    event = AuditEvent(channel="cli", actor=cli_actor(), action="revoke_api_key", outcome="success", resource_type="api_key", resource_id=key[:128])
    try:
        with core.engine.begin() as conn:
            info = api_keys.revoke_key(conn, key)
            audit_log.record(conn, dataclasses.replace(event, resource_id=str(info.id), detail={"prefix": info.prefix, "name": info.name}))
    except NotFoundError:
        audit_log.record_now(core.engine, dataclasses.replace(event, outcome="not_found"))
        raise
    click.echo(f"revoked {info.role} key {info.prefix} ({info.name}) at {_fmt(info.revoked_at)}")


# -- helpers and the single error edge ----------------------------------------------


def _audit_before_printing(
    core: Core, action: str, resource_type: str, *, resource_id: str | None = None, detail: dict[str, Any] | None = None,
    subject_ids: Sequence[uuid.UUID] = (), study_ids: Sequence[uuid.UUID] = (),
) -> None:
    """Record what a command is about to print, before it prints: audited before it leaves, or not given.

    If the entry cannot be written, :class:`~imaging_sync.errors.AuditUnavailableError`
    goes up to ``main`` (exit 1, its text names no value) and nothing is printed.
    """
    audit_log.record_now(
        core.engine,
        AuditEvent(channel="cli", actor=cli_actor(), action=action, outcome="success", resource_type=resource_type, resource_id=resource_id, detail=detail),
        subject_ids=subject_ids or None, study_ids=study_ids or None,
    )


def _fmt(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def _duration(run: SyncRun | catalog.RunRecord) -> str:
    """How long a run took: ``runs list`` has the ORM rows, ``runs show`` the catalog's record."""
    if run.finished_at is None:
        return "-"
    return f"{(run.finished_at - run.started_at).total_seconds():.1f}s"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    if not rows:
        click.echo("(none)")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: every deliberate error becomes a message and an exit code here."""
    try:
        cli.main(args=argv, prog_name="imaging-sync", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_FAILED)
    except SyncLockedError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_LOCKED)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except (DatabaseError, OperationalError) as exc:
        reason = exc.orig if isinstance(exc, OperationalError) else exc
        click.echo(f"error: database: {reason}".strip(), err=True)
        sys.exit(EXIT_DATABASE)
    except ImagingSyncError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
