"""The partner simulator's fault injection and request record.

:class:`Faults` queues failures for the next requests (5xx, 429, delays,
dropped connections, expired tokens, a listing request parked on a
:class:`PageGate`); :class:`RequestLog` records every request as answered
(:class:`RecordedRequest`), so tests can assert retries and backoff.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Endpoint",
    "Faults",
    "PageGate",
    "RecordedRequest",
    "RequestLog",
]

Endpoint = Literal["listing", "study", "health", "any"]
"""Which requests a fault applies to: the listing, one-study GETs, health, or all."""
_ENDPOINTS: tuple[Endpoint, ...] = ("listing", "study", "health", "any")


# --- faults ----------------------------------------------------------------------------


class PageGate:
    """A listing request parked until the test releases it (``threading.Event``-like).

    ``set``/``release`` let the parked request proceed; ``wait_until_blocked``
    tells the test the request has arrived, which is the moment to, say,
    SIGKILL the syncing process between two pages.
    """

    def __init__(self) -> None:
        self._blocked = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    set = release

    def is_set(self) -> bool:
        return self._released.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until released (Event semantics)."""
        return self._released.wait(timeout)

    @property
    def blocked(self) -> bool:
        return self._blocked.is_set()

    def wait_until_blocked(self, timeout: float | None = None) -> bool:
        """Wait until the gated request has arrived and is parked; ``False`` on timeout."""
        return self._blocked.wait(timeout)

    def _park(self) -> None:
        self._blocked.set()
        self._released.wait()


@dataclass(frozen=True, slots=True)
class _Shot:
    """One queued fault, consumed by the next request of its endpoint."""

    kind: Literal["fail", "rate_limit", "delay", "drop"]
    endpoint: Endpoint
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0


class Faults:
    """Failures to inject into the next requests; settable at any time, thread-safe.

    Each ``*_next`` call queues ``n`` shots; a request consumes the oldest shot
    queued for its endpoint (the listing, by default). Only authenticated
    requests consume shots or count toward :meth:`block_on_page`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shots: list[_Shot] = []
        self._gates: list[tuple[int, PageGate]] = []  # (listing number to park, gate)
        self._issued: list[PageGate] = []  # every gate handed out, parked or pending
        self._listings = 0
        self._epoch = 0

    def fail_next(self, n: int = 1, status: int = 503, *, endpoint: Endpoint = "listing") -> None:
        """The next ``n`` requests answer ``status`` (a 5xx): transient server errors."""
        if not 500 <= status <= 599:
            raise ValueError('Argument "status" must be a 5xx status.')
        self._queue(n, _Shot("fail", endpoint, status=status))

    def rate_limit_next(
        self, n: int = 1, retry_after: str | int | None = "1", *, endpoint: Endpoint = "listing"
    ) -> None:
        """The next ``n`` requests answer 429 with ``Retry-After`` exactly as given.

        ``retry_after`` may be seconds or an HTTP date (RFC 9110 section 10.2.3);
        ``None`` sends no header.
        """
        value = None if retry_after is None else str(retry_after)
        self._queue(n, _Shot("rate_limit", endpoint, status=429, retry_after=value))

    def delay_next(self, n: int, seconds: float, *, endpoint: Endpoint = "listing") -> None:
        """The next ``n`` requests sleep ``seconds`` before answering normally (timeouts)."""
        if seconds < 0:
            raise ValueError('Argument "seconds" must not be negative.')
        self._queue(n, _Shot("delay", endpoint, seconds=seconds))

    def drop_connection_next(self, n: int = 1, *, endpoint: Endpoint = "listing") -> None:
        """The next ``n`` requests get their connection closed with no response at all."""
        self._queue(n, _Shot("drop", endpoint))

    def expire_tokens(self) -> None:
        """Every page token issued so far now answers 410 Gone."""
        with self._lock:
            self._epoch += 1

    def block_on_page(self, k: int) -> PageGate:
        """Park the ``k``-th listing request from now (1-based) until the gate is released."""
        if k < 1:
            raise ValueError('Argument "k" must be at least 1.')
        gate = PageGate()
        with self._lock:
            self._gates.append((self._listings + k, gate))
            self._issued.append(gate)
        return gate

    def clear(self) -> None:
        """Drop queued shots and release every gate (tokens stay expired)."""
        with self._lock:
            self._shots.clear()
        self._release_gates()

    @property
    def token_epoch(self) -> int:
        with self._lock:
            return self._epoch

    def _queue(self, n: int, shot: _Shot) -> None:
        if n < 0:
            raise ValueError('Argument "n" must not be negative.')
        if shot.endpoint not in _ENDPOINTS:
            raise ValueError(f'Argument "endpoint" must be one of {", ".join(_ENDPOINTS)}.')
        with self._lock:
            self._shots.extend([shot] * n)

    def _take(self, endpoint: Endpoint) -> _Shot | None:
        with self._lock:
            for position, shot in enumerate(self._shots):
                if shot.endpoint in (endpoint, "any"):
                    return self._shots.pop(position)
        return None

    def _release_gates(self) -> None:
        """Release every gate, parked or pending: nothing may wait past a stop."""
        with self._lock:
            gates, self._issued, self._gates = self._issued, [], []
        for gate in gates:
            gate.release()

    def _count_listing(self) -> PageGate | None:
        """Count one listing request; return the gate it must park on, if any."""
        with self._lock:
            self._listings += 1
            for position, (target, gate) in enumerate(self._gates):
                if target == self._listings:
                    del self._gates[position]
                    return gate
        return None


# --- request log -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the simulator answered it; ``status`` is None for a dropped one."""

    method: str
    path: str
    query: dict[str, str]
    status: int | None
    at: float  # time.monotonic() on arrival, to check backoff and Retry-After


class RequestLog:
    """Thread-safe, append-only record of requests, so tests can assert retries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[RecordedRequest] = []

    def append(self, request: RecordedRequest) -> None:
        with self._lock:
            self._items.append(request)

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    def for_path(self, path: str) -> list[RecordedRequest]:
        return [request for request in self.snapshot() if request.path == path]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[RecordedRequest]:
        return iter(self.snapshot())

    def __getitem__(self, index: int) -> RecordedRequest:
        with self._lock:
            return self._items[index]
