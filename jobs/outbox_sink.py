"""An outbox sink that hands each event to a Celery task (``outbox.celery_task``).

Consumers inside the deployment (indexers, caches) subscribe by implementing
that task. The message is sent by name, so the consumer's code need not be
importable here. Delivery is at-least-once like every sink: a batch that
fails half-way is sent again, and the consumer de-duplicates on ``id``.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from imaging_sync.outbox.relay import Event


class CelerySink:
    """Implements ``imaging_sync.outbox.relay.Sink``: ``send_task(name, args=[event.as_json()])`` per event."""

    name = "celery"

    def __init__(self, app: Celery, task_name: str) -> None:
        self.app = app
        self.task_name = task_name

    def deliver(self, events: Sequence[Event]) -> None:
        # A publish that fails raises (kombu retries the connection first): the relay retries the batch.
        for event in events:
            # No result wanted: a consumer's return value means nothing here, and waiting on results would
            # subscribe this process to one result channel per event.
            self.app.send_task(self.task_name, args=[event.as_json()], ignore_result=True)

    def close(self) -> None:
        return
