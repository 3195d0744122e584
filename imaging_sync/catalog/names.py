"""Patient-name wildcard matching (PS3.4 C.2.2.2.4) over ``subject.patient_name_search``.

``*`` matches any run of characters (also none), ``?`` exactly one; everything
else matches itself, case-insensitively: pattern and column are both in
``person_names.search_form`` (NFKC + casefold; Hangul has no case, so Korean
names match as written). SQL ``LIKE`` metacharacters typed by the user (``%``,
``_``, ``\\``) are escaped and match literally.

A Person Name may hold up to three component groups separated by ``=``
(alphabetic, ideographic, phonetic; PS3.5 §6.2): ``HONG^GILDONG=洪^吉洞=홍^길동``.
A pattern without ``=`` matches the whole value or any one of its groups, so
``홍*`` finds that name as well as a plain ``홍^길동``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, String, bindparam, or_

from imaging_sync.person_names import search_form

ESCAPE = "\\"
_SQL_SPECIAL = {"%", "_", ESCAPE}


def like_pattern(wildcard: str) -> str:
    """The LIKE pattern (escape character ``\\``) for a DICOM wildcard value."""
    return "".join(_tokens(wildcard))


def _tokens(wildcard: str) -> list[str]:
    out: list[str] = []
    for ch in search_form(wildcard) or "":
        if ch == "*":
            if not out or out[-1] != "%":  # "**" is "*"
                out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in _SQL_SPECIAL:
            out.append(ESCAPE + ch)
        else:
            out.append(ch)
    return out


def like_candidates(wildcard: str) -> list[str]:
    """The LIKE patterns a name must match one of: the whole value, or (without ``=``) one component group."""
    tokens = _tokens(wildcard)
    pattern = "".join(tokens)
    candidates = [pattern]
    if "=" not in wildcard and tokens:
        open_start, open_end = tokens[0] == "%", tokens[-1] == "%"
        if not open_end:
            candidates.append(pattern + "=%")  # the first group
        if not open_start:
            candidates.append("%=" + pattern)  # the last group
        if not (open_start or open_end):
            candidates.append("%=" + pattern + "=%")  # a middle group
    return candidates


def name_matches(column: Any, wildcard: str) -> ColumnElement[bool]:
    """``column`` (a search-form name) matches ``wildcard`` as a whole or in one component group."""
    return or_(*(column.like(p, escape=ESCAPE) for p in like_candidates(wildcard)))


def name_matches_bound(column: Any, count: int, prefix: str = "name") -> ColumnElement[bool]:
    """:func:`name_matches` for a statement built once: ``count`` patterns bound as ``{prefix}_0`` …

    :func:`bound_name_values` gives the values to bind (its length is ``count``).
    """
    return or_(*(column.like(bindparam(f"{prefix}_{i}", type_=String), escape=ESCAPE) for i in range(count)))


def bound_name_values(wildcard: str, prefix: str = "name") -> dict[str, str]:
    """The values for :func:`name_matches_bound`: ``{prefix}_i`` → the i-th LIKE candidate."""
    return {f"{prefix}_{i}": pattern for i, pattern in enumerate(like_candidates(wildcard))}
