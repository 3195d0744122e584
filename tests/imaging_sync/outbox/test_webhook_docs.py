"""docs/webhooks.md tells receivers the truth: its verification snippets accept what the sink really sends."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.webhook_receiver import WebhookReceiver
from imaging_sync.config import Secret, WebhookConfig
from imaging_sync.outbox.relay import Event
from imaging_sync.outbox.webhook import WebhookSink

DOC = (Path(__file__).parents[3] / "docs" / "webhooks.md").read_text(encoding="utf-8")
SECRET = "whsec-test-secret"


def _block(language: str) -> str:
    blocks = re.findall(rf"^```{language}\n(.*?)^```", DOC, re.S | re.M)
    assert len(blocks) == 1, f"expected one {language} block in docs/webhooks.md"
    return blocks[0]


@pytest.fixture
def delivered() -> Iterator[dict[str, Any]]:
    """One real signed delivery, as the receiver got it."""
    with WebhookReceiver() as receiver:
        sink = WebhookSink(WebhookConfig(url=receiver.url, timeout_seconds=5), Secret(SECRET))
        event = Event(id=uuid.uuid4(), type="study.updated", aggregate_id=uuid.uuid4(), payload={"study_id": "x", "partner": "b"}, attempt=1)
        sink.deliver([event])
        sink.close()
        yield receiver.requests[0]


def test_the_documented_python_check_accepts_a_real_delivery_and_refuses_a_tampered_one(delivered: dict[str, Any]) -> None:
    namespace: dict[str, Any] = {}
    exec(_block("python"), namespace)  # the snippet as published
    verify = namespace["verify"]
    headers, body = delivered["headers"], delivered["body"]
    assert verify(SECRET.encode(), headers, body)
    assert not verify(b"another-secret", headers, body)
    assert not verify(SECRET.encode(), headers, body.replace(b"study.updated", b"study.deleted"))
    assert not verify(SECRET.encode(), {**headers, "X-Imaging-Sync-Timestamp": str(int(headers["X-Imaging-Sync-Timestamp"]) - 3600)}, body)


def test_the_documented_openssl_line_computes_the_signature_sent(delivered: dict[str, Any], tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    (tmp_path / "body.json").write_bytes(delivered["body"])
    line = _block("sh").strip()
    done = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "TIMESTAMP": delivered["headers"]["X-Imaging-Sync-Timestamp"], "SECRET": SECRET})
    assert done.stdout.strip() == delivered["headers"]["X-Imaging-Sync-Signature"], done.stderr


def test_the_documented_headers_and_body_shape_are_what_the_sink_sends(delivered: dict[str, Any]) -> None:
    assert {"X-Imaging-Sync-Timestamp", "X-Imaging-Sync-Signature"} <= set(delivered["headers"])
    assert "HMAC(secret, \"<timestamp>.<body>\")" in DOC
    event = delivered["json"]["events"][0]
    assert set(event) == {"id", "type", "aggregate_id", "attempt", "payload"}
