"""``imaging-sync headers``: DICOMweb's header cache, for the operator.

``status`` shows, per partner, how many of its instances' headers are kept,
how many could not be read (by kind: ``object_missing``, ``bucket_refused``,
``object_corrupt``, ``storage``…) and how many are not read yet; ``read``
runs the background reader now (after a bulk load, or ``--retry-failed``
once a partner has fixed its bucket). Neither prints patient data: counts and
partner names only.
"""

from __future__ import annotations

import click

from app.cli_support import pass_core
from imaging_sync.catalog.headers import progress
from imaging_sync.copies import CopyChooser
from imaging_sync.core import Core
from imaging_sync.errors import ConfigError
from storage.headers import HeaderCache, HeaderReader
from storage.reader import ObjectReader
from storage.registry import BucketRegistry


@click.group("headers")
def headers() -> None:
    """DICOMweb's header cache: what is read, what failed, read more."""


@headers.command("status")
@pass_core
def status(core: Core) -> None:
    """Per partner: headers kept, failed (by kind), not read yet."""
    with core.engine.connect() as conn:
        rows = progress(conn)
    if not rows:
        click.echo("no instance has a file location yet")
        return
    click.echo(f"{'partner':<16} {'kept':>8} {'failed':>8} {'unread':>8}  failures")
    for row in rows:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(row.failed.items())) or "-"
        click.echo(f"{row.partner:<16} {row.kept:>8} {sum(row.failed.values()):>8} {row.unread:>8}  {kinds}")


@headers.command("read")
@click.option("--partner", "partners", multiple=True, help="Only this partner (repeatable); default: every partner in the config.")
@click.option("--retry-failed", is_flag=True, help="Also read again the headers that failed before.")
@pass_core
def read(core: Core, partners: tuple[str, ...], retry_failed: bool) -> None:
    """Read and keep the headers of instances not read yet, now, as the reader after a sync does."""
    settings = core.settings
    names = list(partners) or sorted(settings.partners)
    for name in names:
        if name not in settings.partners:
            raise ConfigError("--partner", f"no partner {name!r} in the config")
    registry = BucketRegistry(settings.storage)
    cache = HeaderCache(core.engine, HeaderReader(ObjectReader(registry), CopyChooser(settings.priorities(), registry)),
                        concurrency=settings.dicomweb.header_read_concurrency)
    try:
        for name in names:
            result = cache.fill(name, retry_failed=retry_failed)
            failed = ", ".join(f"{kind} {count}" for kind, count in sorted(result.failed.items())) or "none failed"
            click.echo(f"{name}: {result.read} headers read, {failed}")
    finally:
        cache.close()
