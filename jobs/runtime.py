"""What the jobs of a process share: the core they are given, and the outbox relay with its sinks."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from imaging_sync.atna.relay import AtnaRelay, relay_for
from imaging_sync.config import Settings, webhook_url
from imaging_sync.copies import CopyChooser
from imaging_sync.core import Core
from imaging_sync.outbox.relay import Relay, Sink
from imaging_sync.outbox.webhook import WebhookSink, webhook_secret
from jobs.outbox_sink import CelerySink
from storage.audit_store import AuditObjectStore
from storage.headers import HeaderCache, HeaderReader
from storage.reader import ObjectReader
from storage.registry import BucketRegistry

log = logging.getLogger(__name__)


def outbox_sinks(settings: Settings, celery_app: Celery | None) -> list[Sink]:
    """The configured sinks: the webhook (``outbox.webhook``) and a Celery task (``outbox.celery_task``)."""
    sinks: list[Sink] = []
    webhook = settings.outbox.webhook
    if webhook is not None:
        sinks.append(WebhookSink(webhook, webhook_secret(webhook), url=webhook_url(webhook)))
    if settings.outbox.celery_task:
        if celery_app is None:
            raise ValueError("outbox.celery_task needs a Celery app to send with")
        sinks.append(CelerySink(celery_app, settings.outbox.celery_task))
    return sinks


def close_sinks(sinks: list[Any]) -> None:
    for sink in sinks:
        close = getattr(sink, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # closing is best effort at shutdown
                log.exception("closing outbox sink %s failed", getattr(sink, "name", sink))


class Runtime:
    """What the jobs of one process share: its core, and the outbox relay with the configured sinks.

    Given the core by the process assembly (a worker's, built on its first job
    after the fork) or by the all-in-one process (its embedded scheduler).
    ``owns_core``: closing the runtime closes the core too.
    """

    def __init__(self, core: Core, celery_app: Celery | None = None, *, owns_core: bool = False) -> None:
        self.core = core
        self.settings = core.settings
        self._owns_core = owns_core
        try:
            self.sinks = outbox_sinks(self.settings, celery_app)
        except BaseException:
            self.close()
            raise
        self.relay = Relay(self.core.engine, self.sinks, self.settings.outbox) if self.sinks else None
        atna = self.settings.audit.atna
        try:  # the ATNA relay's TLS files are read now: a bad path fails at start, not at the first delivery
            self.atna: AtnaRelay | None = relay_for(self.core.engine, atna) if atna is not None else None
        except BaseException:
            self.close()
            raise
        self._seal_copies: AuditObjectStore | None = None
        self._headers: HeaderCache | None = None

    @property
    def headers(self) -> HeaderCache:
        """The DICOMweb header cache the background reader fills, built on first use (its own bucket registry)."""
        if self._headers is None:
            registry = BucketRegistry(self.settings.storage)
            reader = HeaderReader(ObjectReader(registry), CopyChooser(self.settings.priorities(), registry))
            self._headers = HeaderCache(self.core.engine, reader, concurrency=self.settings.dicomweb.header_read_concurrency)
        return self._headers

    @property
    def seal_copies(self) -> AuditObjectStore | None:
        """Where seals are copied outside the database ([audit] seal_bucket), built on first use; None when unset."""
        audit = self.settings.audit
        if audit.seal_bucket is None:
            return None
        if self._seal_copies is None:
            registry = BucketRegistry(self.settings.storage)
            self._seal_copies = AuditObjectStore(registry, audit.seal_bucket, audit.seal_prefix, retention_years=audit.retention_years)
        return self._seal_copies

    def close(self) -> None:
        close_sinks(getattr(self, "sinks", []))
        if getattr(self, "_headers", None) is not None:
            self._headers.close()  # type: ignore[union-attr]
        if self._owns_core:
            self.core.close()

    def forget_inherited(self) -> None:
        """In a forked child: drop the parent's pooled connections without closing them under it."""
        self.core.engine.dispose(close=False)
