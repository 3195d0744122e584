"""Keyset ("seek") pagination conditions, in one place.

A listing is ordered by a sort column and the primary key as tie-breaker; the
next page starts strictly after the last row's ``(value, id)``. Fetching
``limit + 1`` rows tells whether there is a next page without a COUNT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, and_, or_

T = TypeVar("T")
Key = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; ``next_key`` is the sort key to continue after, None at the end."""

    items: list[T]
    next_key: Key | None


def after_desc_nulls_last(column: Any, id_column: Any, key: Key | None) -> ColumnElement[bool] | None:
    """Rows after ``key`` in ``column DESC NULLS LAST, id DESC`` order."""
    if key is None:
        return None
    value, ident = key
    if value is None:
        return and_(column.is_(None), id_column < ident)
    return or_(column < value, and_(column == value, id_column < ident), column.is_(None))


def after_asc_nulls_last(column: Any, id_column: Any, key: Key | None) -> ColumnElement[bool] | None:
    """Rows after ``key`` in ``column ASC NULLS LAST, id ASC`` order."""
    if key is None:
        return None
    value, ident = key
    if value is None:
        return and_(column.is_(None), id_column > ident)
    return or_(column > value, and_(column == value, id_column > ident), column.is_(None))


def after_desc(column: Any, id_column: Any, key: Key | None) -> ColumnElement[bool] | None:
    """Rows after ``key`` in ``column DESC, id DESC`` order (``column`` never NULL)."""
    if key is None:
        return None
    value, ident = key
    return or_(column < value, and_(column == value, id_column < ident))


def after_asc(columns: Sequence[Any], key: Key | None) -> ColumnElement[bool] | None:
    """Rows after ``key`` in ascending order of ``columns`` (none of them NULL)."""
    if key is None:
        return None
    # (a, b, c) > (x, y, z) spelled out: portable, and each branch is an index range.
    branches = []
    for i, column in enumerate(columns):
        equal = [columns[j] == key[j] for j in range(i)]
        branches.append(and_(*equal, column > key[i]))
    return or_(*branches)


def split(rows: Sequence[T], limit: int, key_of: Any) -> tuple[list[T], Key | None]:
    """The first ``limit`` rows and, if there were more, the key of the last one kept."""
    items = list(rows[:limit])
    return items, (key_of(items[-1]) if len(rows) > limit and items else None)

