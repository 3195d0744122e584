"""Build the right adapter for a partner's configured wire format."""

from __future__ import annotations

import httpx

from imaging_sync.config import PartnerConfig, resolve_api_key
from imaging_sync.errors import ConfigError
from imaging_sync.partners.source import PartnerSource


def build_source(config: PartnerConfig, client: httpx.Client | None = None) -> PartnerSource:
    if config.adapter == "reference-v1":
        from imaging_sync.partners.reference_v1 import ReferenceV1Source

        return ReferenceV1Source(config, resolve_api_key(config), client=client)
    raise ConfigError(f"partners.{config.name}.adapter", f"unknown adapter {config.adapter!r}")
