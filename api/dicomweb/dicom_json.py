"""Index values as the DICOM JSON Model (PS3.18 Annex F.2): ``{"00100010": {"vr": "PN", "Value": [...]}}``.

F.2.3: numbers of IS, DS and the binary numeric VRs are JSON numbers; a
person name is an object of its component groups (``Alphabetic``,
``Ideographic``, ``Phonetic``: the ``=``-separated groups of the DICOM
value, empty groups left out, so ``HONG^GILDONG=洪^吉洞=홍^길동`` keeps all
three and ``김^민준`` is Alphabetic alone); dates are ``YYYYMMDD`` text. An
attribute without a value has its ``vr`` and no ``Value`` (F.2.5).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

NUMBER_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"})
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_CONVERTED = NUMBER_VRS | {"PN"}  # VRs whose text values become something else in JSON


# VRs whose text may hold several values separated by a backslash (PS3.5 6.4): the index keeps some so (ModalitiesInStudy).
MULTI_VALUE_TEXT = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UC", "UI"})


def attribute(vr: str, value: Any) -> dict[str, Any]:
    """One attribute: its VR and, when it has one, its value(s)."""
    if value is None or value == "":
        return {"vr": vr}
    if type(value) is str and vr not in _CONVERTED and "\\" not in value:  # most values of a search's answer: taken as they are
        return {"vr": vr, "Value": [value]}
    if isinstance(value, str) and vr in MULTI_VALUE_TEXT and "\\" in value:
        value = value.split("\\")
    values = value if isinstance(value, (list, tuple)) else [value]
    encoded = [v for v in (_one(vr, item) for item in values) if v is not None]
    return {"vr": vr, "Value": encoded} if encoded else {"vr": vr}


def person_name(value: str) -> dict[str, str] | None:
    """A PN value's component groups (PS3.18 F.2.2), None when every group is empty."""
    groups = {name: group for name, group in zip(PN_GROUPS, value.split("="), strict=False) if group.strip("^ ")}
    return groups or None


def _one(vr: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if vr == "PN":
        return person_name(str(value))
    if vr in NUMBER_VRS:
        if isinstance(value, (int, float)):
            return value
        text = str(value).strip()
        return int(text) if vr != "DS" and text.lstrip("-").isdigit() else float(text)
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    return str(value)


def tag_key(tag: int) -> str:
    """The JSON object's key for a tag: eight upper-case hex digits (F.2.1)."""
    return f"{tag:08X}"


__all__ = ["NUMBER_VRS", "attribute", "person_name", "tag_key"]
