"""The README's first command, end to end: the demo serves the API and the DICOM node over real data."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE

pytestmark = pytest.mark.slow


def test_demo_serves_studies_urls_and_dicom_until_stopped(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "imaging_sync", "demo", "--studies", "6", "--api-port", "0", "--dicom-port", "0", "--workdir", str(tmp_path / "demo")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline() if process.stdout else ""
            if not line and process.poll() is not None:
                break
            output.append(line)
            if "/usr/bin/findscu" in line:
                break
        text = "".join(output)
        api = re.search(r"Bearer (isk_\S+)' '(http://127\.0\.0\.1:\d+/api/v1)/studies\?limit=3'", text)
        dicom = re.search(r"-aec (\S+) 127\.0\.0\.1 (\d+)", text)
        assert api and dicom, text
        key, base = api.groups()
        headers = {"Authorization": f"Bearer {key}"}

        studies = httpx.get(f"{base}/studies", params={"limit": 50}, headers=headers, timeout=30).json()
        assert len(studies["items"]) >= 6
        detail = httpx.get(f"{base}/studies/{studies['items'][0]['id']}", headers=headers, timeout=30).json()
        series_id = detail["series"][0]["id"]
        urls = httpx.get(f"{base}/series/{series_id}/urls", headers=headers, timeout=30).json()
        first = urls["items"][0] if isinstance(urls, dict) else urls[0]
        body = httpx.get(first["url"], timeout=30).content
        assert body[128:132] == b"DICM"  # a real DICOM file, from the embedded S3 bucket

        ae = AE(ae_title="DEMO_TEST")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", int(dicom.group(2)), ae_title=dicom.group(1))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            remaining, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, "".join(output) + remaining
