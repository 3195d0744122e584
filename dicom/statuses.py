"""Named DIMSE statuses of the Query/Retrieve service, and the one place our errors become one.

PS3.4 C.4.1.1.4 (C-FIND), C.4.2.1.5 (C-MOVE) and C.4.3.1.4 (C-GET) list the
statuses; PS3.7 Annex C gives their classes. Handlers never use bare numbers.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from sqlalchemy.exc import SQLAlchemyError

from dicom.errors import QueryRetrieveError
from imaging_sync.errors import AccessDeniedError, AuditUnavailableError

SUCCESS = 0x0000
# Pending: one more match follows (C-FIND) / sub-operations are continuing (C-MOVE, C-GET).
PENDING = 0xFF00
# Matching terminated due to Cancel request (C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
CANCEL = 0xFE00
# Sub-operations complete, one or more failures or warnings (C.4.2.1.5).
WARNING_SUBOPERATIONS_FAILED = 0xB000
# Refused: Not Authorized (PS3.7 C.5): the calling AE was not granted this operation ([dicom.peers]).
NOT_AUTHORIZED = 0x0124
# Refused: out of resources (C-FIND, C.4.1.1.4): a request over a limit of [dicom].
OUT_OF_RESOURCES = 0xA700
# Refused: out of resources – unable to calculate number of matches (C-MOVE/C-GET).
OUT_OF_RESOURCES_MATCHES = 0xA701
# Refused: out of resources – unable to perform sub-operations (every sub-operation failed).
OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702
# Refused: Move Destination unknown (C.4.2.1.5).
MOVE_DESTINATION_UNKNOWN = 0xA801
# Error: Data Set does not match SOP Class (missing level, missing unique keys of the levels above).
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
# Failed: Unable to process (0xC000-0xCFFF). Our sub-range:
UNABLE_TO_PROCESS = 0xC000
UNABLE_TO_PROCESS_INVALID_KEY_VALUE = 0xC001  # a matching key value not valid for its VR
UNABLE_TO_PROCESS_DATABASE = 0xC002  # the index could not be read
UNABLE_TO_PROCESS_TOO_MANY_MATCHES = 0xC003  # more than 65535 sub-operations (counts are US)
UNABLE_TO_PROCESS_AUDIT = 0xC004  # the audit entry could not be written: nothing (more) is sent

NAMES = {
    SUCCESS: "success",
    PENDING: "pending",
    CANCEL: "cancel",
    NOT_AUTHORIZED: "refused: not authorized",
    OUT_OF_RESOURCES: "out of resources",
    WARNING_SUBOPERATIONS_FAILED: "warning: sub-operations failed",
    OUT_OF_RESOURCES_MATCHES: "out of resources: unable to calculate number of matches",
    OUT_OF_RESOURCES_SUBOPERATIONS: "out of resources: unable to perform sub-operations",
    MOVE_DESTINATION_UNKNOWN: "move destination unknown",
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: "identifier does not match SOP class",
    UNABLE_TO_PROCESS: "unable to process",
    UNABLE_TO_PROCESS_INVALID_KEY_VALUE: "unable to process: invalid key value",
    UNABLE_TO_PROCESS_DATABASE: "unable to process: index unavailable",
    UNABLE_TO_PROCESS_TOO_MANY_MATCHES: "unable to process: too many matches",
    UNABLE_TO_PROCESS_AUDIT: "unable to process: audit unavailable",
}


def name(status: int) -> str:
    return NAMES.get(status, f"0x{status:04X}")


def status_dataset(status: int, comment: str | None = None, offending: list[int] | None = None) -> Dataset:
    """A status the handler yields: Status plus Error Comment (LO, 64 chars) and Offending Element (PS3.7 C.4)."""
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment[:64]
    if offending:
        ds.OffendingElement = offending
    return ds


def failure_for(exc: BaseException, *, retrieve: bool = False) -> Dataset:
    """The failure status an exception means, once for every handler (``retrieve``: for C-MOVE or C-GET).

    Error comments are built from our messages, which name keys and reasons,
    never the values a caller sent (they may be patient names or IDs).
    """
    if isinstance(exc, QueryRetrieveError):
        status = exc.retrieve_status if retrieve and exc.retrieve_status is not None else exc.status
        return status_dataset(status, exc.comment, [exc.tag] if exc.tag is not None else None)
    if isinstance(exc, AccessDeniedError):
        return status_dataset(NOT_AUTHORIZED, str(exc))
    if isinstance(exc, AuditUnavailableError):
        return status_dataset(UNABLE_TO_PROCESS_AUDIT, "the access could not be audited")
    if isinstance(exc, SQLAlchemyError):
        return status_dataset(UNABLE_TO_PROCESS_DATABASE, "the index could not be read")
    return status_dataset(UNABLE_TO_PROCESS, f"internal error ({type(exc).__name__})")
