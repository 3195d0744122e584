"""``imaging-sync serve dicom``: run the Query/Retrieve node (registered as entry point ``imaging_sync.serve:dicom``)."""

from __future__ import annotations

import logging

import click

from imaging_sync.cli_support import CliContext, pass_ctx
from imaging_sync.heap import freeze_startup_objects

log = logging.getLogger("dicom.server")


@click.command("dicom")
@click.option("--port", type=int, default=None, help="Listen on this port instead of dicom.port.")
@click.option("--host", default=None, help="Listen on this address instead of dicom.host.")
@pass_ctx
def serve_dicom(ctx: CliContext, port: int | None, host: str | None) -> None:
    """DICOM Q/R SCP: C-ECHO, C-FIND, C-MOVE and C-GET (Patient and Study Root) over the index."""
    import msgspec

    from dicom.server import DicomServer, build_services
    from storage import BucketRegistry, EmbeddedS3, ObjectReader

    core = ctx.core
    core.require_current_schema()
    # pynetdicom narrates every PDU at INFO; our own lines cover associations and operations.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
    settings = core.settings
    config = settings.dicom
    if port is not None or host is not None:
        config = msgspec.structs.replace(config, port=config.port if port is None else port, host=host or config.host)
    storage_config = settings.storage
    embedded = None
    if storage_config.embedded:
        embedded = EmbeddedS3.for_config(storage_config)
        embedded.start()
        storage_config = embedded.storage_config(storage_config)
    try:
        reader = ObjectReader(BucketRegistry(storage_config))
        services = build_services(config, core.engine, reader, partner_priority=settings.priorities())
        server = DicomServer(config, services)
        click.echo(f"DICOM node {config.ae_title} on {config.host}:{config.port} (Ctrl-C to stop)", err=True)
        freeze_startup_objects()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            log.info("DICOM node stopping")
        finally:
            server.stop()
    finally:
        if embedded is not None:
            embedded.stop()
        core.close()
