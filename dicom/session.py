"""What the node keeps about one association while it lasts: its id for the logs, who it is, its pending refusals.

Kept on the pynetdicom ``Association`` itself (one attribute), so every
handler of the association, in its reactor thread or its DUL thread, reads the
same state without a process-wide table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_ATTRIBUTE = "_isync_session"


@dataclass
class Session:
    id: str  # short, for log lines: never a patient identifier
    calling_ae: str = ""
    address: str = ""
    admitted: bool = False
    # Requests whose data set was over dicom.max_identifier_bytes (by Message ID), to refuse when complete.
    oversized: set[int] = field(default_factory=set)
    request_started: float = 0.0  # time.monotonic() of the first PDU of the request being received
    idle_expired: bool = False  # pynetdicom found the association idle for idle_timeout_seconds (and aborts it)


def session(assoc: Any) -> Session:
    state = getattr(assoc, _ATTRIBUTE, None)
    if state is None:
        state = Session(id=f"{id(assoc) & 0xFFFFFF:06x}")
        setattr(assoc, _ATTRIBUTE, state)
    return state
