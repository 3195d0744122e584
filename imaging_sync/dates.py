"""Dates and times, validated in one place: DICOM DA and TM, their query ranges, and the partner contract's forms.

Every caller that reads a date or a time goes through here: C-FIND and
C-MOVE identifiers (``imaging_sync.query.matching``), partner items
(``partners.wire``), the REST API's date filters (``api.params``). Invalid
values are refused with a ValidationError naming the field, never repaired.

- **DA** (PS3.5 Table 6.2-1): ``YYYYMMDD``, a real calendar date. The table
  recommends also reading the pre-3.0 form ``YYYY.MM.DD``, which old SCUs
  still send in queries: read too.
- **TM** (PS3.5 Table 6.2-1): ``HH``, ``HHMM``, ``HHMMSS`` or
  ``HHMMSS.F`` to ``HHMMSS.FFFFFF``; hours 00–23, minutes 00–59, seconds
  00–60 (a leap second); a fraction only after the seconds. The pre-3.0 form
  with colons (``HH:MM:SS.frac``) is read as well.
- **Ranges** (PS3.4 C.2.2.2.5): ``a-b``, ``a-`` and ``-b``; one ``-``; a
  range whose end comes before its start is refused rather than answered
  empty (it is the caller's mistake, and the status says so).
- **The partner contract** (``docs/partner-api.md``): dates ``YYYY-MM-DD``,
  times ``HH:MM:SS[.ffffff]`` (stored as TM), timestamps RFC 3339 with an
  offset.

Where this is stricter than pydicom's validators (a calendar check; no
fraction after the hour) or more lenient (the pre-3.0 forms), the parity
test ``tests/imaging_sync/test_validation_parity.py`` lists each case with
its reason.
"""

from __future__ import annotations

import datetime as dt
import re

from imaging_sync.errors import ValidationError

_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DA_PRE_3_0 = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})")
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,6})?)?)?")
_TM_PRE_3_0 = re.compile(r"(\d{2})(?::(\d{2})(?::(\d{2})(\.\d{1,6})?)?)?")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


# -- DICOM DA and TM ---------------------------------------------------------------------------------


def is_valid_da(value: object) -> bool:
    return isinstance(value, str) and _da(value) is not None


def check_da(value: str, path: str) -> dt.date:
    """A DA value (``YYYYMMDD``, or the pre-3.0 ``YYYY.MM.DD``) as a date; ValidationError naming ``path``."""
    day = _da(value)
    if day is None:
        if _DA.fullmatch(value) or _DA_PRE_3_0.fullmatch(value):
            raise ValidationError(path, "not a calendar date")
        raise ValidationError(path, "not a DA value (YYYYMMDD)")
    return day


def _da(value: str) -> dt.date | None:
    m = _DA.fullmatch(value) or _DA_PRE_3_0.fullmatch(value)
    if m is None:
        return None
    try:
        return dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def is_valid_tm(value: object) -> bool:
    return isinstance(value, str) and _tm(value) is not None


def tm_interval(value: str, path: str) -> tuple[str, str]:
    """The stored-TM interval a TM value covers, reduced precision included: ``14`` is ``140000`` to ``145959.999999``.

    Stored times are TM strings (``HHMMSS[.ffffff]``), which compare in
    time order as strings; so do these bounds.
    """
    parts = _tm(value)
    if parts is None:
        shaped = _TM.fullmatch(value) or _TM_PRE_3_0.fullmatch(value)
        raise ValidationError(path, "not a valid time" if shaped else "not a TM value (HHMMSS.FFFFFF)")
    hh, mm, ss, frac = parts
    low = hh + (mm or "00") + (ss or "00") + (frac or "")
    high = low + "9" * (7 - len(frac)) if frac else hh + (mm or "59") + (ss or "59") + ".999999"
    return low, high


def _tm(value: str) -> tuple[str, str | None, str | None, str | None] | None:
    m = _TM.fullmatch(value) or _TM_PRE_3_0.fullmatch(value)
    if m is None:
        return None
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or (mm is not None and int(mm) > 59) or (ss is not None and int(ss) > 60):
        return None
    return hh, mm, ss, frac


# -- ranges (PS3.4 C.2.2.2.5) ----------------------------------------------------------------------------


def split_range(value: str, path: str) -> tuple[str | None, str | None] | None:
    """``(low, high)`` of a range value (either end None when open), or None for a single value."""
    if "-" not in value:
        return None
    low, _, high = value.partition("-")
    if "-" in high or (not low and not high):
        raise ValidationError(path, "malformed range")
    return low or None, high or None


def da_range(value: str, path: str) -> tuple[dt.date | None, dt.date | None]:
    """A DA value or range as inclusive bounds (a single date is both); None where the range is open."""
    bounds = split_range(value, path)
    if bounds is None:
        day = check_da(value, path)
        return day, day
    low, high = (check_da(v, path) if v else None for v in bounds)
    check_order(low, high, path)
    return low, high


def tm_range(value: str, path: str) -> tuple[str | None, str | None]:
    """A TM value or range as inclusive stored-TM bounds (:func:`tm_interval` at each end); None where open."""
    bounds = split_range(value, path)
    if bounds is None:
        return tm_interval(value, path)
    low, high = bounds
    return (tm_interval(low, path)[0] if low else None), (tm_interval(high, path)[1] if high else None)


def check_order(low: dt.date | None, high: dt.date | None, path: str, reason: str = "range end before its start") -> None:
    """A closed range must not end before it starts (``path`` names the end, or the range)."""
    if low is not None and high is not None and high < low:
        raise ValidationError(path, reason)


# -- the partner contract's forms -------------------------------------------------------------------------


def parse_iso_date(value: str, path: str) -> dt.date:
    """A contract date (``YYYY-MM-DD``, a calendar date)."""
    if not _ISO_DATE.fullmatch(value):
        raise ValidationError(path, f"not a date in YYYY-MM-DD form: {value[:20]!r}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValidationError(path, f"not a calendar date: {value!r}") from None


def iso_time_to_tm(value: str, path: str) -> str:
    """A contract time (``HH:MM:SS[.ffffff]``) as DICOM TM (``HHMMSS[.ffffff]``)."""
    m = _ISO_TIME.fullmatch(value)
    if not m or int(m[1]) > 23 or int(m[2]) > 59 or int(m[3]) > 60:
        raise ValidationError(path, f"not a time in HH:MM:SS[.ffffff] form: {value[:20]!r}")
    return f"{m[1]}{m[2]}{m[3]}" + (f".{m[4]}" if m[4] else "")


def parse_rfc3339(value: str, path: str) -> dt.datetime:
    """A contract timestamp: RFC 3339 with an offset, as UTC."""
    if not _RFC3339.fullmatch(value):
        raise ValidationError(path, f"not an RFC 3339 timestamp with offset: {value[:40]!r}")
    try:
        return dt.datetime.fromisoformat(value.replace("z", "Z")).astimezone(dt.UTC)
    except ValueError as exc:
        raise ValidationError(path, f"invalid timestamp {value[:40]!r}: {exc}") from None


def format_rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
