"""The statuses of a sync run and of an outbox event, and every move the code makes between them.

Both are stored as plain words (``sync_run.status``, ``outbox_event.status``)
and shown as those words by the REST API, the CLI, the task results and the
metrics. The enums here are ``StrEnum``s whose values *are* those words, so
the code writes and compares members while the database and every output
stay as they were.

Next to each enum is its transition table: from which status to which, what
causes it in words a newcomer follows, and the function that writes it (a
dotted name: the modules of those functions import this one, so it cannot
import them; ``tests/imaging_sync/test_statuses.py`` resolves every name). A
transition from ``None`` creates the record in its status; one to ``None``
deletes it. ``docs/sync.md`` draws its state diagrams from these tables
(``imaging-sync docs generate``), so a status added here without the moves
that reach it shows up as an orphan in the test, not as a stale picture.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar


class RunStatus(enum.StrEnum):
    """``sync_run.status``: where one sync run of one partner stands (declared in the order a run lives them)."""

    QUEUED = "queued"  # recorded, its task sent to the job queue; no worker has taken it yet
    RUNNING = "running"  # a process is working on it (or died doing so: see ABANDONED)
    SUCCEEDED = "succeeded"  # every page listed was committed
    FAILED = "failed"  # stopped by an error; the pages committed before it stay
    SKIPPED = "skipped"  # another process was syncing the partner (its lock was taken)
    ABANDONED = "abandoned"  # never finished: its process died, or no worker ever took its task


class OutboxEventStatus(enum.StrEnum):
    """``outbox_event.status``: where one event stands on its way to the sinks (a webhook, a Celery task)."""

    PENDING = "pending"  # waiting for a relay (new, or backing off after a failed delivery)
    PROCESSING = "processing"  # claimed by a relay, under a lease (``claimed_until``)
    DONE = "done"  # every sink accepted it
    FAILED = "failed"  # given up after ``outbox.max_attempts`` deliveries; kept until retried or pruned


# Not delivered and not given up: what the relay claims from, what the backlog alert ages, and
# what holds back a study's later events (one study's events are delivered in order).
OPEN_EVENT_STATUSES: tuple[OutboxEventStatus, ...] = (OutboxEventStatus.PENDING, OutboxEventStatus.PROCESSING)

S = TypeVar("S", bound=enum.StrEnum)


@dataclass(frozen=True)
class Transition(Generic[S]):
    """One move of a record's status; ``None`` as ``source``: the record is created, as ``target``: deleted."""

    source: S | None
    target: S | None
    label: str  # a few words, for the arrow in the state diagram
    cause: str  # what makes it happen, in a sentence
    code: str  # the dotted name of the function that writes it


_RUNNER = "imaging_sync.sync.runner.SyncRunner"
_RELAY = "imaging_sync.outbox.relay"

RUN_TRANSITIONS: tuple[Transition[RunStatus], ...] = (
    Transition(None, RunStatus.QUEUED, "sync queued",
               "A sync is handed to the job queue (the REST API's queue launcher, `imaging-sync sync --async`, the `sync_all` task): "
               "its run is recorded before the task is sent, so the caller can answer with the run id at once.",
               f"{_RUNNER}.record_queued_run"),
    Transition(None, RunStatus.RUNNING, "sync starts",
               "A sync starts with no queued run to carry on (the CLI, the in-process launcher, a scheduled task, the demo), "
               "or its queued run is no longer queued (a task retried or redelivered records a run of its own).",
               f"{_RUNNER}._start_run"),
    Transition(RunStatus.QUEUED, RunStatus.RUNNING, "a worker takes it",
               "A worker takes the task and carries the queued run on.",
               f"{_RUNNER}._start_run"),
    Transition(RunStatus.QUEUED, RunStatus.FAILED, "queue refused the task",
               "The job queue (the broker) did not take the task; the run keeps the reason (error kind `queue`).",
               f"{_RUNNER}.fail_queued_run"),
    Transition(RunStatus.QUEUED, RunStatus.ABANDONED, "no worker took it",
               "No worker took the task within `QUEUED_RUN_EXPIRY` (one hour): the task was lost or the workers were down. "
               "The partner's next run marks it.",
               f"{_RUNNER}._abandon_stale_runs"),
    Transition(RunStatus.RUNNING, RunStatus.SUCCEEDED, "every page committed",
               "The listing ended and every page was committed; rejected items do not fail a run.",
               f"{_RUNNER}._finish_run"),
    Transition(RunStatus.RUNNING, RunStatus.FAILED, "an error stopped it",
               "The partner failed (network, auth, rate limit, protocol), the database failed, or a bug or an interrupt stopped it. "
               "Pages committed before stay committed; the next run resumes from the bookmark.",
               f"{_RUNNER}._finish_run"),
    Transition(RunStatus.RUNNING, RunStatus.SKIPPED, "partner lock taken",
               "Another process holds the partner's lock (a sync of this partner is under way); the run never waits for it.",
               f"{_RUNNER}._finish_run"),
    Transition(RunStatus.RUNNING, RunStatus.ABANDONED, "its process died",
               "The process died mid-run (killed, crashed). The partner's next run, holding the lock, finds it still running and marks it.",
               f"{_RUNNER}._abandon_stale_runs"),
    Transition(RunStatus.ABANDONED, RunStatus.SKIPPED, "race: lock taken",
               "A narrow race: a run recorded just after another run took the lock, and marked abandoned by it, then finds the lock taken "
               "and ends skipped like any run that meets a held lock.",
               f"{_RUNNER}._finish_run"),
    *(
        Transition(finished, None, "pruned",
                   "The daily prune deletes finished runs older than `jobs.prune_days` with their rejected items; "
                   "each partner's latest run stays whatever its age.",
                   "jobs.work.prune")
        for finished in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.SKIPPED, RunStatus.ABANDONED)
    ),
)

OUTBOX_TRANSITIONS: tuple[Transition[OutboxEventStatus], ...] = (
    Transition(None, OutboxEventStatus.PENDING, "a page changes a study",
               "A page that created, changed or deleted a study writes one event for it in the page's own transaction "
               "(only when a sink is configured: with none, nobody would drain them).",
               "imaging_sync.outbox.events.add_study_events"),
    Transition(OutboxEventStatus.PENDING, OutboxEventStatus.PROCESSING, "a relay claims it",
               "A relay claims it once it is due (`next_attempt_at`) and no earlier event of the same study is still open; "
               "the claim is a lease until `claimed_until` and counts an attempt.",
               f"{_RELAY}.Relay.claim"),
    Transition(OutboxEventStatus.PROCESSING, OutboxEventStatus.PROCESSING, "lease ran out",
               "The lease ran out (the relay died or hung before settling): any relay claims it again, counting another attempt.",
               f"{_RELAY}.Relay.claim"),
    Transition(OutboxEventStatus.PROCESSING, OutboxEventStatus.DONE, "delivered",
               "Every sink accepted the batch.",
               f"{_RELAY}.Relay._settle_success"),
    Transition(OutboxEventStatus.PROCESSING, OutboxEventStatus.PENDING, "delivery failed, retry",
               "A sink failed the batch and attempts are left: the event waits an exponential backoff with jitter.",
               f"{_RELAY}.Relay._settle_failure"),
    Transition(OutboxEventStatus.PROCESSING, OutboxEventStatus.FAILED, "last attempt failed",
               "A sink failed the batch on attempt `outbox.max_attempts`: the relay gives up and keeps the error.",
               f"{_RELAY}.Relay._settle_failure"),
    Transition(OutboxEventStatus.FAILED, OutboxEventStatus.PENDING, "retried by an operator",
               "An operator puts it back (`imaging-sync outbox retry-failed`, `POST /api/v1/outbox/retry-failed`); its attempts start again from zero.",
               f"{_RELAY}.retry_failed"),
    Transition(OutboxEventStatus.DONE, None, "pruned",
               "The daily prune deletes delivered events older than `outbox.keep_done_days`; failed ones stay.",
               f"{_RELAY}.prune_done"),
)
