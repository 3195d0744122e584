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
``select`` on its socket and on a pipe written when a PDU is queued to send
(:func:`wake_reactors`), the association thread on its DIMSE message queue
(it wakes when a message is complete, or when a release or abort arrives). Neither polls faster, so an
idle association costs no more CPU than before. Guarded, with the version
pin, by ``tests/dicom/test_pynetdicom_internals.py``.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time as _time
import weakref
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
    parking: _Parking | None = getattr(provider, "_parking", None)
    if parking is not None and provider.to_provider_queue.empty():
        parking.park(provider)
        return
    sock = getattr(getattr(provider, "socket", None), "socket", None)
    if sock is None or not provider.to_provider_queue.empty():
        _time.sleep(0 if sock is not None else seconds)
        return
    waker: _Waker | None = getattr(provider, "_waker", None)
    try:
        readable, _, _ = select.select([sock] if waker is None else [sock, waker.fileno()], [], [], seconds)
    except (OSError, ValueError):  # closed under us: the loop finds out next
        _time.sleep(seconds)
        return
    if waker is not None and waker.fileno() in readable:
        waker.drain()


class _Waker:
    """A pipe the DUL thread also waits on: written when something is queued for it to send."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._lock = threading.Lock()
        self._closed = False

    def fileno(self) -> int:
        return self._read

    def wake(self) -> None:
        with self._lock:  # never write to a descriptor number that close() gave back (it may be another socket's now)
            if not self._closed:
                with contextlib.suppress(BlockingIOError):  # full: the DUL has wake-ups enough waiting
                    os.write(self._write, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._read, 4096):
                continue

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._read)
                os.close(self._write)


class _Parking:
    """A DUL thread held in its idle wait, off its socket, while another thread reads and writes the socket itself."""

    def __init__(self) -> None:
        self.parked = threading.Event()
        self.resume = threading.Event()

    def park(self, provider: Any) -> None:
        self.parked.set()
        while not self.resume.wait(0.5):
            if provider._kill_thread:  # the association is being torn down (AE.shutdown, say)
                return
        provider._idle_timer.restart()  # the time parked was not the peer's silence


def park_dul(assoc: Any, timeout: float) -> bool:
    """Hold the association's DUL thread off its socket; True once it is held (then :func:`unpark_dul` without fail).

    The DUL is held only where it would otherwise sleep: with nothing queued
    to send and no PDU to read. Whoever parks it owns the socket until
    :func:`unpark_dul`; the DUL's timers stand still meanwhile. False (and
    nothing held) if the DUL did not reach its idle wait in ``timeout`` seconds:
    its thread has ended, or the peer keeps sending.
    """
    provider = assoc.dul
    parking = _Parking()
    provider._parking = parking
    waker: _Waker | None = getattr(provider, "_waker", None)
    if waker is not None:
        waker.wake()
    if parking.parked.wait(timeout):
        return True
    provider._parking = None
    parking.resume.set()
    return False


def unpark_dul(assoc: Any) -> None:
    """Give the socket back to the DUL thread held by :func:`park_dul`."""
    parking: _Parking | None = getattr(assoc.dul, "_parking", None)
    if parking is not None:
        assoc.dul._parking = None
        parking.resume.set()


def wake_reactors(assoc: Any) -> None:
    """Wake each of the association's reactors when there is work for it, not only when its 1 ms is up.

    The DUL thread: when a PDU is queued to send (an A-ASSOCIATE-AC, a response, an A-RELEASE-RP); it already
    wakes when one arrives. The association thread: when the DUL hands it an A-RELEASE or A-ABORT (they do not
    go through the DIMSE queue it waits on). Called when the connection opens; :func:`release_reactors` when it
    closes gives the pipe's descriptors back.
    """
    dul_provider, messages = assoc.dul, assoc.dimse.msg_queue
    waker = _Waker()
    dul_provider._waker = waker
    weakref.finalize(dul_provider, waker.close)  # in case a connection ends without EVT_CONN_CLOSE
    send_put, user_put = dul_provider.to_provider_queue.put, dul_provider.to_user_queue.put

    def put_and_wake_dul(item: Any, block: bool = True, timeout: float | None = None) -> None:
        send_put(item, block, timeout)
        waker.wake()

    def put_and_wake_association(item: Any, block: bool = True, timeout: float | None = None) -> None:
        user_put(item, block, timeout)
        with messages.not_empty:
            messages.not_empty.notify_all()

    dul_provider.to_provider_queue.put = put_and_wake_dul
    dul_provider.to_user_queue.put = put_and_wake_association


def release_reactors(assoc: Any) -> None:
    waker: _Waker | None = getattr(assoc.dul, "_waker", None)
    if waker is not None:
        waker.close()


def _wait_for_a_message(assoc: Any, seconds: float) -> None:
    messages = assoc.dimse.msg_queue
    with messages.not_empty:
        if not messages.queue:
            messages.not_empty.wait(seconds)


REACTOR_TIME = _ReactorTime()
dul.time = REACTOR_TIME  # type: ignore[attr-defined]  # the modules' own `import time`
association.time = REACTOR_TIME  # type: ignore[attr-defined]

__all__ = ["REACTOR_TIME", "park_dul", "release_reactors", "unpark_dul", "wake_reactors"]
