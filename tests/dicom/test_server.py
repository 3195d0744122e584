"""dicom.server: what happens once the node listens."""

from __future__ import annotations

import threading

from dicom_fixtures import Files, start_node
from sqlalchemy import Engine

from dicom.server import DicomServer, build_services
from storage import ObjectReader


def test_after_warm_up_runs_once_every_buckets_client_is_built(sqlite_engine: Engine, files: Files) -> None:
    """app.assembly freezes the heap there: the S3 clients (botocore's models) are built after the port opens."""
    node = start_node(sqlite_engine, files)  # for its configuration
    node.server.stop()
    registry = files.s3.registry()  # a registry of its own: no client built yet
    services = build_services(node.config, sqlite_engine, ObjectReader(registry))
    assert registry._connections == {}
    clients_then: list[int] = []
    called = threading.Event()

    def after_warm_up() -> None:
        clients_then.append(len(registry._connections))
        called.set()

    server = DicomServer(node.config, services, after_warm_up=after_warm_up)
    server.start()
    try:
        assert called.wait(30)
    finally:
        server.stop()
    assert clients_then == [len(registry._config.buckets)] and clients_then[0] > 0
