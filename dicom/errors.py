"""Typed Query/Retrieve errors; each carries the DIMSE status it becomes (see dicom.statuses)."""

from __future__ import annotations

from imaging_sync.errors import ImagingSyncError


class QueryRetrieveError(ImagingSyncError):
    """A request we refuse; ``status`` is the DIMSE failure status, ``tag`` the offending element."""

    kind = "validation"
    status = 0xC000

    def __init__(self, comment: str, tag: int | None = None) -> None:
        self.comment = comment
        self.tag = tag
        super().__init__(comment)


class IdentifierMismatchError(QueryRetrieveError):
    """PS3.4 C.4.1.1.3.1 / C.4.2.2.1: no or unknown Query/Retrieve Level, a level the
    information model does not have, or a unique key of a level above missing or not single-valued."""

    status = 0xA900


class InvalidKeyValueError(QueryRetrieveError):
    """A matching key whose value is not valid for its VR or matching type (a malformed date range,
    a wildcard in a UID): PS3.4 C.2.2.2 leaves no way to match it."""

    status = 0xC001


class TooManyMatchesError(QueryRetrieveError):
    """A retrieve over more instances than the US sub-operation counters can report."""

    status = 0xC003


class UnknownDestinationError(QueryRetrieveError):
    """C-MOVE to an AE title not in ``[dicom.destinations]`` (PS3.4 C.4.2.1.5: 0xA801)."""

    status = 0xA801
