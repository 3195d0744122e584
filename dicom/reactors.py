"""pynetdicom's two reactor threads per association wait by sleeping; here they wait for what they wait for.

Each association has a DUL thread (reads and writes PDUs) and an
association thread (serves DIMSE messages). Both loop, and when there was
nothing to do they sleep 1 ms (``dul._run_loop_delay``, and a fixed
``time.sleep(0.001)`` in ``Association._run_reactor``). Every request and
every answer crosses both loops, so each exchange (A-ASSOCIATE, a C-FIND
request, A-RELEASE, each C-STORE response of a retrieve) waited up to 2 ms
while the machine was idle: the measured gap between a C-ECHO of ours and
one of Orthanc's (DCMTK blocks on its socket).

The two modules' ``time`` is replaced with :class:`_ReactorTime`, the real
``time`` module but for the reactors' idle sleeps: the DUL thread waits in
``select`` on its socket (it wakes when a PDU arrives; what we send is still
picked up within the same 1 ms), the association thread on its DIMSE message
queue (it wakes when a message is complete, or, with :func:`wake_on_acse`,
when a release or abort arrives). Neither polls faster, so an
idle association costs no more CPU than before. Guarded, with the version
pin, by ``tests/dicom/test_pynetdicom_internals.py``.
"""

from __future__ import annotations

import select
import threading
import time as _time
from types import ModuleType
from typing import Any

from pynetdicom import association, dul

ASSOCIATION_LOOP_SLEEP = 0.001  # Association._run_reactor's fixed sleep


class _ReactorTime(ModuleType):
    """The ``time`` module, as pynetdicom's ``dul`` and ``association`` modules see it."""

    def __init__(self) -> None:
        super().__init__("time")

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        if isinstance(thread, dul.DULServiceProvider) and seconds == thread._run_loop_delay:
            _wait_for_the_socket(thread, seconds)
        elif isinstance(thread, association.Association) and seconds == ASSOCIATION_LOOP_SLEEP:
            _wait_for_a_message(thread, seconds)
        else:
            _time.sleep(seconds)


def _wait_for_the_socket(provider: Any, seconds: float) -> None:
    sock = getattr(getattr(provider, "socket", None), "socket", None)
    if sock is None or not provider.to_provider_queue.empty():
        _time.sleep(0 if sock is not None else seconds)
        return
    try:
        select.select([sock], [], [], seconds)
    except (OSError, ValueError):  # closed under us: the loop finds out next
        _time.sleep(seconds)


def wake_on_acse(assoc: Any) -> None:
    """Also wake the association thread when the DUL hands it an A-RELEASE or A-ABORT (they do not go through the
    DIMSE queue it waits on): without this each release waited out the 1 ms. Called when the connection opens."""
    to_user, messages = assoc.dul.to_user_queue, assoc.dimse.msg_queue
    put = to_user.put

    def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        with messages.not_empty:
            messages.not_empty.notify_all()

    to_user.put = put_and_wake


def _wait_for_a_message(assoc: Any, seconds: float) -> None:
    messages = assoc.dimse.msg_queue
    with messages.not_empty:
        if not messages.queue:
            messages.not_empty.wait(seconds)


REACTOR_TIME = _ReactorTime()
dul.time = REACTOR_TIME  # type: ignore[attr-defined]  # the modules' own `import time`
association.time = REACTOR_TIME  # type: ignore[attr-defined]

__all__ = ["REACTOR_TIME", "wake_on_acse"]
