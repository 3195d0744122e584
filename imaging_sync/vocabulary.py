"""Partner vocabulary → DICOM values, in one place.

Partners send coded fields in their own words ("male", "Computed Tomography").
Each partner's config carries a table per field; a value with no entry is a
mapping error (the item is rejected), never a stored guess. Values that
already are DICOM defined terms pass through when the partner allows it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from imaging_sync.errors import MappingError

# PS3.3 C.7.1.1 Patient's Sex.
SEX_TERMS = frozenset({"M", "F", "O"})
# PS3.3 C.7.3.1.1.1 Modality defined terms (current and retired ones still seen in archives).
MODALITY_TERMS = frozenset(
    "AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DMS DG DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO IOL "
    "IVOCT IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS PR PT "
    "PX REG RESP RF RT RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR "
    "SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC".split()
)
# Code String (CS, PS3.5 §6.2): upper case, digits, space, underscore; at most 16.
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")

_DICOM_TERMS: dict[str, frozenset[str] | None] = {
    "sex": SEX_TERMS,
    "modality": MODALITY_TERMS,
    # Body part has hundreds of defined terms (PS3.16 CID 4031); any well-formed CS passes.
    "body_part_examined": None,
}
FIELDS = frozenset(_DICOM_TERMS)


def _key(value: str) -> str:
    return " ".join(value.split()).casefold()


class Vocabulary:
    """One partner's mapping tables, looked up case- and whitespace-insensitively."""

    def __init__(self, tables: Mapping[str, Mapping[str, str]], *, passthrough_dicom_terms: bool = True) -> None:
        unknown = set(tables) - FIELDS
        if unknown:
            raise ValueError(f"unknown coded fields: {sorted(unknown)}")
        self._tables = {field: {_key(k): v for k, v in table.items()} for field, table in tables.items()}
        self._passthrough = passthrough_dicom_terms
        for field, table in self._tables.items():
            for target in table.values():
                if not self._is_dicom_term(field, target):
                    raise ValueError(f"vocabulary.{field}: {target!r} is not a DICOM value for {field}")
        canonical = json.dumps({"tables": self._tables, "passthrough": self._passthrough}, sort_keys=True)
        self.fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def map(self, field: str, value: str | None, path: str) -> str | None:
        """The DICOM value for a partner value; None stays None (DICOM type 2: empty)."""
        if value is None or value.strip() == "":
            return None
        mapped = self._tables.get(field, {}).get(_key(value))
        if mapped is not None:
            return mapped
        if self._passthrough and self._is_dicom_term(field, value):
            return value
        raise MappingError(path, f"no {field} mapping for partner value {value[:64]!r}")

    @staticmethod
    def _is_dicom_term(field: str, value: str) -> bool:
        terms = _DICOM_TERMS[field]
        return value in terms if terms is not None else _CODE_STRING.fullmatch(value) is not None
