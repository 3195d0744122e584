"""The HTTP webhook sink: a batch of events as one signed JSON POST.

Body: ``{"events": [{"id", "type", "aggregate_id", "attempt", "payload"}, …]}``
in delivery order. With a secret configured, ``X-Imaging-Sync-Signature`` is
``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` and
``X-Imaging-Sync-Timestamp`` the Unix time used, so receivers can verify the
sender and refuse replays. Any non-2xx answer or transport error fails the
batch (it is retried with backoff). For receivers: docs/webhooks.md (its
verification snippets are tested against this sink).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

import httpx
import msgspec

from imaging_sync.config import Secret, WebhookConfig, read_secret, webhook_url
from imaging_sync.outbox.relay import Event

SIGNATURE_HEADER = "X-Imaging-Sync-Signature"
TIMESTAMP_HEADER = "X-Imaging-Sync-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def webhook_secret(config: WebhookConfig, environ: Mapping[str, str] | None = None) -> Secret | None:
    return read_secret("outbox.webhook.secret", config.secret_env, config.secret_file, environ)


class WebhookSink:
    name = "webhook"

    def __init__(self, config: WebhookConfig, secret: Secret | None, client: httpx.Client | None = None, *, url: Secret | None = None) -> None:
        """``url``: the receiver's URL as resolved (``config.webhook_url``); default: ``config.url``."""
        self._url = url or webhook_url(config)
        self._secret = secret
        self._client = client or httpx.Client(timeout=config.timeout_seconds, headers={"User-Agent": "imaging-sync-outbox/0.1"})

    def deliver(self, events: Sequence[Event]) -> None:
        body = msgspec.json.encode({"events": [e.as_json() for e in events]})
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(self._secret.reveal(), timestamp, body)
        response = self._client.post(self._url.reveal(), content=body, headers=headers)
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"webhook answered HTTP {response.status_code}")

    def close(self) -> None:
        self._client.close()
