"""The [dicom] keys this node adds, and `imaging-sync serve dicom` being registered."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import cli
from imaging_sync.config import load_settings
from imaging_sync.errors import ConfigError


def test_spool_dir_and_pdu_size_are_validated_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[dicom]\nspool_dir = "{tmp_path / "missing"}"\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ={})
    assert exc.value.key == "dicom.spool_dir"
    config.write_text("[dicom]\nmax_pdu_bytes = 100\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ={})
    assert exc.value.key == "dicom.max_pdu_bytes"
    config.write_text(f'[dicom]\nspool_dir = "{tmp_path}"\nmax_pdu_bytes = 0\n')
    assert load_settings(config, environ={}).dicom.spool_dir == str(tmp_path)


def test_serve_dicom_is_a_subcommand_of_serve() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["serve", "dicom", "--help"])
    assert result.exit_code == 0 and "C-FIND" in result.output
