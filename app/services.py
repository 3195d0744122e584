"""Long-running services run together in one process (``imaging-sync serve`` with no subcommand, the demo).

The all-in-one process (``app.assembly.all_in_one``) hands :func:`run_services`
the services it built: the REST API, the DICOM node, the in-process scheduler.
Each is started in order and stopped in reverse when SIGINT or SIGTERM comes.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)


class Service(Protocol):
    """Something that runs in the background of one process."""

    name: str

    def start(self) -> None:
        """Start serving (returns once it is ready; work goes on in threads)."""
        ...

    def stop(self) -> None:
        """Stop and release what it holds; prompt."""
        ...

    def describe(self) -> str:
        """One line for the operator: what listens where."""
        ...


def run_services(services: Sequence[Service], *, echo: Callable[[str], None], stop: threading.Event | None = None) -> None:
    """Start every service in the given order, wait for a signal (or ``stop``), stop them in reverse order."""
    stop = stop or threading.Event()
    started: list[Service] = []
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
