"""Background work that leaves the CPU to the answers: run in a thread of its own at a lower priority.

The audit sealer hashes every row written since its last run: at 200 searches
a second that is a burst of one to three seconds of one core each minute. At
normal priority that burst took a core from the API workers, and the searches'
p99 over a minute holding a seal rose by about 9 % (``bench/README.md``, "Audit
trail"). Niced, the seal runs on the CPU the answers leave idle and takes a
little longer; nothing waits for it.

Only that thread is niced (Linux schedules threads, and ``setpriority`` with a
thread id sets one thread's nice value): an unprivileged process cannot lower
its nice value again, so niceness must never be raised on the caller's thread,
which in a Celery worker runs every other task afterwards.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

BACKGROUND_NICENESS = 10  # CFS weight 110 against 1,024 at 0: a tenth of a core contended for, all of an idle one


def run_at_low_priority(work: Callable[[], T], *, niceness: int = BACKGROUND_NICENESS, name: str = "low-priority") -> T:
    """``work()`` in a new thread ``niceness`` steps nicer than the caller; its result, or its exception re-raised here.

    Where threads cannot be niced alone (not Linux), ``work`` runs at the caller's priority.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        lower_this_thread(niceness)
        try:
            outcome.append(work())
        except BaseException as exc:  # handed to the caller, who decides
            failure.append(exc)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def lower_this_thread(niceness: int) -> None:
    """Raise the calling thread's nice value by ``niceness`` (Linux only; elsewhere it would nice the whole process)."""
    if sys.platform != "linux" or niceness <= 0:
        return
    tid = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, tid)
    os.setpriority(os.PRIO_PROCESS, tid, min(19, current + niceness))
