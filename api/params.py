"""Query-parameter checks shared by several endpoints: each raises ValidationError naming the parameter.

UIDs, dates and person names are checked by the core's one module of each
(``imaging_sync.uids``, ``imaging_sync.dates``, ``imaging_sync.person_names``,
the last through the PS3.4 matching of ``imaging_sync.query``), as partner
items and DICOM identifiers are.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated

from litestar.params import PathParameter, QueryParameter

from imaging_sync.dates import check_order
from imaging_sync.errors import ValidationError
from imaging_sync.uids import check_uid

# Declarations shared by the controllers (what the OpenAPI document shows).
Limit = Annotated[
    int | None,
    QueryParameter(ge=1, le=1000, description="Page size (default `api.default_page_size`; a larger value than `api.max_page_size`, 200 by default, gets pages of that size)."),
]
Cursor = Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page.", max_length=512)]
EntityId = Annotated[uuid.UUID, PathParameter(description="The service's id of the entity (a UUID, not a DICOM UID).")]

_MODALITY = re.compile(r"[A-Z0-9_ ]{1,16}")  # DICOM CS (PS3.5 §6.2)
_PARTNER = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # as partner names in the config


def uid(value: str | None, field: str) -> str | None:
    return None if value is None else check_uid(value, field)


def modality(value: str | None, field: str = "modality") -> str | None:
    """A modality code (CS: upper case); ``ct`` is taken as ``CT``."""
    if value is None:
        return None
    code = value.strip().upper()
    if not _MODALITY.fullmatch(code):
        raise ValidationError(field, "must be a DICOM modality code such as CT or MR (letters, digits, _ ; at most 16)")
    return code


def partner(value: str | None, field: str = "partner") -> str | None:
    if value is None:
        return None
    if not _PARTNER.fullmatch(value):
        raise ValidationError(field, "must be a partner name (lower-case letters, digits, '-' and '_')")
    return value


def text(value: str | None, field: str, max_length: int) -> str | None:
    """A free-text filter: non-empty, at most ``max_length`` characters, no control characters."""
    if value is None:
        return None
    if not value:
        raise ValidationError(field, "must not be empty")
    if len(value) > max_length:
        raise ValidationError(field, f"must be at most {max_length} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValidationError(field, "must not contain control characters")
    return value


def date_range(date_from: dt.date | None, date_to: dt.date | None) -> None:
    """A study date range (PS3.4 C.2.2.2.5, as ``imaging_sync.dates`` checks every range): its end not before its start."""
    check_order(date_from, date_to, "date_to", "must not be before date_from")


def instant(value: str | None, field: str, *, day_end: bool = False) -> dt.datetime | None:
    """An ISO 8601 date or date-time; a time without offset is UTC.

    A date alone is its midnight UTC, or with ``day_end`` the next midnight: an
    upper bound given as a date includes that whole day, as ``date_to`` does
    for studies (``from=D&to=D`` is the day D).
    """
    if value is None:
        return None
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            parsed = dt.datetime.combine(day, dt.time(), dt.UTC)
        else:
            parsed = dt.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValidationError(field, "must be an ISO 8601 date (2026-11-22) or date-time (2026-11-22T08:00:00Z)") from None
    if day_end and len(value) == 10:
        parsed = dt.datetime.max.replace(tzinfo=dt.UTC) if day == dt.date.max else parsed + dt.timedelta(days=1)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:
        return parsed.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        raise ValidationError(field, "is out of range") from None
