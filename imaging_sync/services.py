"""Long-running services, contributed by the outer packages, run together in one process.

``imaging-sync serve`` with no subcommand is the embedded, single-machine
mode: every package registered under the entry-point group
``imaging_sync.services`` (the REST API, the DICOM node, the in-process
scheduler) gets the process's Core and runs until SIGINT or SIGTERM. The core
never imports those packages; they register themselves.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Protocol

from imaging_sync.bootstrap import Core

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "imaging_sync.services"


class Service(Protocol):
    """Something that runs in the background of one process.

    ``order`` decides start order (stop is the reverse): storage first (10),
    servers (50), the scheduler last (90).
    """

    name: str
    order: int

    def start(self) -> None:
        """Start serving (returns once it is ready; work goes on in threads)."""
        ...

    def stop(self) -> None:
        """Stop and release what it holds; prompt."""
        ...

    def describe(self) -> str:
        """One line for the operator: what listens where."""
        ...


ServiceFactory = Callable[[Core], Service]


def registered_factories() -> dict[str, ServiceFactory]:
    return {ep.name: ep.load() for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)}


def run_services(core: Core, services: Sequence[Service], *, echo: Callable[[str], None], stop: threading.Event | None = None) -> None:
    """Start every service, wait for a signal (or ``stop``), stop them in reverse order."""
    stop = stop or threading.Event()
    started: list[Service] = []
    services = sorted(services, key=lambda service: getattr(service, "order", 50))
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)} if threading.current_thread() is threading.main_thread() else {}
    try:
        for service in services:
            service.start()
            started.append(service)
            echo(f"  {service.name}: {service.describe()}")
        echo("running; Ctrl-C to stop")
        stop.wait()
    finally:
        for service in reversed(started):
            try:
                service.stop()
            except Exception:  # keep stopping the others
                log.exception("stopping %s failed", service.name)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
