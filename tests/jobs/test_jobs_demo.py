"""The README's first command, end to end: the demo serves the API and the DICOM node over real data."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE

from serve_process import serving

pytestmark = pytest.mark.slow


def test_demo_serves_studies_urls_and_dicom_until_stopped(tmp_path: Path) -> None:
    args = ["demo", "--studies", "6", "--api-port", "0", "--dicom-port", "0", "--workdir", str(tmp_path / "demo")]
    with serving(args, {**os.environ, "PYTHONUNBUFFERED": "1"}, ready=lambda line: "/usr/bin/findscu" in line, timeout=120) as text:
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
