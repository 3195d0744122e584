"""UID, date, time and person-name validation against pydicom's validators: agreement, and each deliberate difference with its reason.

Our validators are the one module of each kind (``imaging_sync.uids``,
``imaging_sync.dates``, ``imaging_sync.person_names``), used by every edge;
pydicom's is ``pydicom.valuerep.validate_value(vr, value, config.RAISE)``.
Values are checked as a query key would carry them (DA and TM with their
ranges, PS3.4 C.2.2.2.5). A row whose two verdicts differ must say why.
"""

from __future__ import annotations

import pytest
from pydicom import config
from pydicom.valuerep import validate_value

from imaging_sync import dates
from imaging_sync.errors import ValidationError
from imaging_sync.person_names import check_person_name
from imaging_sync.uids import check_uid

AGREE = ""

# (VR, value, our verdict, pydicom's verdict, why they differ)
CASES: list[tuple[str, str, bool, bool, str]] = [
    ("UI", "1.2.840.10008.1.2", True, True, AGREE),
    ("UI", "0", True, True, AGREE),
    ("UI", "1.2.0.3", True, True, AGREE),  # a component that is zero
    ("UI", "2.25.329800735698586629295641978511506172918", True, True, AGREE),
    ("UI", "1" + "2" * 63, True, True, AGREE),  # 64 characters
    ("UI", "1" + "2" * 64, False, False, AGREE),  # 65
    ("UI", "1.2.03", False, False, AGREE),  # PS3.5 §9.1: no leading zero in a component
    ("UI", "01.2", False, False, AGREE),
    ("UI", ".1.2", False, False, AGREE),
    ("UI", "1..2", False, False, AGREE),
    ("UI", "1.2.", False, False, AGREE),
    ("UI", "1.2.abc", False, False, AGREE),
    ("UI", "1.2.*", False, False, AGREE),  # no wildcard in a UID (C.2.2.2.4 excludes UI)
    ("UI", "1.2.3 ", False, False, AGREE),
    ("UI", "1.2.3\x00", False, False, AGREE),
    ("UI", "1.2.3\n", False, False, AGREE),
    ("UI", "", False, True, "an empty UID names nothing: refused as an identifier (a zero-length query key is universal matching before any check)"),
    ("DA", "20240131", True, True, AGREE),
    ("DA", "00010101", True, True, AGREE),
    ("DA", "20241301", False, False, AGREE),
    ("DA", "2024013", False, False, AGREE),
    ("DA", "2024-01-31", False, False, AGREE),  # ISO form: the partner contract's, not DICOM's
    ("DA", "2024013a", False, False, AGREE),
    ("DA", "20240101 ", False, False, AGREE),
    ("DA", "20240101-20240131", True, True, AGREE),  # PS3.4 C.2.2.2.5 ranges
    ("DA", "-20240131", True, True, AGREE),
    ("DA", "20240101-", True, True, AGREE),
    ("DA", "-", False, False, AGREE),
    ("DA", "20240101-20240131-20240201", False, False, AGREE),
    ("DA", "20240230", False, True, "stricter: a DA is a calendar date (PS3.5 Table 6.2-1); pydicom checks the digits' shape only"),
    ("DA", "20240100", False, True, "stricter: day 00 is no calendar date"),
    ("DA", "20240131-20240101", False, True, "stricter: a range that ends before it starts can match nothing; refused with that reason (C001, 400)"),
    ("DA", "2024.01.31", True, False, "more lenient: PS3.5 Table 6.2-1 recommends reading the pre-3.0 form YYYY.MM.DD, which old SCUs still send"),
    ("TM", "14", True, True, AGREE),
    ("TM", "1430", True, True, AGREE),
    ("TM", "143059", True, True, AGREE),
    ("TM", "143059.1", True, True, AGREE),
    ("TM", "143059.123456", True, True, AGREE),
    ("TM", "143060", True, True, AGREE),  # a leap second
    ("TM", "143059.1234567", False, False, AGREE),
    ("TM", "14.5", False, False, AGREE),  # a fraction only after the seconds
    ("TM", "2400", False, False, AGREE),
    ("TM", "1460", False, False, AGREE),
    ("TM", "146060", False, False, AGREE),
    ("TM", "1", False, False, AGREE),
    ("TM", "143", False, False, AGREE),
    ("TM", "0800-1400", True, True, AGREE),
    ("TM", "-1400", True, True, AGREE),
    ("TM", "0800-", True, True, AGREE),
    ("TM", "2200-0600", True, True, AGREE),  # not refused as inverted: with the combined date-time range it crosses midnight (C.2.2.2.5.1)
    ("TM", "14:30:59", True, False, "more lenient: PS3.5 Table 6.2-1 recommends reading the pre-3.0 form HH:MM:SS.frac"),
    ("TM", "12:30:00.5", True, False, "more lenient: the pre-3.0 form, with a fraction"),
    ("TM", "", False, True, "a zero-length TM key is universal matching, decided before any check; as a value it is no time"),
    ("PN", "SMITH^JOHN", True, True, AGREE),
    ("PN", "SMITH^JOHN^A^DR^JR", True, True, AGREE),
    ("PN", "A=B=C", True, True, AGREE),
    ("PN", "=洪^吉洞", True, True, AGREE),
    ("PN", "HONG^GILDONG=洪^吉洞=홍^길동", True, True, AGREE),
    ("PN", "ÉMILE^ZOLA", True, True, AGREE),
    ("PN", "O'BRIEN^SEÁN", True, True, AGREE),
    ("PN", "kim*", True, True, AGREE),  # wildcards are PN text (C.2.2.2.4)
    ("PN", "X" * 64, True, True, AGREE),
    ("PN", "X" * 65, False, False, AGREE),  # 64 characters a component group
    ("PN", "A=B=C=D", False, False, AGREE),  # three groups at most
    ("PN", "SMITH^JOHN^A^DR^JR^X", False, True, "stricter: PS3.5 §6.2.1.1 gives a group five components; pydicom counts groups only"),
    ("PN", "SMITH\\JONES", False, True, "stricter: a backslash separates values (PS3.5 §6.4); inside one value it is two names"),
    ("PN", "SMITH\nJOHN", False, True, "stricter: PS3.5 §6.1.2.3 allows no control character but ESC in a PN"),
    ("PN", "SMITH\x00", False, True, "stricter: a NUL is no character of any PN (and PostgreSQL refuses it in text)"),
]


def ours(vr: str, value: str) -> bool:
    try:
        if vr == "UI":
            check_uid(value, vr)
        elif vr == "DA":
            dates.da_range(value, vr)
        elif vr == "TM":
            dates.tm_range(value, vr)
        else:
            check_person_name(value, vr)
    except ValidationError:
        return False
    return True


def pydicoms(vr: str, value: str) -> bool:
    try:
        validate_value(vr, value, config.RAISE)
    except ValueError:
        return False
    return True


def test_our_validators_give_each_listed_verdict_and_pydicom_its_own() -> None:
    wrong = {
        (vr, value): {"ours": ours(vr, value), "pydicom": pydicoms(vr, value)}
        for vr, value, our_verdict, pydicom_verdict, _ in CASES
        if (ours(vr, value), pydicoms(vr, value)) != (our_verdict, pydicom_verdict)
    }
    assert wrong == {}


def test_every_disagreement_with_pydicom_says_why_and_only_disagreements_do() -> None:
    assert [(vr, value) for vr, value, a, b, why in CASES if (a != b) != bool(why)] == []


@pytest.mark.parametrize("vr", ["UI", "DA", "TM", "PN"])
def test_the_table_covers_agreement_and_refusal_for_each_vr(vr: str) -> None:
    verdicts = {(a, b) for v, _, a, b, _ in CASES if v == vr}
    assert {(True, True), (False, False)} <= verdicts
