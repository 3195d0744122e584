"""The DICOM node as a service of the single-process mode (``imaging-sync serve``)."""

from __future__ import annotations

from dicom.server import DicomServer
from imaging_sync.config import DicomConfig


class DicomService:
    name = "dicom"

    def __init__(self, server: DicomServer, config: DicomConfig) -> None:
        self.server = server
        self.config = config

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def describe(self) -> str:
        """Once started: the port actually bound (``dicom.port = 0`` picks a free one)."""
        return f"DICOM node {self.config.ae_title} on {self.config.host}:{self.server.port} (C-ECHO, C-FIND, C-MOVE, C-GET)"
