"""The scheduled seal hashes at a lower priority than the answers: every statement it sends comes from a niced thread."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import pytest
from sqlalchemy import event

from imaging_sync import audit
from imaging_sync.audit import AuditEvent
from imaging_sync.config import DatabaseConfig, Settings
from imaging_sync.core import Core
from imaging_sync.priority import BACKGROUND_NICENESS
from jobs import work


@pytest.mark.skipif(sys.platform != "linux", reason="threads are niced alone on Linux only")
def test_the_seal_job_runs_its_statements_from_a_niced_thread_and_seals_every_row(db_url: str) -> None:
    core = Core.open(Settings(database=DatabaseConfig(url=db_url)))
    try:
        for n in range(3):
            audit.record_now(core.engine, AuditEvent(channel="http", actor="k", action="read", outcome="success", resource_type="study", resource_id=f"s{n}"))
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen: list[tuple[str, int]] = []

        def statement(*_: Any) -> None:
            seen.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))

        event.listen(core.engine, "before_cursor_execute", statement)
        sealed, deadline = 0, time.monotonic() + 30
        while sealed < 3 and time.monotonic() < deadline:  # PostgreSQL: a transaction open anywhere on the server holds the horizon
            sealed += work.seal_audit(core, None)["rows"]
            time.sleep(0.1)
        event.remove(core.engine, "before_cursor_execute", statement)

        assert sealed == 3
        assert seen and {name for name, _ in seen} == {"audit-sealer"}
        assert {nice for _, nice in seen} == {min(19, mine + BACKGROUND_NICENESS)}
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    finally:
        core.close()
