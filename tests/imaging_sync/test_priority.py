"""Background work runs in a thread of its own, niced; its result and its errors reach the caller, whose priority stays."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from imaging_sync.priority import BACKGROUND_NICENESS, run_at_low_priority

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="threads are niced alone on Linux only")


def _my_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_result_comes_back_from_another_thread() -> None:
    assert run_at_low_priority(lambda: threading.current_thread().name, name="sealer") == "sealer"


def test_an_exception_reaches_the_caller_as_it_was() -> None:
    def broken() -> None:
        raise LookupError("row 7 went missing")

    with pytest.raises(LookupError, match="row 7 went missing"):
        run_at_low_priority(broken)


@linux_only
def test_the_work_runs_nicer_and_the_callers_thread_keeps_its_priority() -> None:
    before = _my_nice()

    inside = run_at_low_priority(_my_nice)

    assert inside == min(19, before + BACKGROUND_NICENESS)
    assert _my_nice() == before, "the caller (a Celery worker's only thread) could never lower it again"
