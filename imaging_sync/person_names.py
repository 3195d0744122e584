"""DICOM Person Name (PN) values: checking and the normalised search form.

PS3.5 §6.2: up to three component groups (alphabetic, ideographic, phonetic)
separated by ``=``, each of up to five components separated by ``^``, each
group at most 64 characters. The search form is what name matching compares
against (API wildcards, C-FIND case-insensitive PN matching), so it lives here,
once.
"""

from __future__ import annotations

import unicodedata

from imaging_sync.errors import ValidationError

GROUP_MAX_LENGTH = 64
_FORBIDDEN = set("\\\r\n\t\x1b\x00")


def check_person_name(value: str, path: str) -> str:
    if any(ch in _FORBIDDEN for ch in value):
        raise ValidationError(path, "person name contains a control character or backslash")
    groups = value.split("=")
    if len(groups) > 3:
        raise ValidationError(path, f"person name has {len(groups)} component groups (at most 3)")
    for group in groups:
        if len(group) > GROUP_MAX_LENGTH:
            raise ValidationError(path, f"person name group is {len(group)} characters (at most {GROUP_MAX_LENGTH})")
        if group.count("^") > 4:
            raise ValidationError(path, "person name group has more than 5 components")
    return value


def search_form(value: str | None) -> str | None:
    """Case- and width-folded name used for case-insensitive matching.

    NFKC folds full-width Latin and compatibility Hangul jamo; casefold handles
    Latin case. Hangul has no case, so Korean names match as written.
    """
    if value is None:
        return None
    return unicodedata.normalize("NFKC", value).casefold()
