"""Write a config file for a partner config (subprocess tests, the benchmark)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from imaging_sync.config import PartnerConfig
from imaging_sync.config_toml import dumps


def write_config(path: Path, database_url: str, *partners: PartnerConfig) -> Path:
    """A TOML file that ``load_settings`` reads back into the same partners."""
    sections = {name: {k: v for k, v in msgspec.to_builtins(p).items() if k != "name"} for name, p in ((p.name, p) for p in partners)}
    path.write_text(dumps({"database": {"url": database_url}, "partners": sections}), encoding="utf-8")
    return path
