"""PS3.4 C.2.2.2 attribute matching, as SQL conditions on indexed columns: one implementation for every edge.

The C-FIND and C-MOVE/C-GET SQL of the DICOM node (:func:`key_conditions`,
from the DICOM keys of an identifier) and the REST API's searches
(``catalog.studies``, ``catalog.subjects``, from their filters) build their
conditions here:

- **single value** (C.2.2.2.1): equality; leading and trailing spaces are not
  significant (the identifier reader strips them);
- **universal** (C.2.2.2.3): a zero-length value or a lone ``*``: no condition;
- **wildcards** (C.2.2.2.4): ``*`` and ``?``, case-sensitive except in person
  names; on SQLite GLOB (LIKE there ignores ASCII case), on PostgreSQL LIKE,
  the caller's own LIKE/GLOB metacharacters escaped;
- **ranges** (C.2.2.2.5): ``a-b``, ``a-``, ``-b`` for DA and TM, and the
  combined date-time range when negotiated (C.2.2.2.5.1); a range never
  matches a row without a value;
- **lists of UIDs** (C.2.2.2.2), each checked by ``imaging_sync.uids``;
- **person names**: ``imaging_sync.query.names`` (every stored PN has a
  search column; case- and accent-insensitive).

Values are validated by the one module of their kind (``uids``, ``dates``,
``person_names``); a value that is not valid for its key is a ValidationError
whose path is the key's keyword (or the REST filter's name), which each edge
turns into its own answer (C001 with the offending tag, a 400 naming the
parameter).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, true

from imaging_sync.dates import check_da, da_range, split_range, tm_interval, tm_range
from imaging_sync.errors import ValidationError
from imaging_sync.query.keys import KEYS, Key, series, study
from imaging_sync.query.names import pn_matches
from imaging_sync.uids import is_valid_uid

LIKE_ESCAPE = "\\"
UNIVERSAL = "*"


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def is_universal(values: Sequence[str]) -> bool:
    """Universal matching (C.2.2.2.3): no value, or a single ``*``."""
    return not values or list(values) == [UNIVERSAL]


# -- one value ----------------------------------------------------------------------------------------------


def single_value(column: ColumnElement[Any], value: object) -> ColumnElement[bool]:
    """Single value matching (C.2.2.2.1): the value exactly (``value`` may be a bound parameter)."""
    return column == value


def wildcard(column: ColumnElement[Any], value: str, dialect: str) -> ColumnElement[bool]:
    """Case-sensitive ``*``/``?`` matching (C.2.2.2.4); a prefix pattern can use the column's index."""
    if dialect == "sqlite":
        glob = "".join({"[": "[[]", "]": "[]]"}.get(ch, ch) for ch in value)
        return column.op("GLOB")(glob)
    like = "".join(
        "%" if ch == "*" else "_" if ch == "?" else (LIKE_ESCAPE + ch if ch in "%_\\" else ch) for ch in value
    )
    return column.like(like, escape=LIKE_ESCAPE)


def uid_list(column: Any, values: Sequence[str], path: str) -> ColumnElement[bool]:
    """List of UID matching (C.2.2.2.2; one UID is a list of one): every value a valid UID (``imaging_sync.uids``)."""
    for value in values:
        if not is_valid_uid(value):
            raise ValidationError(path, "not a UID or list of UIDs")
    return single_value(column, values[0]) if len(values) == 1 else column.in_(values)


def in_range(column: Any, low: Any, high: Any) -> ColumnElement[bool]:
    """Range matching (C.2.2.2.5) between inclusive bounds, either None when open (values or bound parameters).

    A row without a value matches no range (the comparison is NULL).
    """
    parts = ([column >= low] if low is not None else []) + ([column <= high] if high is not None else [])
    return and_(*parts) if parts else true()


def date_condition(column: Any, value: str, path: str) -> ColumnElement[bool]:
    """A DA value or range (``20240101``, ``20240101-20240131``, ``-20231231``, ``20240201-``)."""
    low, high = da_range(value, path)
    if low is not None and low == high:
        return single_value(column, low)
    return in_range(column, low, high)


def time_condition(column: Any, value: str, path: str) -> ColumnElement[bool]:
    """A TM value or range; a reduced-precision value covers its whole interval (``14`` is 14:00 to 14:59:59.999999)."""
    low, high = tm_range(value, path)
    return in_range(column, low, high)


def combined_datetime(date_col: Any, time_col: Any, date_value: str, time_value: str, date_path: str, time_path: str) -> ColumnElement[bool]:
    """C.2.2.2.5.1 combined Date and Time range matching: ``20240101-20240102`` with ``2200-0600``
    is the single interval 2024-01-01 22:00 to 2024-01-02 06:00:59.999999."""
    d_bounds = split_range(date_value, date_path) or (date_value, date_value)
    t_bounds = split_range(time_value, time_path) or (time_value, time_value)
    low_date = check_da(d_bounds[0], date_path) if d_bounds[0] else None
    high_date = check_da(d_bounds[1], date_path) if d_bounds[1] else None
    parts = []
    if low_date is not None:
        t = tm_interval(t_bounds[0], time_path)[0] if t_bounds[0] else ""
        parts.append(or_(date_col > low_date, and_(date_col == low_date, func.coalesce(time_col, "") >= t)))
    if high_date is not None:
        t = tm_interval(t_bounds[1], time_path)[1] if t_bounds[1] else "999999"
        parts.append(or_(date_col < high_date, and_(date_col == high_date, func.coalesce(time_col, "") <= t)))
    return and_(*parts) if parts else true()


def number(column: Any, value: str, path: str) -> ColumnElement[bool]:
    try:
        return single_value(column, int(value))
    except ValueError:
        raise ValidationError(path, "not an integer") from None


def strings(column: Any, values: Sequence[str], dialect: str) -> ColumnElement[bool]:
    """Single values (several: a list, one IN) and wildcards, case-sensitive, any of them."""
    exact = [v for v in values if not has_wildcard(v)]
    conditions = [single_value(column, exact[0])] if len(exact) == 1 else [column.in_(exact)] if exact else []
    conditions += [wildcard(column, v, dialect) for v in values if has_wildcard(v)]
    return conditions[0] if len(conditions) == 1 else or_(*conditions)


def _strings_of(column: Any, *, values: Sequence[str], dialect: str) -> ColumnElement[bool]:
    return strings(column, values, dialect)


def modalities_in_study(study_id: Any, match: Callable[[Any], ColumnElement[bool]]) -> ColumnElement[bool]:
    """ModalitiesInStudy (C.6.1.1.3): the study has a live series whose modality ``match``es.

    EXISTS, not a join: a study with two matching series is one match.
    """
    other = series.alias("mis")
    return exists().where(other.c.study_id == study_id, other.c.deleted_at.is_(None), match(other.c.modality))


# -- the keys of an identifier --------------------------------------------------------------------------------


def key_condition(key: Key, values: Sequence[str], dialect: str) -> ColumnElement[bool] | None:
    """``key``'s column matches any of ``values`` (several: a list); None for universal matching."""
    path, column = key.keyword, key.column
    if is_universal(values):
        return None
    if key.match == "uid":
        return uid_list(column, values, path)
    if key.match in ("string", "cs"):
        return strings(column, values, dialect)
    conditions: list[ColumnElement[bool]] = []
    for value in values:
        if key.match == "date":
            conditions.append(date_condition(column, value, path))
        elif key.match == "time":
            conditions.append(time_condition(column, value, path))
        elif key.match == "number":
            conditions.append(number(column, value, path))
        elif key.match == "pn":
            matched = pn_matches(key.search_column, value, path)
            if matched is None:
                return None
            conditions.append(matched)
        else:
            raise AssertionError(f"{key.keyword} ({key.match}) is not matched on a column")
    return conditions[0] if len(conditions) == 1 else or_(*conditions)


def key_conditions(matches: Mapping[str, Sequence[str]], dialect: str, *, combined: bool = False) -> list[ColumnElement[bool]]:
    """The SQL conditions of an identifier's matching keys (keyword → values), ANDed by the caller.

    ``combined``: StudyDate and StudyTime (one value each) are one date-time
    range (C.2.2.2.5.1, when the peer negotiated it). ModalitiesInStudy is an
    EXISTS on the study's live series. A value not valid for its key is a
    ValidationError whose path is the keyword.
    """
    conditions: list[ColumnElement[bool]] = []
    pending = dict(matches)
    if combined and len(pending.get("StudyDate", ())) == 1 and len(pending.get("StudyTime", ())) == 1:
        d, t = KEYS["StudyDate"], KEYS["StudyTime"]
        conditions.append(combined_datetime(d.column, t.column, pending.pop("StudyDate")[0], pending.pop("StudyTime")[0], d.keyword, t.keyword))
    for keyword, values in pending.items():
        key = KEYS[keyword]
        if keyword == "ModalitiesInStudy":
            if not is_universal(values):
                conditions.append(modalities_in_study(study.c.id, partial(_strings_of, values=values, dialect=dialect)))
            continue
        if key.column is None or key.match == "fact":
            continue  # return-only keys (counts): answered, never matched
        condition = key_condition(key, values, dialect)
        if condition is not None:
            conditions.append(condition)
    return conditions


__all__ = [
    "LIKE_ESCAPE",
    "combined_datetime",
    "date_condition",
    "has_wildcard",
    "in_range",
    "is_universal",
    "key_condition",
    "key_conditions",
    "modalities_in_study",
    "number",
    "single_value",
    "strings",
    "time_condition",
    "uid_list",
    "wildcard",
]
