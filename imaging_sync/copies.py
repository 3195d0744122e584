"""Which copy of an instance's file to read or sign: decided here, once, for every edge.

An instance several partners keep has one location per partner
(``instance_location``: partner, bucket, key). The REST API signs one copy
(a URL for an instance, a whole series), the DICOM node reads one (C-MOVE,
C-GET); both ask a :class:`CopyChooser` built once per process from the
partners' priorities and the storage registry:

- **Order**: the partners in the configuration (``[partners.NAME]``, enabled
  or not) by ``priority``, highest first, ties by partner name, as the
  index's field values are chosen; then the partners no longer configured,
  by name. A copy kept by a partner that left the configuration is still a
  copy, tried after every configured partner's.
- **Usable**: a copy in a bucket outside the storage registry is never read
  or signed, whoever keeps it; it is passed over as ``bucket_refused``.
- **Fallback** (:meth:`CopyChooser.first_available`): the copies are tried
  in that order, each with the caller's own attempt (a HEAD before signing,
  the streamed read of a retrieve); a copy whose object is gone
  (``object_missing``) or whose storage fails (``storage``, ``auth``…: any
  StorageError) is passed over for the next. What was passed over, and why
  (the error's kind), goes back to the caller for its answer and its audit
  entry, never the bucket or key (a partner may build keys from patient data).
- A whole series is signed without a check per object (:meth:`CopyChooser.best`,
  500 HEADs would take seconds): the first usable copy in the same order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from imaging_sync.errors import BucketNotAllowedError, ObjectNotFoundError, StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Location:
    """Where one partner keeps one instance's file: always bucket and key, never a path."""

    partner: str
    bucket: str
    key: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A copy passed over: whose, and the kind of error that ruled it out (``errors`` kinds)."""

    partner: str
    kind: str


@dataclass(frozen=True, slots=True)
class Attempt(Generic[T]):
    """What :meth:`CopyChooser.first_available` came to: the attempt's result on the copy used, or on none.

    ``location`` None: no copy could be used. ``failure`` is then the last
    storage failure other than a missing object (an edge answers it as the
    storage failing, not as a file that does not exist).
    """

    value: T | None
    location: Location | None
    skipped: tuple[Skipped, ...]
    failure: StorageError | None = None

    @property
    def skipped_partners(self) -> list[str]:
        return [s.partner for s in self.skipped]


class CopyChooser:
    """The copy order and fallback of one process: its partners' priorities, its bucket registry."""

    def __init__(self, priorities: Mapping[str, int], registered: Container[str]) -> None:
        self._priorities = dict(priorities)
        self._registered = registered

    def usable(self, location: Location) -> bool:
        return location.bucket in self._registered

    def rank(self, location: Location) -> tuple[int, int, str]:
        """The sort key of a copy: configured partners first, by priority (highest first), then name."""
        priority = self._priorities.get(location.partner)
        return (0, -priority, location.partner) if priority is not None else (1, 0, location.partner)

    def ranked(self, locations: Sequence[Location]) -> list[Location]:
        """The usable copies, best first."""
        if len(locations) == 1:  # the usual case, 500 times per series: nothing to rank
            return [locations[0]] if self.usable(locations[0]) else []
        return sorted((loc for loc in locations if self.usable(loc)), key=self.rank)

    def best(self, locations: Sequence[Location]) -> Location | None:
        """The copy to sign without checking it (a whole series): the first usable one."""
        ranked = self.ranked(locations)
        return ranked[0] if ranked else None

    def first_available(self, locations: Sequence[Location], attempt: Callable[[Location], T], *, context: Mapping[str, Any] | None = None) -> Attempt[T]:
        """``attempt`` on each usable copy, best first, until one succeeds; a StorageError passes to the next copy.

        Anything else ``attempt`` raises propagates at once. ``context`` goes
        into the log line of each copy passed over (ids, never patient data).
        """
        skipped = [Skipped(loc.partner, BucketNotAllowedError.kind) for loc in locations if not self.usable(loc)]
        failure: StorageError | None = None
        for location in self.ranked(locations):
            try:
                return Attempt(attempt(location), location, tuple(skipped))
            except StorageError as exc:
                # The kind only: a storage error's text names the object's key, which a partner may build from patient data.
                skipped.append(Skipped(location.partner, exc.kind))
                if not isinstance(exc, ObjectNotFoundError):
                    failure = exc
                log.warning("copy of partner %s passed over (%s), trying the next one", location.partner, exc.kind, extra=dict(context or {}))
        return Attempt(None, None, tuple(skipped), failure)
