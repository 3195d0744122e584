"""Partner simulator: serves the Partner Export API v1 (``reference-v1``) over real HTTP.

Tests start it in a background thread and sync against it exactly as against a
partner; benchmarks point it at 100,000 generated studies; the demo runs it in
the foreground (``python -m imaging_sync.testing.simulator``). The wire format
is the Partner Export API v1 contract (``partner-api.md``): listing ordered by
``(updated_at, id)``, inclusive ``updated_since``, opaque expiring page
tokens, 401/403/410/429/5xx with JSON bodies.

Three pieces, each usable on its own:

* :class:`PartnerDataset` - generated base studies (never materialised) plus an
  overlay of changes made by tests, and the DICOM-vocabulary truth a correct
  sync must reach (:meth:`PartnerDataset.expected_state`).
* :class:`Faults` - failures to inject into the next requests (5xx, 429,
  delays, dropped connections, expired tokens, a request parked on a gate).
* :class:`PartnerSimulator` - the HTTP server that ties them together.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import hmac
import logging
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec

from imaging_sync.testing.datagen import (
    DatasetSpec,
    format_timestamp,
    from_epoch_us,
    generate_study,
    to_dicom_study,
    to_epoch_us,
)

__all__ = [
    "Endpoint",
    "Faults",
    "PageGate",
    "PartnerDataset",
    "PartnerSimulator",
    "RecordedRequest",
    "RequestLog",
    "SimulatorConfig",
    "main",
    "parse_rfc3339",
]

logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100
_JSON_HEADERS = (("Content-Type", "application/json"),)
_SHUTDOWN_POLL_SECONDS = 0.02  # how soon stop() returns; serve_forever polls this often

# A listing entry's sort key: (updated_at in epoch microseconds, id, sequence).
# The sequence (0 for generated studies, unique otherwise) orders entries that
# share (updated_at, id), which raw injections are allowed to do.
SortKey = tuple[int, str, int]

Endpoint = Literal["listing", "study", "health", "any"]
"""Which requests a fault applies to: the listing, one-study GETs, health, or all."""
_ENDPOINTS: tuple[Endpoint, ...] = ("listing", "study", "health", "any")


# --- RFC 3339 ----------------------------------------------------------------------

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


def parse_rfc3339(text: str) -> int:
    """Epoch microseconds of an RFC 3339 timestamp (``Z`` or a numeric offset).

    Digits beyond microseconds round *up*: ``updated_since`` is inclusive, so an
    item stamped ``…00.123456Z`` is not "since" ``…00.1234561Z``.
    Raises ``ValueError`` for anything else, including offset-less times.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, offset = match.group(7) or "", match.group(8)
    tz = timezone.utc
    if offset not in ("Z", "z"):
        sign = -1 if offset[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    moment = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    micros = int(fraction[:6].ljust(6, "0")) + (1 if fraction[6:].strip("0") else 0)
    return to_epoch_us(moment) + micros


# --- the dataset -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    """One overlay or raw listing entry, stored encoded so nobody can mutate it."""

    key: SortKey
    body: msgspec.Raw
    study_id: str | None  # None for raw injections: they override nothing
    deleted: bool = False


def _copy_json(value: Any) -> Any:
    """Deep copy of a JSON value (faster than copy.deepcopy, and rejects non-JSON)."""
    return msgspec.json.decode(msgspec.json.encode(value))


class PartnerDataset:
    """What the partner has now: generated base studies plus an overlay of changes.

    Base study ``i`` is ``generate_study(spec, i)``, produced only when asked
    for, so 100,000 studies cost nothing until listed. Changes made by tests
    live in a small sorted overlay and are stamped by a simulator clock that
    is strictly later than every base item, as a partner's commit would be.
    All methods are thread-safe (one lock): tests mutate while clients list.
    """

    def __init__(self, spec: DatasetSpec, *, clock_step: timedelta = timedelta(milliseconds=1)):
        if clock_step <= timedelta(0):
            raise ValueError('Argument "clock_step" must be positive.')
        self.spec = spec
        self._lock = threading.RLock()
        self._entries: dict[int, _Entry] = {}  # sequence -> overlay or raw entry
        self._order: list[SortKey] = []  # sorted keys of _entries
        self._studies: dict[str, int] = {}  # study id -> sequence of its overlay entry
        self._next_seq = 1
        self._step_us = clock_step // timedelta(microseconds=1)
        self._clock_us = spec.base_updated_at_us(spec.studies - 1)  # the last generated study

    # Reading

    def item(self, study_id: str) -> dict[str, Any] | None:
        """The current wire item of a study (a copy), or ``None`` if it never existed."""
        with self._lock:
            seq = self._studies.get(study_id)
            if seq is not None:
                return msgspec.json.decode(self._entries[seq].body)
        index = self.spec.study_index(study_id)
        return None if index is None else generate_study(self.spec, index)

    def clock_now(self) -> datetime:
        """The latest ``updated_at`` the simulator clock has issued or seen."""
        with self._lock:
            return from_epoch_us(self._clock_us)

    def live_study_ids(self) -> list[str]:
        """Ids of every study the partner has and has not deleted, in id order."""
        with self._lock:
            overlay = {sid: self._entries[seq].deleted for sid, seq in self._studies.items()}
        live = [sid for sid, deleted in overlay.items() if not deleted]
        live.extend(
            sid for sid in map(self.spec.study_id, range(self.spec.studies)) if sid not in overlay
        )
        return sorted(live)

    def counts(self) -> dict[str, int]:
        """Cheap totals: live and deleted studies, raw injections, entries listed."""
        with self._lock:
            overlay = [self._entries[seq] for seq in self._studies.values()]
            raw = len(self._entries) - len(overlay)
        overridden = sum(1 for entry in overlay if self._is_base(entry.study_id))
        deleted = sum(1 for entry in overlay if entry.deleted)
        live = self.spec.studies - overridden + len(overlay) - deleted
        return {"live": live, "deleted": deleted, "raw": raw, "listed": live + deleted + raw}

    def expected_state(self) -> dict[str, dict[str, Any]]:
        """DICOM-vocabulary truth of every live study, keyed by Study Instance UID.

        This is what a correct sync of this partner must have stored: coded
        values mapped back through ``PARTNER_VOCABULARY`` and each location
        split into bucket and key. Raw injections are excluded (a correct sync
        rejects or ignores them). Raises ``ValueError`` if two live studies
        share a Study Instance UID, since no single truth exists then.
        """
        state: dict[str, dict[str, Any]] = {}
        owners: dict[str, str] = {}
        for study_id in self.live_study_ids():
            item = self.item(study_id)
            if item is None or item.get("deleted"):
                continue  # deleted between the two reads
            uid = item["study_instance_uid"]
            if uid in state:
                raise ValueError(
                    f"live studies {owners[uid]!r} and {study_id!r} "
                    f"share study_instance_uid {uid!r}"
                )
            owners[uid] = study_id
            state[uid] = to_dicom_study(item, self.spec.bucket)
        return state

    def _is_base(self, study_id: str | None) -> bool:
        return study_id is not None and self.spec.study_index(study_id) is not None

    # Changing (each change is a partner commit: a new updated_at)

    def update_study(
        self, study_id: str, mutate: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Apply ``mutate`` to a copy of a study and commit it with a new ``updated_at``.

        The study then lists after everything else, as a freshly changed study
        does. Raises ``KeyError`` for an unknown or deleted study (recreate a
        deleted one with :meth:`put_study`) and ``ValueError`` if ``mutate``
        changes the id.
        """
        with self._lock:
            item = self.item(study_id)
            if item is None:
                raise KeyError(f"unknown study {study_id!r}")
            if item.get("deleted"):
                raise KeyError(f"study {study_id!r} is deleted; use put_study to recreate it")
            mutate(item)
            if item.get("id") != study_id:
                raise ValueError(f"mutate must not change the id of study {study_id!r}")
            return self._commit(item, self._tick())

    def delete_study(self, study_id: str) -> dict[str, Any]:
        """Commit the contract's deleted form: id, updated_at, deleted, study_instance_uid."""
        with self._lock:
            item = self.item(study_id)
            if item is None:
                raise KeyError(f"unknown study {study_id!r}")
            tombstone = {
                "id": study_id,
                "updated_at": "",
                "deleted": True,
                "study_instance_uid": item["study_instance_uid"],
            }
            return self._commit(tombstone, self._tick())

    def remove_series(self, study_id: str, series_id: str) -> dict[str, Any]:
        """Commit the study without one series: the snapshot no longer lists it."""

        def drop(item: dict[str, Any]) -> None:
            kept = [series for series in item["series"] if series.get("id") != series_id]
            if len(kept) == len(item["series"]):
                raise KeyError(f"study {study_id!r} has no series {series_id!r}")
            item["series"] = kept

        return self.update_study(study_id, drop)

    def put_study(self, item: dict[str, Any], *, keep_updated_at: bool = False) -> dict[str, Any]:
        """Add or replace a whole study item.

        A new ``updated_at`` is stamped unless ``keep_updated_at``, which
        commits the item at the time it carries, possibly in the past: that is
        how a test simulates a late commit (clock skew, a long transaction).
        """
        study_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(study_id, str) or not study_id:
            raise ValueError("put_study needs a dict with a non-empty string 'id'")
        copy = _copy_json(item)
        with self._lock:
            if keep_updated_at:
                stamp = item.get("updated_at")
                if not isinstance(stamp, str):
                    raise ValueError(
                        "put_study(keep_updated_at=True) needs an RFC 3339 'updated_at'"
                    )
                epoch_us = parse_rfc3339(stamp)
                self._clock_us = max(self._clock_us, epoch_us)
            else:
                epoch_us = self._tick()
            return self._commit(copy, epoch_us, restamp=not keep_updated_at)

    def inject_raw(self, raw: object, *, sort_id: str, updated_at: datetime | None = None) -> str:
        """List an arbitrary JSON value, for tests of items a sync must reject.

        ``sort_id`` and ``updated_at`` (default: the next clock tick) place it
        in the listing; several raw entries may share a ``sort_id``. Raw
        entries override nothing, are never served by ``GET /v1/studies/{id}``
        and are left out of :meth:`expected_state`. Returns the RFC 3339
        ``updated_at`` it was placed at.
        """
        body = msgspec.Raw(msgspec.json.encode(raw))
        with self._lock:
            if updated_at is None:
                epoch_us = self._tick()
            else:
                epoch_us = to_epoch_us(updated_at)
                self._clock_us = max(self._clock_us, epoch_us)
            self._insert(_Entry((epoch_us, sort_id, self._take_seq()), body, None))
        return format_timestamp(epoch_us)

    def advance_clock(self, delta: timedelta) -> None:
        """Move the simulator clock forward, e.g. past a client's overlap window."""
        if delta < timedelta(0):
            raise ValueError('Argument "delta" must not be negative.')
        with self._lock:
            self._clock_us += delta // timedelta(microseconds=1)

    # Listing

    def page(
        self, since_us: int | None, after: SortKey | None, limit: int
    ) -> tuple[list[Any], SortKey | None]:
        """One listing page: up to ``limit`` items in ``(updated_at, id)`` order.

        Starts at ``since_us`` (inclusive) or just after the key ``after``.
        Returns the items (dicts or pre-encoded ``msgspec.Raw``) and, if more
        follow, the key of the last one, for the next page token. Base studies
        are located by bisection and generated outside the lock, so a page of
        a 100,000-study dataset costs one page of generation.
        """
        with self._lock:
            picked = self._pick(since_us, after, limit + 1)
        more = len(picked) > limit
        picked = picked[:limit]
        items = [
            generate_study(self.spec, ref) if isinstance(ref, int) else ref for ref, _ in picked
        ]
        return items, (picked[-1][1] if more else None)

    def _pick(
        self, since_us: int | None, after: SortKey | None, count: int
    ) -> list[tuple[int | msgspec.Raw, SortKey]]:
        """Merge the base index stream with the sorted overlay (caller holds the lock)."""
        base = self._base_start(since_us, after)
        overlay = self._overlay_start(since_us, after)
        picked: list[tuple[int | msgspec.Raw, SortKey]] = []
        studies = self.spec.studies
        while len(picked) < count:
            while base < studies and self.spec.study_id(base) in self._studies:
                base += 1  # overridden by the overlay: listed at its new position
            base_key = self._base_key(base) if base < studies else None
            overlay_key = self._order[overlay] if overlay < len(self._order) else None
            if base_key is None and overlay_key is None:
                break
            if overlay_key is None or (base_key is not None and base_key < overlay_key):
                picked.append((base, base_key))
                base += 1
            else:
                picked.append((self._entries[overlay_key[2]].body, overlay_key))
                overlay += 1
        return picked

    def _base_key(self, index: int) -> SortKey:
        return (self.spec.base_updated_at_us(index), self.spec.study_id(index), 0)

    def _base_start(self, since_us: int | None, after: SortKey | None) -> int:
        indexes = range(self.spec.studies)
        if after is not None:
            return bisect.bisect_right(indexes, after, key=self._base_key)
        if since_us is not None:
            return bisect.bisect_left(indexes, (since_us,), key=self._base_key)
        return 0

    def _overlay_start(self, since_us: int | None, after: SortKey | None) -> int:
        if after is not None:
            return bisect.bisect_right(self._order, after)
        if since_us is not None:
            return bisect.bisect_left(self._order, (since_us,))
        return 0

    # Internals (caller holds the lock)

    def _tick(self) -> int:
        self._clock_us += self._step_us
        return self._clock_us

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _commit(
        self, item: dict[str, Any], epoch_us: int, *, restamp: bool = True
    ) -> dict[str, Any]:
        """Store a study item at ``epoch_us``, replacing its previous overlay entry."""
        if restamp:
            item["updated_at"] = format_timestamp(epoch_us)
        study_id = item["id"]
        old_seq = self._studies.pop(study_id, None)
        if old_seq is not None:
            old = self._entries.pop(old_seq)
            del self._order[bisect.bisect_left(self._order, old.key)]
        entry = _Entry(
            key=(epoch_us, study_id, self._take_seq()),
            body=msgspec.Raw(msgspec.json.encode(item)),
            study_id=study_id,
            deleted=item.get("deleted") is True,
        )
        self._insert(entry)
        self._studies[study_id] = entry.key[2]
        return _copy_json(item)

    def _insert(self, entry: _Entry) -> None:
        self._entries[entry.key[2]] = entry
        bisect.insort(self._order, entry.key)


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


# --- the HTTP API (no sockets here: the handler below is a thin adapter) ---------------


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated partner authenticates (contract: Transport and authentication)."""

    api_key: str = "sim-key"
    auth_header: str = "X-API-Key"
    auth_scheme: str | None = None  # e.g. "Bearer": header value is "Bearer <key>"
    revoked_keys: frozenset[str] = frozenset()

    def headers(self, key: str | None = None) -> dict[str, str]:
        """Request headers carrying ``key`` (default: the valid one) the way this partner wants."""
        value = self.api_key if key is None else key
        return {self.auth_header: f"{self.auth_scheme} {value}" if self.auth_scheme else value}


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = _JSON_HEADERS
    drop: bool = False


class _HttpError(Exception):
    """An error answer: becomes ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _json(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    return _Response(status, msgspec.json.encode(payload), _JSON_HEADERS + headers)


_TokenFields = tuple[int, int | None, int, str, int]  # epoch, since_us, after-key


def _encode_token(epoch: int, since_us: int | None, after: SortKey) -> str:
    raw = msgspec.json.encode((epoch, since_us, *after))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_token(token: str) -> tuple[int, int | None, SortKey]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        epoch, since_us, *after = msgspec.json.decode(raw, type=_TokenFields)
    except (binascii.Error, ValueError, msgspec.MsgspecError):
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, 'Argument "page_token" is not a valid page token.'
        ) from None
    return epoch, since_us, (after[0], after[1], after[2])


def _page_size(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE_SIZE
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_PAGE_SIZE:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST,
            f'Argument "page_size" must be an integer between 1 and {MAX_PAGE_SIZE}.',
        )
    return int(value)


def _updated_since(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, 'Argument "updated_since" must be an RFC 3339 timestamp.'
        ) from None


_STUDIES_PATH = "/v1/studies"
_HEALTH_PATH = "/v1/health"


def _route(path: str) -> tuple[Endpoint, str]:
    """``(endpoint, study id)`` of a request path; 404 for anything else."""
    if path == _STUDIES_PATH:
        return "listing", ""
    if path == _HEALTH_PATH:
        return "health", ""
    prefix = _STUDIES_PATH + "/"
    tail = path[len(prefix):] if path.startswith(prefix) else ""
    if tail and "/" not in tail:
        return "study", unquote(tail)
    raise _HttpError(HTTPStatus.NOT_FOUND, f"no such resource: {path}")


class _PartnerApi:
    """Request -> response for the Partner Export API v1, with auth and faults.

    Order of checks: route, authentication, then (listing only) the page
    gate, then a queued fault, then the real answer.
    """

    def __init__(
        self,
        dataset: PartnerDataset,
        config: SimulatorConfig,
        faults: Faults,
        requests: RequestLog,
        stopping: threading.Event,
    ):
        self.dataset = dataset
        self.config = config
        self.faults = faults
        self.requests = requests
        self._stopping = stopping

    def handle(self, method: str, target: str, headers: Mapping[str, str]) -> _Response:
        """Answer one request and record it; never raises."""
        arrived = time.monotonic()
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            response = self._answer(method, parts.path, query, headers)
        except _HttpError as error:
            response = _json(error.status, {"error": error.message}, error.headers)
        except Exception:
            logger.exception("simulator failed on %s %s", method, parts.path)
            failure = {"error": "simulator bug; see its log"}
            response = _json(HTTPStatus.INTERNAL_SERVER_ERROR, failure)
        status = None if response.drop else response.status
        self.requests.append(RecordedRequest(method, parts.path, query, status, arrived))
        return response

    def _answer(
        self, method: str, path: str, query: dict[str, str], headers: Mapping[str, str]
    ) -> _Response:
        endpoint, study_id = _route(path)
        if method != "GET":
            raise _HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "the Partner Export API is read-only",
                (("Allow", "GET"),),
            )
        self._authenticate(headers)
        if endpoint == "listing":
            gate = self.faults._count_listing()
            if gate is not None:
                gate._park()
        shot = self.faults._take(endpoint)
        fault = self._fire(shot) if shot is not None else None
        if fault is not None:
            return fault
        if endpoint == "listing":
            return self._list(query)
        if endpoint == "study":
            return self._one(study_id)
        return _json(HTTPStatus.OK, {"status": "ok"})

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        """401 for a missing or wrong key, 403 for a revoked one (contract: authentication)."""
        config = self.config
        value = headers.get(config.auth_header)
        if value is None:
            raise self._unauthorized(f"missing {config.auth_header} header")
        key = value
        if config.auth_scheme:
            scheme, _, key = value.partition(" ")
            if scheme.lower() != config.auth_scheme.lower():  # schemes are case-insensitive
                raise self._unauthorized(f"expected {config.auth_scheme} credentials")
        if key in config.revoked_keys:
            raise _HttpError(HTTPStatus.FORBIDDEN, "API key revoked")
        if not hmac.compare_digest(key.encode(), config.api_key.encode()):
            raise self._unauthorized("invalid API key")

    def _unauthorized(self, message: str) -> _HttpError:
        scheme = self.config.auth_scheme
        challenge = (("WWW-Authenticate", f'{scheme} realm="partner"'),) if scheme else ()
        return _HttpError(HTTPStatus.UNAUTHORIZED, message, challenge)

    def _fire(self, shot: _Shot) -> _Response | None:
        """Apply one queued fault; ``None`` means "now answer normally" (a delay)."""
        if shot.kind == "delay":
            self._stopping.wait(shot.seconds)
            return None
        if shot.kind == "drop":
            return _Response(0, drop=True)
        if shot.kind == "rate_limit":
            headers = () if shot.retry_after is None else (("Retry-After", shot.retry_after),)
            return _json(HTTPStatus.TOO_MANY_REQUESTS, {"error": "rate limited"}, headers)
        return _json(shot.status, {"error": "injected server error"})

    def _list(self, query: dict[str, str]) -> _Response:
        """``GET /v1/studies``: one page, ordered by ``(updated_at, id)``."""
        page_size = _page_size(query.get("page_size"))
        since_us = _updated_since(query.get("updated_since"))
        epoch = self.faults.token_epoch
        after = None
        if "page_token" in query:
            token_epoch, token_since, after = _decode_token(query["page_token"])
            if token_epoch != epoch:
                raise _HttpError(
                    HTTPStatus.GONE, "page_token expired; restart the listing from your bookmark"
                )
            if "updated_since" in query and since_us != token_since:
                raise _HttpError(
                    HTTPStatus.BAD_REQUEST,
                    "page_token belongs to a listing with another updated_since",
                )
            since_us = token_since
        items, last = self.dataset.page(since_us, after, page_size)
        next_token = None if last is None else _encode_token(epoch, since_us, last)
        return _json(HTTPStatus.OK, {"items": items, "next_page_token": next_token})

    def _one(self, study_id: str) -> _Response:
        """``GET /v1/studies/{id}``: the current item, deleted form included; 404 if never had."""
        item = self.dataset.item(study_id)
        if item is None:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no study {study_id!r}")
        return _json(HTTPStatus.OK, item)


# --- the HTTP server -------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Thin adapter from http.server to :class:`_PartnerApi`."""

    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
    # Headers and body go out in two writes; with Nagle on, a keep-alive
    # client's delayed ACK would add ~40 ms to every response.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self.close_connection = True  # the body is not read, so the stream cannot be reused
        self._dispatch()

    do_PUT = do_PATCH = do_DELETE = do_POST

    def _dispatch(self) -> None:
        response = self.server.api.handle(self.command, self.path, self.headers)
        if response.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence the per-request stderr line; ``sim.requests`` records requests instead."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: _PartnerApi):
        self.api = api
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on a
        # machine without DNS; the simulator only needs the bound port.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut idle keep-alive connections, so their handler threads end with the server."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away (timeout, SIGKILL): not the simulator's problem
        super().handle_error(request, client_address)


class PartnerSimulator:
    """A partner serving the Partner Export API v1 over real HTTP on loopback.

    Use as a context manager (or ``start``/``stop``). ``dataset``, ``faults``
    and ``requests`` may be used from the test thread while clients talk to
    ``base_url``.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        config: SimulatorConfig = SimulatorConfig(),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.dataset = PartnerDataset(spec)
        self.config = config
        self.faults = Faults()
        self.requests = RequestLog()
        self._address = (host, port)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def headers(self) -> dict[str, str]:
        """Headers carrying the valid key, for clients in tests."""
        return self.config.headers()

    def start(self) -> PartnerSimulator:
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        api = _PartnerApi(self.dataset, self.config, self.faults, self.requests, self._stopping)
        self._stopping.clear()
        self._server = _Server(self._address, api)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_SECONDS},
            name=f"partner-sim-{self.dataset.spec.partner}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: release parked and delayed requests, close connections."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        self.faults._release_gates()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> PartnerSimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- command line ----------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m imaging_sync.testing.simulator",
        description="Serve the Partner Export API v1 from generated studies.",
    )
    parser.add_argument("--partner", default="demo", help="partner name, the prefix of every id")
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--series", type=int, default=2, help="series per study")
    parser.add_argument("--instances", type=int, default=5, help="instances per series")
    parser.add_argument("--subjects", type=int, default=None, help="default: studies // 2 + 1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bucket", default="", help='default bucket; default: "{partner}-dicom"')
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--api-key-env", default="SIM_API_KEY", help="environment variable holding the key"
    )
    parser.add_argument("--auth-header", default="X-API-Key")
    parser.add_argument("--auth-scheme", default=None, help='e.g. "Bearer"')
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the simulator in the foreground until SIGTERM or SIGINT.

    Prints one line, ``listening on <base_url>``, once requests can be served.
    The key comes from the environment (never the command line, where other
    users could read it); unset means ``sim-key``.
    """
    parser, args = _parse_args(argv)
    try:
        spec = DatasetSpec(
            partner=args.partner,
            studies=args.studies,
            series_per_study=args.series,
            instances_per_series=args.instances,
            subjects=args.subjects,
            seed=args.seed,
            bucket=args.bucket,
        )
    except ValueError as error:
        parser.error(str(error))
    config = SimulatorConfig(
        api_key=os.environ.get(args.api_key_env) or "sim-key",
        auth_header=args.auth_header,
        auth_scheme=args.auth_scheme,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with PartnerSimulator(spec, config, host=args.host, port=args.port) as simulator:
        print(f"listening on {simulator.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
