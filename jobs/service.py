"""The in-process scheduler as a service of the single-process mode (``imaging-sync serve``, no broker)."""

from __future__ import annotations

from imaging_sync.bootstrap import Core
from jobs.embedded import EmbeddedScheduler


class SchedulerService:
    name = "scheduler"
    order = 90

    def __init__(self, core: Core) -> None:
        self.core = core
        self._scheduler: EmbeddedScheduler | None = None

    def start(self) -> None:
        self._scheduler = EmbeddedScheduler(self.core, self.core.settings)
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()

    def describe(self) -> str:
        jobs = self.core.settings.jobs
        partners = ", ".join(f"{p.name} ({p.schedule or jobs.default_schedule})" for p in self.core.settings.partners.values() if p.enabled) or "no partners"
        outbox = (f"outbox relay every {jobs.outbox_relay_seconds:g}s" if self.core.settings.outbox.has_sink
                  else "no outbox relay (no sink configured: the sync writes no change events)")
        return f"scheduler in {jobs.timezone}: syncs {partners}; {outbox}; alert checks every {jobs.alerts_check_seconds:g}s"


def scheduler_service(core: Core) -> SchedulerService:
    """Entry point ``imaging_sync.services: scheduler``."""
    return SchedulerService(core)
