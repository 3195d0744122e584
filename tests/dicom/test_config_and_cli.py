"""The [dicom] keys this node adds (peers, limits, spool), and `imaging-sync serve dicom` being registered."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import cli
from imaging_sync.config import DicomConfig, DicomPeer, load_settings
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


def test_the_removed_calling_ae_allowlist_fails_at_start_saying_what_to_write_instead(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[dicom]\nallowed_calling_aets = ["PACS1", "WS2"]\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ={})
    assert exc.value.key == "dicom.allowed_calling_aets"
    assert '[dicom.peers.PACS1] operations = ["echo", "find", "move"]' in exc.value.reason and "[dicom.peers.WS2]" in exc.value.reason
    with pytest.raises(ConfigError) as exc:
        load_settings(None, environ={"IMAGING_SYNC__DICOM__ALLOWED_CALLING_AETS": "PACS1"})
    assert exc.value.key == "dicom.allowed_calling_aets" and "IMAGING_SYNC__DICOM__PEERS__" in exc.value.reason


def test_peers_come_from_the_file_or_the_environment_and_are_matched_ignoring_case(tmp_path: Path) -> None:
    settings = load_settings(None, environ={"IMAGING_SYNC__DICOM__PEERS__PACS__OPERATIONS": "find,move",
                                            "IMAGING_SYNC__DICOM__PEERS__PACS__ADDRESSES": '["10.1.2.3", "10.9.0.0/16"]'})
    peer = settings.dicom.peer("PACS")
    assert peer is not None and peer.operations == ["find", "move"] and peer.addresses == ["10.1.2.3", "10.9.0.0/16"]
    config = tmp_path / "c.toml"
    config.write_text('[dicom.peers.HOSPITAL_PACS]\noperations = ["echo", "find"]\naddresses = ["10.1.2.3"]\n')
    overridden = load_settings(config, environ={"IMAGING_SYNC__DICOM__PEERS__HOSPITAL_PACS__OPERATIONS": "echo"})
    assert overridden.dicom.peers == {"HOSPITAL_PACS": DicomPeer(operations=["echo"], addresses=["10.1.2.3"])}
    assert load_settings(None, environ={}).dicom.peers == {}  # deny by default: nobody is served


@pytest.mark.parametrize(
    ("toml", "key", "reason"),
    [
        ('[dicom.peers.PACS]\naddresses = ["10.1.2.3"]\n', "dicom.peers.PACS", "operations"),
        ('[dicom.peers.PACS]\noperations = ["find", "store"]\n', "dicom.peers.PACS.operations[1]", "store"),
        ('[dicom.peers.PACS]\noperations = []\n', "dicom.peers.PACS.operations", "at least one"),
        ('[dicom.peers.PACS]\noperations = ["find"]\naddresses = ["pacs.hospital.example"]\n', "dicom.peers.PACS.addresses", "not an IP address"),
        ('[dicom.peers.PACS]\noperations = ["find"]\n[dicom.peers.pacs]\noperations = ["get"]\n', "dicom.peers", "same AE title"),
        ('[dicom]\nmax_identifier_bytes = 100\n', "dicom.max_identifier_bytes", ""),
    ],
)
def test_a_bad_peer_or_limit_fails_at_start_naming_the_key(tmp_path: Path, toml: str, key: str, reason: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_settings(config, environ={})
    assert exc.value.key == key and reason in exc.value.reason


def test_local_peers_for_the_demo_come_only_from_loopback_and_keep_what_is_configured() -> None:
    base = DicomConfig(peers={"FINDSCU": DicomPeer(operations=["find"], addresses=["10.0.0.5"])})
    config = base.with_local_peers({"FINDSCU": ["echo", "find"], "ISYNC_DOCTOR": ["echo"]})
    assert config.peers["FINDSCU"] == DicomPeer(operations=["find"], addresses=["10.0.0.5"])
    assert config.peers["ISYNC_DOCTOR"] == DicomPeer(operations=["echo"], addresses=["127.0.0.1", "::1"])
