"""One sync per partner at a time, across processes and machines.

PostgreSQL: a session-level advisory lock held on a dedicated connection for
the whole run. It is released when the run ends *or when the process dies*
(the server drops the session), so a SIGKILLed sync never leaves a stale lock.
SQLite (one machine by nature): an exclusive ``flock`` on a file beside the
database file, which the kernel releases on process death in the same way.
"""

from __future__ import annotations

import fcntl
import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

from imaging_sync.errors import SyncLockedError

_LOCK_CLASS = 0x1A6E5C  # first key of the two-key advisory lock: "imaging-sync"
_memory_locks: dict[str, threading.Lock] = {}
_memory_guard = threading.Lock()


@contextmanager
def partner_lock(engine: Engine, partner: str) -> Iterator[None]:
    """Hold the partner's sync lock or raise SyncLockedError at once (never waits)."""
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, partner):
            yield
    else:
        with _file_lock(engine, partner):
            yield


def _lock_key(partner: str) -> int:
    key = zlib.crc32(partner.encode())
    return key - 2**32 if key >= 2**31 else key  # int4, as pg_try_advisory_lock(int, int) wants


@contextmanager
def _advisory_lock(engine: Engine, partner: str) -> Iterator[None]:
    with engine.connect() as conn:
        params = {"cls": _LOCK_CLASS, "key": _lock_key(partner)}
        got = conn.execute(text("SELECT pg_try_advisory_lock(:cls, :key)"), params).scalar_one()
        conn.commit()
        if not got:
            raise SyncLockedError(partner)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:cls, :key)"), params)
            conn.commit()


@contextmanager
def _file_lock(engine: Engine, partner: str) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:":
        with _memory_lock(partner):
            yield
        return
    path = Path(f"{database}.sync-{partner}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncLockedError(partner) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _memory_lock(partner: str) -> Iterator[None]:
    with _memory_guard:
        lock = _memory_locks.setdefault(partner, threading.Lock())
    if not lock.acquire(blocking=False):
        raise SyncLockedError(partner)
    try:
        yield
    finally:
        lock.release()
