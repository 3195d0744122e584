"""Write a config file for a partner config (subprocess tests, the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

from imaging_sync.config import PartnerConfig


def write_config(path: Path, database_url: str, *partners: PartnerConfig) -> Path:
    """A TOML file that ``load_settings`` reads back into the same partners."""
    q = json.dumps  # JSON strings are valid TOML basic strings for the values used here
    lines = ["[database]", f"url = {q(database_url)}", ""]
    for p in partners:
        lines += [
            f"[partners.{p.name}]",
            f"base_url = {q(p.base_url)}",
            f"api_key_env = {q(p.api_key_env)}",
            f"page_size = {p.page_size}",
            f"priority = {p.priority}",
            f"overlap_seconds = {p.overlap_seconds}",
            f"read_timeout = {p.read_timeout}",
        ]
        if p.default_bucket:
            lines.append(f"default_bucket = {q(p.default_bucket)}")
        lines += ["", f"[partners.{p.name}.retry]"]
        lines += [f"{name} = {getattr(p.retry, name)}" for name in p.retry.__struct_fields__]
        for field, table in p.vocabulary.items():
            lines += ["", f"[partners.{p.name}.vocabulary.{field}]"]
            lines += [f"{q(k)} = {q(v)}" for k, v in table.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
