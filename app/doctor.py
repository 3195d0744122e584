"""``imaging-sync doctor``: can this deployment reach and use everything it needs, right now?

One line per part, ``OK``, ``FAIL`` or ``SKIP`` (not applicable here, e.g. a
disabled partner), with the reason; exit 0 when nothing FAILs, 1 otherwise.
Written for the on-call engineer: each FAIL says what was tried, what
answered, and which config key or command is the next step. Checks:

- ``config``: the settings load (the file, environment overrides, every secret source);
- ``database`` and ``migrations``: a connection (as the services' own role), and the schema at the revision the code expects;
- ``audit log`` (PostgreSQL): that connection may only INSERT into and SELECT from the audit tables:
  it FAILs when the role owns them (or is a member of the owner's role, or a superuser) or could
  UPDATE, DELETE, TRUNCATE or ALTER them;
- ``audit seals``: the newest seal; it FAILs when entries older than 15 minutes are not sealed
  (the seal-audit job is not running, or a long-open transaction holds it back) or rows sit in a
  month without its partition (PostgreSQL's ``_default`` partitions: run ``db upgrade``);
- ``partner NAME``: the partner's health endpoint through its adapter, and its
  API key on an authenticated listing that asks only for changes from now on
  (no patient data is fetched);
- ``bucket NAME``: for each bucket in ``[storage.buckets]``, a HEAD of a known
  object (``--probe-object``, else one the index has in that bucket), or
  HeadBucket when none is known;
- ``broker``: a connection to ``jobs.broker_url`` (Redis is also pinged);
- ``dicom``: C-ECHO (PS3.7 9.1.5, Verification SOP Class PS3.4 Annex A) to
  ``dicom.ae_title`` on ``dicom.port``.

Every check has a short timeout and the network checks run in parallel, so
the whole run takes about one timeout at worst. Secrets are never printed:
messages carry host names, key *names* and error classes, and every known
secret value is masked before anything is shown.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import click
import msgspec

from imaging_sync.config import (
    CONFIG_ENV,
    DatabaseConfig,
    DicomConfig,
    PartnerConfig,
    RetryPolicy,
    Settings,
    load_settings,
    resolve_api_key,
    secret_sources,
)
from imaging_sync.errors import ConfigError, ImagingSyncError, PartnerAuthError, PartnerUnavailableError

Status = Literal["OK", "FAIL", "SKIP"]
DEFAULT_TIMEOUT = 5.0
DEFAULT_CALLING_AET = "ISYNC_DOCTOR"
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}
_MIN_SECRET_LENGTH = 4  # shorter "secrets" would mask ordinary words in the output


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str


@dataclass(frozen=True)
class DoctorOptions:
    """How far to look and how long to wait."""

    timeout: float = DEFAULT_TIMEOUT
    # Where to reach the DICOM node (default: dicom.host, or 127.0.0.1 when it binds every interface).
    dicom_host: str | None = None
    calling_aet: str = DEFAULT_CALLING_AET
    # bucket -> key of an object known to exist, HEADed instead of the bucket.
    probe_objects: Mapping[str, str] = field(default_factory=dict)


def ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "OK", detail)


def fail(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "FAIL", detail)


def skip(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "SKIP", detail)


# -- the whole run ------------------------------------------------------------------------


def diagnose(config_path: str | None, options: DoctorOptions, environ: Mapping[str, str] | None = None, *, path_key: str = CONFIG_ENV) -> list[CheckResult]:
    """Load the settings, then run every check; the results in a stable order, secrets masked."""
    environ = os.environ if environ is None else environ
    try:
        settings = load_settings(config_path, environ, path_key=path_key)
    except ConfigError as exc:
        return [fail("config", f"{exc} (nothing else checked: every other check needs the configuration)")]
    results = [ok("config", f"loaded from {settings.source}")]
    results += run_checks(settings, options, environ)
    return mask_secrets(results, known_secrets(settings, environ))


def run_checks(settings: Settings, options: DoctorOptions, environ: Mapping[str, str]) -> list[CheckResult]:
    """Database first (the bucket check samples the index), then the network checks in parallel."""
    engine, database_results = check_database(settings.database, options.timeout, environ)
    try:
        jobs: list[Callable[[], list[CheckResult]]] = []
        for _, partner in sorted(settings.partners.items()):
            jobs.append(functools.partial(_partner_job, partner, options.timeout, environ))
        jobs.append(lambda: check_buckets(settings, options, engine, environ))
        jobs.append(lambda: [check_broker(settings, options.timeout, environ)])
        jobs.append(lambda: [check_dicom(settings.dicom, options)])
        with ThreadPoolExecutor(max_workers=min(8, len(jobs)), thread_name_prefix="doctor") as pool:
            futures = [pool.submit(_guarded, job) for job in jobs]
            network_results = [result for future in futures for result in future.result()]
    finally:
        if engine is not None:
            engine.dispose()
    return database_results + network_results


def _partner_job(partner: PartnerConfig, timeout: float, environ: Mapping[str, str]) -> list[CheckResult]:
    """One partner's check as a job of :func:`run_checks` (a partial binds the partner, as a lambda's default cannot be typed)."""
    return [check_partner(partner, timeout, environ)]


def _guarded(job: Callable[[], list[CheckResult]]) -> list[CheckResult]:
    """A bug in one check must not hide the others' answers."""
    try:
        return job()
    except Exception as exc:  # report, never crash the whole doctor
        return [fail("doctor", f"a check crashed: {type(exc).__name__}: {exc}")]


# -- database -----------------------------------------------------------------------------


def check_database(config: DatabaseConfig, timeout: float, environ: Mapping[str, str]) -> tuple[Any, list[CheckResult]]:
    """``(engine or None, [database, migrations])``; the engine is returned only when the database answered."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from imaging_sync.db import migrate
    from imaging_sync.db.engine import connection_url, create_db_engine

    url = make_url(config.url)
    shown = connection_url(config, with_password=False).render_as_string(hide_password=True)  # the services' own role
    not_checked = skip("migrations", "not checked: the database is unreachable")
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path in ("", ":memory:"):
            return None, [fail("database", f"{shown}: an in-memory database holds no index; set database.url to a file"), not_checked]
        if not Path(path).is_file():
            return None, [fail("database", f"SQLite file {path} does not exist (wrong database.url? a new install needs `imaging-sync db upgrade`)"), not_checked]
    elif "connect_timeout" not in url.query:
        # libpq waits ~2 minutes for a silent host by default; the doctor should answer sooner.
        config = msgspec.structs.replace(config, url=url.update_query_dict({"connect_timeout": str(max(1, round(timeout)))}).render_as_string(hide_password=False))
    try:
        connection_url(config, environ=environ)  # reads the services' secret: names the missing variable or file
        engine = create_db_engine(config)
    except ConfigError as exc:
        return None, [fail("database", str(exc)), not_checked]
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        return None, [fail("database", f"{shown} unreachable: {_db_reason(exc)}"), not_checked]
    database = ok("database", f"{shown} reachable")
    try:
        current, head = migrate.current_revision(engine), migrate.head_revision()
    except Exception as exc:
        return engine, [database, fail("migrations", f"cannot read the schema revision: {_db_reason(exc)}")]
    if current != head:
        return engine, [database, fail("migrations", f"schema at {current or 'nothing (empty database)'}, code expects {head}: run `imaging-sync db upgrade`")]
    return engine, [database, ok("migrations", f"schema at {current} (current)"), *check_audit_reach(engine, config), check_audit_seals(engine)]


UNSEALED_AFTER = dt.timedelta(minutes=15)  # an entry this old and still not sealed: sealing has stopped


def check_audit_seals(engine: Any) -> CheckResult:
    """``audit seals``: the newest seal, entries left unsealed too long, rows in a month without its partition."""
    from sqlalchemy import text

    from imaging_sync import audit_seals
    from imaging_sync.db import partitions

    try:
        with engine.connect() as conn:
            newest = audit_seals.last(conn)
            horizon = {"lo": newest.hi if newest is not None and newest.hi is not None else 0, "before": dt.datetime.now(dt.UTC) - UNSEALED_AFTER}
            if engine.dialect.name == "postgresql":
                stale = int(conn.scalar(text("SELECT count(*) FROM audit_log WHERE txid >= :lo AND at < :before"), horizon) or 0)
                stray = partitions.default_rows(conn)
            else:
                low = (newest.ranges or {}).get("audit_log", [0, 0])[1] if newest is not None else 0
                stale = int(conn.scalar(text("SELECT count(*) FROM audit_log WHERE rowid > :lo AND at < :before"), {**horizon, "lo": low}) or 0)
                stray = 0
    except Exception as exc:
        return fail("audit seals", f"cannot read the seals: {_db_reason(exc)}")
    if stray:
        return fail("audit seals", f"{stray} audit rows in a month without its partition (the _default partitions): run `imaging-sync db upgrade`")
    if stale:
        return fail("audit seals", f"{stale} audit entries older than {UNSEALED_AFTER.seconds // 60} minutes are not sealed: is the seal-audit job running "
                                   "(worker and beat)? A long-open writing transaction holds sealing back (runbook: audit log)")
    if newest is None:
        return ok("audit seals", "no seal yet (nothing older than the seal interval to seal)")
    return ok("audit seals", f"newest seal {newest.seal_no} made {newest.sealed_at:%Y-%m-%d %H:%M:%S} UTC; `imaging-sync audit verify` checks them")


def check_audit_reach(engine: Any, config: DatabaseConfig) -> list[CheckResult]:
    """PostgreSQL: FAIL when the services' own connection could change the audit log, not only append to it (none on SQLite).

    A table's owner (or a member of its role, or a superuser) can disable or
    drop the append-only triggers, rewrite every row with ``ALTER COLUMN …
    USING`` or swap the table; a role granted UPDATE, DELETE, TRUNCATE,
    TRIGGER or REFERENCES can change it too (:func:`imaging_sync.db.roles.audit_reach`).
    """
    from imaging_sync.db.roles import audit_reach

    if engine.dialect.name != "postgresql":
        return []
    try:
        with engine.connect() as conn:
            reach = audit_reach(conn)
    except Exception as exc:
        return [fail("audit log", f"cannot read the audit tables' owner and privileges: {_db_reason(exc)}")]
    fix = ("set database.runtime_role to a role of its own and run `imaging-sync db upgrade` as the owner (README: Production)"
           if not config.runtime_role else "run `imaging-sync db upgrade` as the owner to re-apply the runtime role's grants")
    if reach.excess:
        return [fail("audit log", f"the services' role {reach.role} {'; '.join(reach.excess)}: it could rewrite or remove audit entries; {fix}")]
    if reach.missing:
        return [fail("audit log", f"the services' role {reach.role} {'; '.join(reach.missing)}: audited requests would fail; {fix}")]
    return [ok("audit log", f"the services' role {reach.role} may only INSERT and SELECT {', '.join(reach.checked)} (it owns none of them)")]


def _db_reason(exc: BaseException) -> str:
    """The driver's own first line (psycopg: 'connection failed: … Connection refused'), not SQLAlchemy's wrapper."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return f"{type(orig).__name__}: {lines[0]}" if lines else type(orig).__name__


# -- partners -----------------------------------------------------------------------------


def check_partner(partner: PartnerConfig, timeout: float, environ: Mapping[str, str]) -> CheckResult:
    """Health endpoint, then the key on an authenticated listing of changes since now (normally empty)."""
    from imaging_sync.partners.factory import build_source

    name = f"partner {partner.name}"
    if not partner.enabled:
        return skip(name, "disabled (enabled = false)")
    # One attempt, short timeouts: the doctor reports, the sync retries.
    quick = msgspec.structs.replace(
        partner,
        connect_timeout=min(partner.connect_timeout, timeout),
        read_timeout=min(partner.read_timeout, timeout),
        page_size=1,
        retry=RetryPolicy(max_attempts=1, max_total_seconds=timeout, max_retry_after=timeout),
    )
    key_source = f"api_key_env {partner.api_key_env}" if partner.api_key_env else f"api_key_file {partner.api_key_file}"
    try:
        resolve_api_key(partner, environ)
        source = build_source(quick)
    except ConfigError as exc:
        return fail(name, str(exc))
    started = time.monotonic()
    try:
        source.health()
        for _page in source.list_changed(dt.datetime.now(dt.UTC)):
            break  # the first page proves the key; its content is not looked at
    except PartnerAuthError as exc:
        return fail(name, f"{partner.base_url}: {_partner_reason(exc)} (the key comes from {key_source})")
    except PartnerUnavailableError as exc:
        return fail(name, f"{partner.base_url} unreachable or failing: {_partner_reason(exc)}")
    except ImagingSyncError as exc:
        return fail(name, f"{partner.base_url}: {_partner_reason(exc)}")
    finally:
        source.close()
    return ok(name, f"{partner.base_url}: health ok, key accepted ({(time.monotonic() - started) * 1000:.0f} ms)")


def _partner_reason(exc: ImagingSyncError) -> str:
    return str(exc).split(": ", 1)[-1] if str(exc).startswith("partner ") else str(exc)


# -- buckets ------------------------------------------------------------------------------


def check_buckets(settings: Settings, options: DoctorOptions, engine: Any, environ: Mapping[str, str]) -> list[CheckResult]:
    """One line per registered bucket (plus one per ``--probe-object`` outside the registry)."""
    from storage.registry import BucketRegistry

    storage = settings.storage
    referenced = sorted({b for p in settings.partners.values() if p.enabled for b in p.buckets})
    results = [
        fail(f"bucket {bucket}", "not in the storage registry ([storage.buckets]): it is never signed or read")
        for bucket in sorted(set(options.probe_objects) - set(storage.buckets))
    ]
    if not storage.buckets:
        if referenced:
            return results + [fail("storage", f"[storage.buckets] is empty, but partners point at {', '.join(referenced)}: file URLs and C-MOVE cannot work")]
        return results + [skip("storage", "no buckets registered ([storage.buckets]) and no partner points at one")]
    if storage.embedded:
        return results + [skip("storage", "storage.embedded = true: the embedded S3 lives inside the serving process, nothing to reach from here")]
    try:
        registry = BucketRegistry(storage, environ=environ)
    except ConfigError as exc:
        return results + [fail("storage", str(exc))]
    for bucket in sorted(storage.buckets):
        results.append(_check_bucket(registry, bucket, settings, options, engine))
    return results


def _check_bucket(registry: Any, bucket: str, settings: Settings, options: DoctorOptions, engine: Any) -> CheckResult:
    from botocore.exceptions import BotoCoreError, ClientError

    from imaging_sync.errors import ObjectNotFoundError, StorageError
    from storage.boto_errors import storage_error
    from storage.reader import ObjectReader

    name = f"bucket {bucket}"
    cfg = registry.bucket_config(bucket)
    where = f"{cfg.endpoint_url or 'AWS'} ({cfg.region})"
    key, origin = options.probe_objects.get(bucket), "--probe-object"
    if key is None and engine is not None:
        key, origin = _indexed_object(engine, bucket, settings), "an indexed object"
    try:
        if key is not None:
            try:
                ObjectReader(registry).head(bucket, key)
            except ObjectNotFoundError:
                if origin == "--probe-object":
                    return fail(name, f"{where}: the probe object is not there (404)")
                # A 404 (not a 403) means the credentials may read and list: access works; the data does not.
                return ok(name, f"{where}: readable, but {origin} is missing (404): has the partner moved files?")
            except StorageError as exc:
                # Object keys are the partner's paths and may carry identifiers: name the object, not its key.
                return fail(name, f"{where}: {str(exc).replace(key, f'<{origin}>')}")
            return ok(name, f"{where}: HEAD of {origin} allowed")
        client = registry.client(bucket)
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            if code in ("404", "NoSuchBucket", "NotFound"):
                return fail(name, f"{where}: the bucket does not exist at this endpoint (404)")
            if code in ("403", "AccessDenied", "Forbidden"):
                return fail(name, f"{where}: access denied (403) to HeadBucket: check the credentials named in storage.buckets.{bucket} "
                                  "and that they may s3:ListBucket (no indexed object to HEAD instead)")
            raise storage_error(exc, action="check", bucket=bucket) from exc
        except BotoCoreError as exc:
            raise storage_error(exc, action="check", bucket=bucket) from exc
        return ok(name, f"{where}: HeadBucket allowed (no indexed object yet)")
    except StorageError as exc:
        return fail(name, f"{where}: {exc}")


def _indexed_object(engine: Any, bucket: str, settings: Settings) -> str | None:
    """A key the index says is in ``bucket``; by (partner, bucket), the indexed columns."""
    from sqlalchemy import select

    from imaging_sync.db.models import InstanceLocation

    partners = [p.name for p in settings.partners.values() if bucket in p.buckets]
    if not partners:
        return None
    try:
        with engine.connect() as conn:
            key: str | None = conn.scalar(
                select(InstanceLocation.key).where(InstanceLocation.partner.in_(partners), InstanceLocation.bucket == bucket).limit(1)
            )
            return key
    except Exception:  # schema not migrated: the migrations line says so; fall back to HeadBucket
        return None


# -- broker -------------------------------------------------------------------------------


def check_broker(settings: Settings, timeout: float, environ: Mapping[str, str]) -> CheckResult:
    from kombu.connection import Connection  # kombu's lazy top-level module re-exports it without declaring so
    from kombu.utils.url import maybe_sanitize_url

    if not settings.broker_users():
        return skip("broker", 'not used: jobs.scheduler = "embedded" (the in-process scheduler of `imaging-sync serve`), and nothing else queues tasks')
    try:
        url = settings.jobs.resolved_broker_url(environ).reveal()
    except ConfigError as exc:
        return fail("broker", str(exc))
    shown = str(maybe_sanitize_url(url))
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "max_retries": 0}
    try:
        with Connection(url, connect_timeout=timeout, transport_options=options) as conn:  # type: ignore[no-untyped-call]  # kombu's __init__ is unannotated
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
            if conn.transport.driver_type == "redis":
                conn.default_channel.client.ping()  # connecting is lazy on Redis: ask something
    except Exception as exc:
        return fail("broker", f"{shown} unreachable: {type(exc).__name__}: {exc}")
    return ok("broker", f"{shown} answers")


# -- DICOM --------------------------------------------------------------------------------


def check_dicom(config: DicomConfig, options: DoctorOptions) -> CheckResult:
    host = options.dicom_host or ("127.0.0.1" if config.host in _WILDCARD_HOSTS else config.host)
    if config.port == 0:
        return skip("dicom", "dicom.port = 0 (a free port at each start): nothing fixed to check")
    return dicom_echo(config.ae_title, host, config.port, calling_aet=options.calling_aet, timeout=options.timeout)


def dicom_echo(called_aet: str, host: str, port: int, *, calling_aet: str = DEFAULT_CALLING_AET, timeout: float = DEFAULT_TIMEOUT) -> CheckResult:
    """C-ECHO over a fresh association (PS3.7 9.1.5); also the container health check of the DICOM node."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import: no attribute mypy can see

    where = f"{called_aet}@{host}:{port}"
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    started = time.monotonic()
    with _quiet("pynetdicom"):
        assoc = ae.associate(host, port, ae_title=called_aet)
        try:
            if assoc.is_established:
                status = assoc.send_c_echo()
                code = getattr(status, "Status", None)
                assoc.release()
                if code == 0x0000:
                    return ok("dicom", f"C-ECHO to {where} succeeded ({(time.monotonic() - started) * 1000:.0f} ms)")
                shown = "no response (DIMSE timeout)" if code is None else f"status 0x{code:04X}"
                return fail("dicom", f"C-ECHO to {where}: {shown}")
            if assoc.is_rejected:
                primitive = assoc.acceptor.primitive
                reason = primitive.reason_str if primitive is not None else "no reason given"
                if primitive is not None and primitive.result_source == 1 and primitive.diagnostic == 3:
                    # The node answered in DICOM and applied its allowlist: it is up; we are simply not on the list.
                    return ok("dicom", f"{where} answers; C-ECHO not run: calling AE {calling_aet} is not listed in [dicom.peers] from here "
                                       f"(add [dicom.peers.{calling_aet}] operations = [\"echo\"], or pass --calling-aet with a listed title)")
                return fail("dicom", f"association to {where} rejected: {reason}")
            # No association: tell "nothing listens" from "something listens but does not speak DICOM to us".
            problem = _tcp_problem(host, port, timeout)
            if problem:
                return fail("dicom", f"nothing answers on {host}:{port} ({problem}): is `imaging-sync serve dicom` running?")
            if assoc.is_aborted:
                return fail("dicom", f"{host}:{port} accepts connections but aborted the association to {called_aet} (is it a DICOM node?)")
            return fail("dicom", f"no answer to the association request from {where} within {timeout:g} s")
        finally:
            ae.shutdown()


def _tcp_problem(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """pynetdicom narrates every refusal at ERROR; the doctor's own line says it better."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


# -- secrets never shown ----------------------------------------------------------------------


def known_secrets(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """Every secret value the settings point at (``config.secret_sources``) and passwords inside URLs, to mask in anything printed."""
    values: list[str | None] = []
    for source in secret_sources(settings):
        try:
            secret = source.read(environ)
        except ConfigError:
            continue
        if secret is not None:
            values.append(secret.reveal())
            values.append(_url_password(secret.reveal()))
    for url in (settings.database.url, settings.jobs.broker_url, settings.jobs.result_backend):
        values.append(_url_password(url or ""))
    return sorted({v.strip() for v in values if v and len(v.strip()) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def mask_secrets(results: Iterable[CheckResult], secrets: Sequence[str]) -> list[CheckResult]:
    masked = []
    for result in results:
        detail = result.detail
        for secret in secrets:
            detail = detail.replace(secret, "***")
        masked.append(CheckResult(result.name, result.status, detail))
    return masked


# -- the command --------------------------------------------------------------------------------


def render_table(results: Sequence[CheckResult]) -> str:
    width = max(len("check"), *(len(r.name) for r in results))
    lines = [f"{'check'.ljust(width)}  status  detail"]
    lines += [f"{r.name.ljust(width)}  {r.status.ljust(6)}  {r.detail}" for r in results]
    failed = sum(r.status == "FAIL" for r in results)
    lines.append(f"{failed} of {len(results)} checks failed" if failed else f"all {len(results)} checks passed"
                 + (f" ({sum(r.status == 'SKIP' for r in results)} skipped)" if any(r.status == "SKIP" for r in results) else ""))
    return "\n".join(lines)


def _parse_probe(values: Sequence[str]) -> dict[str, str]:
    probes: dict[str, str] = {}
    for value in values:
        bucket, _, key = value.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise click.BadParameter(f"{value!r}: want BUCKET/KEY (or s3://BUCKET/KEY)", param_hint="--probe-object")
        probes[bucket] = key
    return probes


@click.command("doctor")
@click.option("--timeout", type=click.FloatRange(0.1, 120), default=DEFAULT_TIMEOUT, show_default=True, help="Seconds each check may wait.")
@click.option("--dicom-host", help="Reach the DICOM node here (default: dicom.host; 127.0.0.1 when it binds every interface).")
@click.option("--calling-aet", default=DEFAULT_CALLING_AET, show_default=True, help="Our AE title for the C-ECHO (listed in [dicom.peers] with echo for a full echo).")
@click.option("--probe-object", "probe_objects", multiple=True, metavar="BUCKET/KEY", help="HEAD this object instead of the bucket (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table (for monitoring).")
@click.pass_context
def doctor(ctx: click.Context, timeout: float, dicom_host: str | None, calling_aet: str, probe_objects: Sequence[str], as_json: bool) -> None:
    """Check config, database and schema, partners, buckets, broker and DICOM node; exit 1 if any FAILs."""
    root = ctx.find_root().obj
    options = DoctorOptions(timeout=timeout, dicom_host=dicom_host, calling_aet=calling_aet, probe_objects=_parse_probe(probe_objects))
    results = diagnose(getattr(root, "config_path", None), options, path_key="--config" if getattr(root, "config_flag", False) else CONFIG_ENV)
    if as_json:
        click.echo(msgspec.json.encode({"ok": all(r.status != "FAIL" for r in results),
                                        "checks": [{"name": r.name, "status": r.status, "detail": r.detail} for r in results]}).decode())
    else:
        click.echo(render_table(results))
    if any(r.status == "FAIL" for r in results):
        sys.exit(1)
