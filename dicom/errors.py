"""Typed Query/Retrieve errors; each carries the DIMSE status it becomes (see dicom.statuses).

Each is its own failure kind, in the core's sense (``imaging_sync.errors``:
one type per kind, a subclass never counts under its parent's kind), so a
log line or an audit entry tells a malformed identifier from a refused
destination from a request over a limit:

===================  =========================  ==========================================================
kind                 type                       failure
===================  =========================  ==========================================================
query_retrieve       QueryRetrieveError         a request refused for no more precise reason (C000)
identifier_mismatch  IdentifierMismatchError    the identifier breaks the information model (A900)
invalid_key_value    InvalidKeyValueError       a key value not valid for its VR or matching type (C001)
unknown_destination  UnknownDestinationError    C-MOVE to an AE title not in ``[dicom.destinations]`` (A801)
limit                LimitExceededError         a request over a limit of ``[dicom]`` (A700, A701)
too_many_matches     TooManyMatchesError        a retrieve over the sub-operation counters' range (C003)
===================  =========================  ==========================================================

A calling AE asking an operation it was not granted is the core's
``AccessDeniedError`` (kind ``denied``, as on the REST API), which
:func:`dicom.statuses.failure_for` answers 0124.
"""

from __future__ import annotations

from imaging_sync.errors import ImagingSyncError


class QueryRetrieveError(ImagingSyncError):
    """A request we refuse; ``status`` is the DIMSE failure status (``retrieve_status`` for C-MOVE and C-GET),
    ``tag`` the offending element."""

    kind = "query_retrieve"
    status = 0xC000
    retrieve_status: int | None = None  # None: the same as ``status``

    def __init__(self, comment: str, tag: int | None = None) -> None:
        self.comment = comment
        self.tag = tag
        super().__init__(comment)


class IdentifierMismatchError(QueryRetrieveError):
    """PS3.4 C.4.1.1.3.1 / C.4.2.2.1: no or unknown Query/Retrieve Level, a level the
    information model does not have, or a unique key of a level above missing or not single-valued."""

    kind = "identifier_mismatch"
    status = 0xA900


class InvalidKeyValueError(QueryRetrieveError):
    """A matching key whose value is not valid for its VR or matching type (a malformed date range,
    a wildcard in a UID): PS3.4 C.2.2.2 leaves no way to match it."""

    kind = "invalid_key_value"
    status = 0xC001


class UnknownDestinationError(QueryRetrieveError):
    """C-MOVE to an AE title not in ``[dicom.destinations]`` (PS3.4 C.4.2.1.5: 0xA801)."""

    kind = "unknown_destination"
    status = 0xA801


class LimitExceededError(QueryRetrieveError):
    """A request over a limit of ``[dicom]`` (its size, the values of one key): refused as out of resources,
    A700 for C-FIND (PS3.4 C.4.1.1.4), A701 for C-MOVE and C-GET (C.4.2.1.5, C.4.3.1.4: unable to calculate
    the number of matches, which we will not try)."""

    kind = "limit"
    status = 0xA700
    retrieve_status = 0xA701


class TooManyMatchesError(LimitExceededError):
    """A retrieve over more instances than the US sub-operation counters can report (PS3.4 C.4.2.1.5): a limit
    of the protocol rather than of ours, answered in our C003."""

    kind = "too_many_matches"
    status = 0xC003
    retrieve_status = 0xC003
