"""The Query/Retrieve errors: each its own failure kind (none reuses the core's), each its named DIMSE status."""

from __future__ import annotations

import inspect

from dicom import errors as dicom_errors
from dicom.errors import LimitExceededError, QueryRetrieveError, TooManyMatchesError
from dicom.statuses import NOT_AUTHORIZED, failure_for
from imaging_sync import errors as core_errors
from imaging_sync.errors import AccessDeniedError, ImagingSyncError


def error_types(module: object) -> list[type[ImagingSyncError]]:
    return [cls for _, cls in inspect.getmembers(module, inspect.isclass) if issubclass(cls, ImagingSyncError) and cls.__module__ == module.__name__]  # type: ignore[attr-defined]


def test_each_query_retrieve_error_names_its_own_kind_and_no_kind_has_two_types_in_core_and_edge() -> None:
    edge = error_types(dicom_errors)
    assert [cls.__name__ for cls in edge if "kind" not in vars(cls)] == []
    kinds: dict[str, list[str]] = {}
    for cls in (*error_types(core_errors), *edge):
        kinds.setdefault(cls.kind, []).append(cls.__name__)
    assert {kind: names for kind, names in kinds.items() if len(names) > 1} == {}


def test_the_module_s_table_lists_every_kind_with_its_type() -> None:
    rows = {tuple(line.split()[:2]) for line in (dicom_errors.__doc__ or "").splitlines() if line and not line.startswith(("=", "kind"))}
    assert {(cls.kind, cls.__name__) for cls in error_types(dicom_errors)} <= rows


def test_limits_are_refused_as_out_of_resources_and_too_many_matches_as_its_own_status() -> None:
    assert isinstance(TooManyMatchesError("x"), LimitExceededError)
    answers = {
        (name, retrieve): int(failure_for(error, retrieve=retrieve).Status)
        for name, error in (("limit", LimitExceededError("over")), ("matches", TooManyMatchesError("over")), ("other", QueryRetrieveError("no")))
        for retrieve in (False, True)
    }
    assert answers == {
        ("limit", False): 0xA700, ("limit", True): 0xA701,
        ("matches", False): 0xC003, ("matches", True): 0xC003,
        ("other", False): 0xC000, ("other", True): 0xC000,
    }


def test_an_operation_not_granted_is_the_core_s_denied_answered_not_authorized() -> None:
    status = failure_for(AccessDeniedError("calling AE not granted get"))
    assert (int(status.Status), status.ErrorComment) == (NOT_AUTHORIZED, "calling AE not granted get")
    assert AccessDeniedError.kind == "denied"
