"""Fetch the next page while the current one is being written.

Only the HTTP round trip runs ahead, in a thread that mostly waits on the
network; decoding stays in the caller's thread. (Profiling showed a decoding
thread starving the writer of the GIL: each database round trip then waited
for the interpreter's 5 ms switch interval.) The depth is small so memory
stays bounded and a page is never fetched far ahead of what is committed.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Iterator
from typing import TypeVar, cast

T = TypeVar("T")
_DONE = object()


def prefetch(source: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Iterate ``source`` in a background thread, ``depth`` items ahead; errors re-raise here."""
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            slots.put(exc)

    # The caller's context (run id, partner) travels with the thread: its log lines belong to the run.
    context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(produce,), name="page-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield cast(T, item)  # neither the end marker nor an error: one of source's items
    finally:
        stop.set()
        worker.join(timeout=5)
