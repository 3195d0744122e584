"""DICOM UID validation, in one place (PS3.5 §9.1).

A UID is 1 to 64 characters of digits and dots; each component is ``0`` or a
number without a leading zero; no component is empty. Invalid UIDs are
rejected, never repaired: a repaired UID would be a different entity.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from imaging_sync.errors import ValidationError

UID_MAX_LENGTH = 64
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= UID_MAX_LENGTH and _UID.fullmatch(value) is not None


def check_uid(value: object, path: str) -> str:
    """Return ``value`` if it is a valid UID, else raise ValidationError naming ``path``."""
    if is_valid_uid(value):
        return value
    if not isinstance(value, str):
        raise ValidationError(path, f"UID must be a string, got {type(value).__name__}")
    if not value:
        raise ValidationError(path, "UID is empty")
    if len(value) > UID_MAX_LENGTH:
        raise ValidationError(path, f"UID is {len(value)} characters long (at most {UID_MAX_LENGTH})")
    raise ValidationError(path, f"invalid UID {value[:70]!r} (digits and dots, no empty component, no leading zero)")
