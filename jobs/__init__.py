"""Scheduled jobs: Celery tasks, the beat schedule, and an embedded scheduler.

The jobs call the core (``imaging_sync``) and never the reverse. Two ways to run:

* Celery (``imaging-sync worker`` / ``imaging-sync beat``; ``celery -A app.assembly`` for Celery's own tools):
  tasks in :mod:`jobs.tasks`, the schedule in :mod:`jobs.schedule`, the app in :mod:`jobs.app`.
* One process, no broker: :class:`jobs.embedded.EmbeddedScheduler` runs the same
  schedule in threads of the process that owns the core.

Both run the same job bodies (:mod:`jobs.work`), over the core the process
assembly (``app.assembly``) hands them.
"""
