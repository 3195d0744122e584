"""Reading a C-FIND / C-MOVE / C-GET identifier into a request we can run (PS3.4 C.4.1.1.3, C.4.2.2.1).

pydicom has already decoded the text with the identifier's own Specific
Character Set (PS3.5 §6.1: ``ISO_IR 100``, ``ISO 2022 IR 149``, ``ISO_IR 192`` …),
so every value here is a Python ``str``. This module decides the model,
the level, which keys match and which are only returned, and refuses
identifiers the hierarchical model does not allow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom.errors import IdentifierMismatchError, InvalidKeyValueError, LimitExceededError
from imaging_sync.query.keys import KEYS, LEVELS, NOT_KEYS, UNIQUE_KEY, Key, Level, key_level, level_rank

Model = Literal["PATIENT", "STUDY"]  # Patient Root or Study Root information model


@dataclass(frozen=True, slots=True)
class Requested:
    """A key to return: a known key, or any other element answered zero-length with its VR."""

    tag: int
    vr: str
    key: Key | None


@dataclass(slots=True)
class QueryRequest:
    model: Model
    level: Level
    # keyword -> the values to match (several for a list); only keys with a non-universal value.
    matches: dict[str, list[str]] = field(default_factory=dict)
    returned: list[Requested] = field(default_factory=list)
    # Key/value pairs for the audit log (what the caller asked, as sent).
    audit_keys: dict[str, Any] = field(default_factory=dict)


def values_of(elem: Any) -> list[str]:
    """The element's values as strings: empty list for zero-length (universal matching)."""
    try:
        value = elem.value
    except Exception:  # a value pydicom cannot convert (e.g. "*" in an IS) — use the raw text
        value = None
    if value is None or value == "":
        raw = getattr(elem, "_value", None)
        if isinstance(raw, bytes) and raw.strip(b" \x00"):
            value = raw.decode("latin-1")
        else:
            return []
    if isinstance(value, (MultiValue, list, tuple)):
        items = [str(v) for v in value]
    elif isinstance(value, bytes):
        items = value.decode("latin-1").split("\\")
    else:
        items = [str(value)]
    items = [v.strip(" \x00") for v in items]
    return [v for v in items if v != ""] if any(items) else []


def _level(identifier: Dataset, model: Model) -> Level:
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if raw not in LEVELS:
        raise IdentifierMismatchError("Query/Retrieve Level missing or unknown", 0x00080052)
    if model == "STUDY" and raw == "PATIENT":
        raise IdentifierMismatchError("the Study Root model has no PATIENT level", 0x00080052)
    return raw


def _single_uid_or_id(request: QueryRequest, keyword: str, *, required: bool) -> None:
    """PS3.4 C.4.1.2.2 / C.4.2.2.1: the unique key of a level above the requested one is one value, no wildcard."""
    values = request.matches.get(keyword)
    tag = KEYS[keyword].tag
    if not values:
        if required:
            raise IdentifierMismatchError(f"{keyword} is required at {request.level} level in this model", tag)
        return
    if len(values) != 1 or any(c in values[0] for c in "*?"):
        raise IdentifierMismatchError(f"{keyword} must be a single value above the query level", tag)


# Values one key may list when the caller does not say (dicom.max_values_per_key is the node's setting).
MAX_VALUES_PER_KEY = 4096


def parse(identifier: Dataset, model: Model, *, retrieve: bool = False, max_values: int = MAX_VALUES_PER_KEY) -> QueryRequest:
    """The request an identifier makes, or IdentifierMismatchError / InvalidKeyValueError / LimitExceededError.

    For C-FIND every element but the level and the character set is a key to
    return; those with a value are also matched. For C-MOVE/C-GET only the
    unique keys count (C.4.2.2.1), and the requested level's key is required.
    A key listing more than ``max_values`` values is refused before anything
    is matched (a UID list is one SQL parameter per value).
    """
    level = _level(identifier, model)
    request = QueryRequest(model=model, level=level, audit_keys={**asked(identifier), "QueryRetrieveLevel": level})
    rank = level_rank(level)
    for elem in identifier:
        keyword = elem.keyword
        if elem.tag.group == 0x0002 or elem.tag.is_private or keyword in NOT_KEYS or keyword == "RetrieveAETitle":
            continue  # Retrieve AE Title is in every answer (dicom.responses), never matched (PS3.4 C.4.1.2.1)
        values = values_of(elem)
        if len(values) > max_values:
            raise LimitExceededError(f"{keyword or 'an element'} lists {len(values)} values; at most {max_values}", int(elem.tag))
        key = KEYS.get(keyword)
        if key is not None and level_rank(key_level(key, model)) > rank:
            key = None  # a key below the query level: answered zero-length, not matched
        if retrieve:
            if key is not None and keyword in UNIQUE_KEY.values() and values:
                _no_control_characters(keyword, values, key.tag)
                request.matches[keyword] = values
            continue
        request.returned.append(Requested(int(elem.tag), elem.VR, key))
        if key is None or not values or values == ["*"]:
            continue  # universal matching (C.2.2.2.3): zero-length, or a lone "*"
        if key.match == "none":
            continue  # a key we do not keep cannot be matched: treated as universal
        _no_control_characters(keyword, values, key.tag)
        request.matches[keyword] = values
    _check_hierarchy(request, retrieve)
    return request


def asked(identifier: Dataset) -> dict[str, Any]:
    """What a request asked, as its audit entry records it: every element sent with a value, by keyword.

    Also for a request refused before it could be parsed (its entry still
    says what was asked). Values as sent; the audit log escapes and caps them.
    """
    keys: dict[str, Any] = {}
    for elem in identifier:
        if elem.tag.group == 0x0002 or elem.tag.is_private or elem.keyword == "SpecificCharacterSet":
            continue
        values = values_of(elem)
        if values:
            keys[elem.keyword or f"{int(elem.tag):08X}"] = values if len(values) > 1 else values[0]
    return keys


def _no_control_characters(keyword: str, values: list[str], tag: int) -> None:
    """A matching value with a control character (a NUL, say) matches nothing a VR of ours allows (PS3.5 6.1.3:
    the VRs of matching keys carry none; ESC sequences are already decoded): refused as an invalid key value."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for value in values for c in value):
        raise InvalidKeyValueError(f"{keyword}: control characters are not allowed in a matching value", tag)


def _check_hierarchy(request: QueryRequest, retrieve: bool) -> None:
    """C.4.1.1.3.1 (hierarchical search) and C.4.2.2.1 (retrieve): the unique keys of the levels above."""
    rank = level_rank(request.level)
    top = 0 if request.model == "PATIENT" else 1
    for upper in range(top, rank):
        _single_uid_or_id(request, UNIQUE_KEY[LEVELS[upper]], required=True)
    if retrieve:
        keyword = UNIQUE_KEY[request.level]
        if not request.matches.get(keyword):
            raise IdentifierMismatchError(f"{keyword} is required to retrieve at {request.level} level", KEYS[keyword].tag)
        if request.level == "PATIENT":
            _single_uid_or_id(request, keyword, required=True)
        for value in request.matches[keyword]:
            if any(c in value for c in "*?"):
                raise InvalidKeyValueError(f"{keyword}: wildcards are not allowed in a retrieve", KEYS[keyword].tag)
