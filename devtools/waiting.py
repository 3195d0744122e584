"""Waiting on a condition with a bound, for tests and benchmarks: never a fixed sleep."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(predicate: Callable[[], T], *, timeout: float = 15.0, interval: float = 0.02, what: str = "condition") -> T:
    """Poll ``predicate`` every ``interval`` seconds until it returns something truthy, and return that.

    AssertionError naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Does something accept TCP connections on host:port?"""
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0
