"""The in-process scheduler as a service of the single-process mode (``imaging-sync serve``, no broker)."""

from __future__ import annotations

from jobs.embedded import EmbeddedScheduler


class SchedulerService:
    name = "scheduler"

    def __init__(self, scheduler: EmbeddedScheduler) -> None:
        self.scheduler = scheduler

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()

    def describe(self) -> str:
        settings = self.scheduler.settings
        jobs = settings.jobs
        partners = ", ".join(f"{p.name} ({p.schedule or jobs.default_schedule})" for p in settings.partners.values() if p.enabled) or "no partners"
        outbox = (f"outbox relay every {jobs.outbox_relay_seconds:g}s" if settings.outbox.has_sink
                  else "no outbox relay (no sink configured: the sync writes no change events)")
        return f"scheduler in {jobs.timezone}: syncs {partners}; {outbox}; alert checks every {jobs.alerts_check_seconds:g}s"
