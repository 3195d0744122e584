"""Skip a test that lacks an outside service, or fail it where the services are mandatory (CI).

Importable from every test folder, as ``cli_run`` is. ``.ci/run`` sets
``IMAGING_SYNC_REQUIRE_SERVICES=1``: there a missing Redis, RabbitMQ, Chromium
or Mermaid CLI is a failure naming what is missing, never a quiet skip.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_SERVICES = os.environ.get("IMAGING_SYNC_REQUIRE_SERVICES") == "1"


def require(problem: str | None) -> None:
    """Skip with the reason, or fail when the services are mandatory; nothing when ``problem`` is None."""
    if problem:
        if REQUIRE_SERVICES:
            pytest.fail(f"{problem} (IMAGING_SYNC_REQUIRE_SERVICES=1 forbids skipping)")
        pytest.skip(problem)
