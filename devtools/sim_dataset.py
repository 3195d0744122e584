"""The partner simulator's data: what a simulated partner has, and its listing order.

:class:`PartnerDataset` holds generated base studies (never materialised) plus
an overlay of changes made by tests, serves listing pages in the Partner Export
API v1 order ``(updated_at, id)`` with inclusive ``updated_since``, and knows the
DICOM-vocabulary truth a correct sync must reach
(:meth:`PartnerDataset.expected_state`). :func:`parse_rfc3339` reads the
contract's timestamps into the epoch microseconds the listing is keyed by.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec

from devtools.datagen import (
    DatasetSpec,
    format_timestamp,
    from_epoch_us,
    generate_study,
    to_dicom_study,
    to_epoch_us,
)

__all__ = [
    "PartnerDataset",
    "SortKey",
    "parse_rfc3339",
]

# A listing entry's sort key: (updated_at in epoch microseconds, id, sequence).
# The sequence (0 for generated studies, unique otherwise) orders entries that
# share (updated_at, id), which raw injections are allowed to do.
SortKey = tuple[int, str, int]


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
    tz = UTC
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
                item: dict[str, Any] = msgspec.json.decode(self._entries[seq].body)
                return item
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
            if base_key is not None and (overlay_key is None or base_key < overlay_key):
                picked.append((base, base_key))
                base += 1
            elif overlay_key is not None:
                picked.append((self._entries[overlay_key[2]].body, overlay_key))
                overlay += 1
            else:  # both exhausted
                break
        return picked

    def _base_key(self, index: int) -> SortKey:
        return (self.spec.base_updated_at_us(index), self.spec.study_id(index), 0)

    def _base_start(self, since_us: int | None, after: SortKey | None) -> int:
        indexes = range(self.spec.studies)
        if after is not None:
            return bisect.bisect_right(indexes, after, key=self._base_key)
        if since_us is not None:
            return bisect.bisect_left(indexes, since_us, key=self.spec.base_updated_at_us)
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
        stored: dict[str, Any] = _copy_json(item)
        return stored

    def _insert(self, entry: _Entry) -> None:
        self._entries[entry.key[2]] = entry
        bisect.insort(self._order, entry.key)
