"""The DICOM node as a service of the single-process mode (``imaging-sync serve``)."""

from __future__ import annotations

import logging

from dicom.server import DicomServer, build_services
from imaging_sync.bootstrap import Core
from storage import BucketRegistry, ObjectReader


class DicomService:
    name = "dicom"
    order = 50

    def __init__(self, core: Core) -> None:
        self.core = core
        self._server: DicomServer | None = None

    def start(self) -> None:
        settings = self.core.settings  # read at start: the embedded S3 service may have rewritten storage
        logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
        reader = ObjectReader(BucketRegistry(settings.storage))
        services = build_services(settings.dicom, self.core.engine, reader, partner_priority=settings.priorities())
        self._server = DicomServer(settings.dicom, services)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def describe(self) -> str:
        config = self.core.settings.dicom
        port = self._server.port if self._server is not None else config.port
        return f"DICOM node {config.ae_title} on {config.host}:{port} (C-ECHO, C-FIND, C-MOVE, C-GET)"


def dicom_service(core: Core) -> DicomService:
    """Entry point ``imaging_sync.services: dicom``."""
    return DicomService(core)
