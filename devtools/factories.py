"""Small factories for configs pointing at a partner simulator (tests, bench, demo)."""

from __future__ import annotations

from typing import Any

from imaging_sync.config import DatabaseConfig, OutboxConfig, PartnerConfig, RetryPolicy, Settings, WebhookConfig

TEST_API_KEY_ENV = "IMAGING_SYNC_TEST_PARTNER_KEY"
TEST_API_KEY = "sim-key"


def simulator_partner(name: str, base_url: str, *, api_key_env: str | None = TEST_API_KEY_ENV, **overrides: Any) -> PartnerConfig:
    """A partner config for a simulator: its vocabulary, its bucket, quick retries."""
    from devtools.datagen import PARTNER_VOCABULARY

    values: dict[str, Any] = {
        "name": name,
        "base_url": base_url,
        "api_key_env": api_key_env,
        "default_bucket": f"{name}-dicom",
        "page_size": 50,
        "vocabulary": PARTNER_VOCABULARY,
        "retry": RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05, max_total_seconds=20),
        "read_timeout": 5.0,
    }
    values.update(overrides)
    return PartnerConfig(**values)


def settings_for(db_url: str, *partners: PartnerConfig, webhook_url: str | None = None) -> Settings:
    """Settings for a database and partners; ``webhook_url``: an outbox sink, without which the sync writes no events."""
    outbox = OutboxConfig(webhook=WebhookConfig(url=webhook_url)) if webhook_url else OutboxConfig()
    return Settings(database=DatabaseConfig(url=db_url), partners={p.name: p for p in partners}, outbox=outbox)


# A sink nobody listens on: the sync writes events for it, and nothing relays them in the test.
UNREACHED_WEBHOOK = "http://127.0.0.1:9/unreached"
