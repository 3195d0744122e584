"""PS3.4 C.2.2.2 attribute matching, as SQL conditions on indexed columns.

Single value (C.2.2.2.1), universal (C.2.2.2.3: no condition), wildcard
(C.2.2.2.4: ``*`` and ``?``), range (C.2.2.2.5: ``a-b``, ``a-``, ``-b`` for DA
and TM; combined date-time when negotiated, C.2.2.2.5.1 / C.5.1.1.2) and lists of
UIDs (C.2.2.2.2). Person names match case- and accent-insensitively on the
search form (``person_names.search_form``, via ``catalog.names``; a PN
attribute without a stored search form, ReferringPhysicianName, is compared
lower-cased on both sides: case folds, accents must match); every other string
matches case-sensitively, so on SQLite wildcards become GLOB (LIKE there
ignores ASCII case) and on PostgreSQL LIKE, with the caller's own LIKE/GLOB
metacharacters escaped.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, true

from imaging_sync.catalog.names import name_matches
from dicom.errors import InvalidKeyValueError
from dicom.keys import Key

_UID = re.compile(r"^[0-9.]{1,64}$")
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
LIKE_ESCAPE = "\\"


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def wildcard_condition(column: Any, value: str, dialect: str) -> ColumnElement[bool]:
    """Case-sensitive ``*``/``?`` matching; a prefix pattern can use the column's index."""
    if dialect == "sqlite":
        glob = "".join({"[": "[[]", "]": "[]]"}.get(ch, ch) for ch in value)
        return column.op("GLOB")(glob)
    like = "".join(
        "%" if ch == "*" else "_" if ch == "?" else (LIKE_ESCAPE + ch if ch in "%_\\" else ch) for ch in value
    )
    return column.like(like, escape=LIKE_ESCAPE)


def parse_date(value: str, key: Key) -> dt.date:
    text = value.replace(".", "")  # ACR-NEMA style YYYY.MM.DD still seen from old SCUs
    if not _DATE.match(text):
        raise InvalidKeyValueError(f"{key.keyword}: not a DA value or range", key.tag)
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        raise InvalidKeyValueError(f"{key.keyword}: not a valid date", key.tag) from None


def time_bounds(value: str, key: Key) -> tuple[str, str]:
    """The stored-TM interval a (possibly reduced-precision) TM value covers: "14" is 14:00:00 to 14:59:59.999999."""
    text = value.replace(":", "")
    m = _TIME.match(text)
    if not m:
        raise InvalidKeyValueError(f"{key.keyword}: not a TM value or range", key.tag)
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        raise InvalidKeyValueError(f"{key.keyword}: not a valid time", key.tag)
    low = hh + (mm or "00") + (ss or "00") + (frac or "")
    if frac:
        high = low + "9" * (7 - len(frac))
    else:
        high = hh + (mm or "59") + (ss or "59") + ".999999"
    return low, high


def _split_range(value: str, key: Key) -> tuple[str | None, str | None] | None:
    if "-" not in value:
        return None
    low, sep, high = value.partition("-")
    if "-" in high or (not low and not high):
        raise InvalidKeyValueError(f"{key.keyword}: malformed range", key.tag)
    return low or None, high or None


def date_condition(column: Any, value: str, key: Key) -> ColumnElement[bool]:
    bounds = _split_range(value, key)
    if bounds is None:
        return column == parse_date(value, key)
    low, high = (parse_date(v, key) if v else None for v in bounds)
    if low and high and low > high:
        raise InvalidKeyValueError(f"{key.keyword}: range end before its start", key.tag)
    parts = ([column >= low] if low else []) + ([column <= high] if high else [])
    return and_(*parts)


def time_condition(column: Any, value: str, key: Key) -> ColumnElement[bool]:
    bounds = _split_range(value, key)
    if bounds is None:
        low, high = time_bounds(value, key)
        return and_(column >= low, column <= high)
    low_v, high_v = bounds
    parts = []
    if low_v:
        parts.append(column >= time_bounds(low_v, key)[0])
    if high_v:
        parts.append(column <= time_bounds(high_v, key)[1])
    return and_(*parts)


def combined_datetime_condition(date_col: Any, time_col: Any, date_value: str, time_value: str, date_key: Key, time_key: Key) -> ColumnElement[bool]:
    """C.2.2.2.5.1 combined Date and Time range matching: ``20240101-20240102`` with ``2200-0600``
    is the single interval 2024-01-01 22:00 to 2024-01-02 06:00:59.999999."""
    d_bounds = _split_range(date_value, date_key) or (date_value, date_value)
    t_bounds = _split_range(time_value, time_key) or (time_value, time_value)
    parts = []
    if d_bounds[0]:
        d = parse_date(d_bounds[0], date_key)
        t = time_bounds(t_bounds[0], time_key)[0] if t_bounds[0] else ""
        parts.append(or_(date_col > d, and_(date_col == d, func.coalesce(time_col, "") >= t)))
    if d_bounds[1]:
        d = parse_date(d_bounds[1], date_key)
        t = time_bounds(t_bounds[1], time_key)[1] if t_bounds[1] else "999999"
        parts.append(or_(date_col < d, and_(date_col == d, func.coalesce(time_col, "") <= t)))
    return and_(*parts) if parts else true()


def _one(key: Key, column: Any, value: str, dialect: str) -> ColumnElement[bool]:
    if key.match == "uid":
        raise AssertionError("lists of UIDs are matched as a whole")
    if key.match == "date":
        return date_condition(column, value, key)
    if key.match == "time":
        return time_condition(column, value, key)
    if key.match == "number":
        try:
            return column == int(value)
        except ValueError:
            raise InvalidKeyValueError(f"{key.keyword}: not an integer", key.tag) from None
    if key.match == "pn":
        groups = "=".join(g.rstrip("^ ") if not g.endswith("*") else g for g in value.split("="))
        if key.search_column is not None:
            return name_matches(key.search_column, groups)
        return name_matches(func.lower(column), groups, fold=str.lower)
    # string / cs: leading and trailing spaces are not significant (C.2.2.2.1)
    if has_wildcard(value):
        return wildcard_condition(column, value, dialect)
    return column == value


def condition(key: Key, values: list[str], dialect: str, column: Any = None) -> ColumnElement[bool]:
    """``column`` (default: the key's column) matches any of ``values`` (several values: a list, C.2.2.2.2)."""
    column = key.column if column is None else column
    if key.match == "uid":
        for v in values:
            if not _UID.match(v):
                raise InvalidKeyValueError(f"{key.keyword}: not a UID or list of UIDs", key.tag)
        return column == values[0] if len(values) == 1 else column.in_(values)
    exact = [v for v in values if key.match in ("string", "cs") and not has_wildcard(v)]
    rest = [v for v in values if v not in exact]
    conditions = ([column.in_(exact)] if len(exact) > 1 else [column == exact[0]] if exact else [])
    conditions += [_one(key, column, v, dialect) for v in rest]
    return conditions[0] if len(conditions) == 1 else or_(*conditions)
