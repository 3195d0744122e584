"""`imaging-sync serve` with no subcommand: API, DICOM node, embedded S3 and scheduler in one process, no broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from serve_process import serving

pytestmark = pytest.mark.slow

CONFIG = """
[database]
url = "sqlite:///{db}"

[storage]
embedded = true

[storage.buckets.serve-test-dicom]
region = "eu-west-1"

[api]
port = 0

[dicom]
port = 0
ae_title = "ALL_IN_ONE"

[dicom.peers.SERVE_TEST]
operations = ["echo"]
addresses = ["127.0.0.1"]

[jobs]
timezone = "Asia/Seoul"
"""


def test_serve_runs_every_service_in_one_process_until_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "imaging-sync.toml"
    config.write_text(CONFIG.format(db=tmp_path / "index.db"))
    env = {**os.environ, "IMAGING_SYNC_CONFIG": str(config), "PYTHONUNBUFFERED": "1", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    assert subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], env=env, capture_output=True, timeout=60).returncode == 0
    with serving(["serve"], env, ready=lambda line: line.startswith("running")) as text:
        api = re.search(r"REST API on (http://\S+)/api/v1", text)
        dicom = re.search(r"DICOM node ALL_IN_ONE on 127\.0\.0\.1:(\d+)", text)
        assert api and dicom and "embedded S3 on http://127.0.0.1:" in text and "scheduler in Asia/Seoul" in text, text
        assert httpx.get(f"{api.group(1)}/health", timeout=10).status_code == 200
        assert httpx.get(f"{api.group(1)}/ready", timeout=10).status_code == 200
        ae = AE(ae_title="SERVE_TEST")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", int(dicom.group(1)), ae_title="ALL_IN_ONE")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
