"""One exception type per failure kind: ``kind`` is what run records, logs and alerts count."""

from __future__ import annotations

import inspect

from imaging_sync import errors
from imaging_sync.errors import AuthenticationError, ImagingSyncError


def core_error_types() -> list[type[ImagingSyncError]]:
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, ImagingSyncError) and cls.__module__ == errors.__name__]


def test_each_failure_kind_is_one_type_and_each_type_names_its_own_kind() -> None:
    types = core_error_types()
    assert len(types) > 10
    assert [cls.__name__ for cls in types if "kind" not in vars(cls)] == []  # no type counts under its parent's kind
    kinds: dict[str, list[str]] = {}
    for cls in types:
        kinds.setdefault(cls.kind, []).append(cls.__name__)
    assert {kind: names for kind, names in kinds.items() if len(names) > 1} == {}


def test_the_module_s_table_lists_every_kind_with_its_type() -> None:
    doc = errors.__doc__ or ""
    rows = {tuple(line.split()[:2]) for line in doc.splitlines() if line and not line.startswith(("=", "kind"))}
    assert {(cls.kind, cls.__name__) for cls in core_error_types()} <= rows


def test_an_authentication_failure_tells_the_caller_only_whether_a_key_was_presented() -> None:
    messages = {reason: str(AuthenticationError(reason)) for reason in AuthenticationError.REASONS}
    assert messages["missing"].startswith("missing API key")
    assert {messages[r] for r in ("invalid", "expired", "revoked")} == {"invalid API key"}
    assert [AuthenticationError(r).presented for r in AuthenticationError.REASONS] == [False, True, True, True]
