"""The embedded S3 as a service of the single-process mode (``imaging-sync serve``).

When ``storage.embedded`` is on, it starts first and points every registered
bucket of the process's settings at itself, so the API and the DICOM node
started after it sign and read the same store.
"""

from __future__ import annotations

import msgspec

from imaging_sync.bootstrap import Core
from storage.embedded import EmbeddedS3


class EmbeddedS3Service:
    name = "s3"
    order = 10

    def __init__(self, core: Core) -> None:
        self.core = core
        self._server: EmbeddedS3 | None = None

    def start(self) -> None:
        storage = self.core.settings.storage
        if not storage.embedded:
            return
        self._server = EmbeddedS3.for_config(storage)
        self._server.start()
        self.core.settings = msgspec.structs.replace(self.core.settings, storage=self._server.storage_config(storage))

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def describe(self) -> str:
        if self._server is None:
            return "configured buckets (no embedded S3)"
        return f"embedded S3 on {self._server.endpoint_url} (buckets: {', '.join(sorted(self.core.settings.storage.buckets))})"


def embedded_s3_service(core: Core) -> EmbeddedS3Service:
    """Entry point ``imaging_sync.services: s3``."""
    return EmbeddedS3Service(core)
