"""Reading a QIDO-RS query (PS3.18 8.3.4, 10.6.1) into a search the core can run.

The query string names attributes by keyword (``PatientName=``) or by tag
(``00100010=``), plus the reserved ``includefield``, ``limit``, ``offset`` and
``fuzzymatching``. Matching is the core's (``imaging_sync.query``), so a
value means here exactly what it means in a C-FIND: ``*``/``?`` wildcards,
``a-b``, ``a-`` and ``-b`` ranges on dates and times, case- and
accent-insensitive person names (Hangul included), and lists. A list is
written with commas, as PS3.18 8.3.4.1 writes UID lists (a backslash, the
DICOM separator, is taken too), for UIDs, code strings
(``ModalitiesInStudy=CT,MR``) and numbers; a name or a description may hold
a comma and is one value.

What is refused, each a ValidationError naming the parameter (a 400): a
name that is no attribute, a value not valid for its attribute, an attribute
of a level below the one searched (``/studies?SeriesInstanceUID=`` : search
``/series`` instead), a bad ``limit``/``offset``/``fuzzymatching``, a
parameter given twice where a list is not allowed. An attribute the index
does not keep (``StudyID``, ``PatientAge``) cannot be matched: it is
answered like universal matching and the response's ``Warning`` header says
so (PS3.18 8.3.4.x: the origin server ignores what it does not support and
says which).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from imaging_sync.errors import ValidationError
from imaging_sync.query.keys import KEYS, LEVELS, Key, Level, level_rank

RESERVED = ("includefield", "limit", "offset", "fuzzymatching")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_LISTS = ("uid", "cs", "number")  # match types a comma (or backslash) list applies to
MAX_VALUES = 1000  # values one attribute may list (a UID list is one SQL parameter per value)

# PS3.18 Table 10.6.3-3 (the attributes every match carries), restricted to what the index keeps
# or computes; the unique keys of the levels above are added for a series or instance search, so a
# client can always tell where a match belongs (and build its RetrieveURL).
DEFAULT_FIELDS: dict[Level, tuple[str, ...]] = {
    "STUDY": (
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName", "PatientName", "PatientID",
        "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    "SERIES": ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances", "BodyPartExamined", "StudyInstanceUID"),
    "IMAGE": ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "AvailableTransferSyntaxUID", "SeriesInstanceUID", "StudyInstanceUID"),
}


@dataclass(frozen=True, slots=True)
class Field:
    """An attribute of the answer: one the index answers (``key``), or another answered without a value."""

    tag: int
    keyword: str
    vr: str
    key: Key | None


@dataclass(slots=True)
class QidoQuery:
    level: Level
    matches: dict[str, list[str]] = field(default_factory=dict)  # keyword -> values (the core's matching)
    fields: list[Field] = field(default_factory=list)  # what each match carries, in tag order
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False
    ignored: list[str] = field(default_factory=list)  # attributes asked to match that the index cannot match


def parse(
    level: Level,
    params: Iterable[tuple[str, str]],
    *,
    scope: dict[str, str] | None = None,
    max_values: int = MAX_VALUES,
) -> QidoQuery:
    """The search ``params`` (name, value pairs, repeated names kept) ask for at ``level``.

    ``scope``: the UIDs the path fixes (``/studies/{study}/series``: StudyInstanceUID), matched like
    the rest; a parameter matching one of them again is refused rather than silently ANDed.
    """
    query = QidoQuery(level=level)
    scope = dict(scope or {})
    given: dict[str, list[str]] = {}
    seen: set[str] = set()
    include: list[str] = []
    for name, value in params:
        if name in RESERVED:
            if name == "includefield":
                include.extend(v.strip() for v in value.split(",") if v.strip())
            else:
                _reserved(query, name, value, seen)
            continue
        keyword = _keyword(name)
        if keyword in scope:
            raise ValidationError(name, f"{keyword} is given by the path; it cannot be matched again")
        given.setdefault(keyword, []).append(value)
    for keyword, values in given.items():
        _add_match(query, keyword, values, max_values)
    for keyword, uid in scope.items():
        query.matches[keyword] = [uid]
    query.fields = list(_fields(level, tuple(include), tuple(query.matches)))
    return query


def _reserved(query: QidoQuery, name: str, value: str, seen: set[str]) -> None:
    if name in seen:
        raise ValidationError(name, "given more than once")
    seen.add(name)
    if name == "fuzzymatching":
        if value.lower() not in ("true", "false"):
            raise ValidationError(name, "must be true or false")
        query.fuzzy = value.lower() == "true"
    elif name == "limit":
        query.limit = _count(name, value, minimum=1)
    else:
        query.offset = _count(name, value, minimum=0)


def _count(name: str, value: str, *, minimum: int) -> int:
    if not value.isdigit() or len(value) > 9:
        raise ValidationError(name, "must be a whole number")
    number = int(value)
    if number < minimum:
        raise ValidationError(name, f"must be at least {minimum}")
    return number


def _keyword(name: str) -> str:
    """The DICOM keyword a parameter names, by keyword or by 8-digit tag; ValidationError for anything else."""
    if _TAG.fullmatch(name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise ValidationError(name, "is not a tag of the DICOM data dictionary")
        return keyword
    if "." in name:
        raise ValidationError(name, "matching inside sequences is not supported")
    if tag_for_keyword(name) is None:
        raise ValidationError(name, "is not a DICOM attribute keyword or tag, nor a QIDO-RS parameter (includefield, limit, offset, fuzzymatching)")
    return name


def _add_match(query: QidoQuery, keyword: str, values: list[str], max_values: int) -> None:
    key = KEYS.get(keyword)
    if key is None or key.match in ("none", "computed") or (key.match == "fact" and keyword != "ModalitiesInStudy"):
        query.ignored.append(keyword)
        return
    if level_rank(key.level) > level_rank(query.level):
        raise ValidationError(keyword, f"is an attribute of the {key.level.lower()} level; a {query.level.lower()} search cannot match it")
    if len(values) > 1 and key.match not in _LISTS and keyword != "ModalitiesInStudy":
        raise ValidationError(keyword, "given more than once; only UIDs, codes and numbers take a list")
    items: list[str] = []
    for value in values:
        if key.match in _LISTS or keyword == "ModalitiesInStudy":
            items.extend(v.strip() for v in re.split(r"[,\\]", value))
        else:
            items.append(value.strip())
    if any(ord(c) < 0x20 or ord(c) == 0x7F for item in items for c in item):
        raise ValidationError(keyword, "control characters are not allowed in a matching value")
    items = [item for item in items if item != ""]
    if len(items) > max_values:
        raise ValidationError(keyword, f"lists {len(items)} values; at most {max_values}")
    if items and items != ["*"]:
        query.matches[keyword] = items


@functools.lru_cache(maxsize=512)
def _fields(level: Level, include: tuple[str, ...], matches: tuple[str, ...]) -> tuple[Field, ...]:
    """The defaults, the attributes matched on (PS3.18 10.6.3: a match carries them) and ``includefield``; in tag order.

    Remembered by its arguments: a viewer asks the same few shapes of search over and over, and this walk of the
    data dictionary was a fifth of a small search's handler time."""
    keywords = list(DEFAULT_FIELDS[level]) + list(matches)
    if any(item.lower() == "all" for item in include):
        keywords.extend(key.keyword for key in KEYS.values() if level_rank(key.level) <= level_rank(level) and key.match != "none")
    for item in include:
        if item.lower() == "all":
            continue
        try:
            keywords.append(_keyword(item))
        except ValidationError as exc:
            raise ValidationError("includefield", f"{item} {exc.reason}") from None
    keywords = [k for k in keywords if not (k in KEYS and KEYS[k].match == "computed")]  # the patient level's counts: no patient level here
    out: dict[int, Field] = {}
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None or tag in out:
            continue
        key = KEYS.get(keyword)
        if key is not None and level_rank(key.level) > level_rank(level):
            key = None  # a lower level's attribute (OHIF asks for Modality in a study search): no value at this level
        out[tag] = Field(int(tag), keyword, dictionary_VR(tag), key)
    return tuple(out[tag] for tag in sorted(out))


__all__ = ["DEFAULT_FIELDS", "LEVELS", "RESERVED", "Field", "QidoQuery", "parse"]
