"""Shared response pieces and the conversion from core read models."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


def to_schema(value: Any, schema: type[T]) -> T:
    """A core read model (dataclass) as the API's response struct, field by field."""
    return msgspec.convert(value, schema, from_attributes=True)


def to_schemas(values: list[Any], schema: type[T]) -> list[T]:
    return msgspec.convert(values, list[schema], from_attributes=True)  # type: ignore[valid-type]  # a type built at run time, which msgspec needs and mypy cannot check
