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


class LimitExceededError(QueryRetrieveError):
    """A request over a limit of ``[dicom]`` (its size, the values of one key): refused as out of resources,
    A700 for C-FIND (PS3.4 C.4.1.1.4), A701 for C-MOVE and C-GET (C.4.2.1.5, C.4.3.1.4: unable to calculate
    the number of matches, which we will not try)."""

    status = 0xA700
    retrieve_status = 0xA701


class NotAuthorizedError(QueryRetrieveError):
    """A listed calling AE asking an operation ``[dicom.peers]`` did not grant it: 0124, Refused: Not Authorized
    (PS3.7 C.5, a status of every DIMSE service)."""

    status = 0x0124
