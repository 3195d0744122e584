"""Deterministic generated partner data for the simulator, tests and benchmarks.

Every study is a pure function of ``(DatasetSpec, index)``: nothing is
materialised up front, so a benchmark can serve 100,000 studies while holding
none of them, and two runs (or a test and the simulator it talks to) see the
same data without sharing state.

Values are chosen in DICOM vocabulary first (PS3.3 / PS3.16 defined terms) and
then rendered in the *partner's* vocabulary for the wire, exactly as a real
partner would: ``"male"`` rather than ``M``, ``"Computed Tomography"`` rather
than ``CT``. :data:`PARTNER_VOCABULARY` is the table a partner configuration
needs to map the wire back to DICOM, and :func:`to_dicom_study` applies it, so
tests can compute the state a correct sync must reach.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property, lru_cache
from typing import Any

__all__ = [
    "PARTNER_VOCABULARY",
    "DatasetSpec",
    "format_timestamp",
    "from_epoch_us",
    "generate_study",
    "split_location",
    "to_dicom_study",
    "to_epoch_us",
]

_UTC = UTC
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_MAX_UID_LENGTH = 64  # PS3.5 section 9.1: a UID is at most 64 characters.
_MAX_ID_LENGTH = 128  # Partner API contract: ids are at most 128 characters.
_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_MS = 1000  # microseconds per millisecond: base items are 1 ms apart.

# --- DICOM code -> partner wire term -----------------------------------------

_SEX_TERMS = {"M": "male", "F": "female", "O": "other"}  # PS3.3 C.7.1.1 (0010,0040)

_MODALITY_TERMS = {  # PS3.3 C.7.3.1.1.1 defined terms for (0008,0060)
    "CT": "Computed Tomography",
    "MR": "MRI",
    "US": "Ultrasound",
    "CR": "Computed Radiography",
    "DX": "Digital Radiography",
    "PT": "PET",
    "NM": "Nuclear Medicine",
    "MG": "Mammography",
}

_BODY_PART_TERMS = {  # PS3.16 Annex L, Body Part Examined (0018,0015)
    "CHEST": "chest",
    "HEAD": "head",
    "ABDOMEN": "abdomen",
    "PELVIS": "pelvis",
    "CSPINE": "cervical spine",
    "LSPINE": "lumbar spine",
    "KNEE": "knee",
    "BREAST": "breast",
    "HEART": "heart",
    "NECK": "neck",
}

PARTNER_VOCABULARY: dict[str, dict[str, str]] = {
    "sex": {term: code for code, term in _SEX_TERMS.items()},
    "modality": {term: code for code, term in _MODALITY_TERMS.items()},
    "body_part_examined": {term: code for code, term in _BODY_PART_TERMS.items()},
}
"""Partner wire term -> DICOM code, per coded field: what a partner config maps."""

# --- DICOM facts used to build plausible studies --------------------------------

_SOP_CLASS_BY_MODALITY = {  # PS3.4 Annex B.5 Storage SOP Classes
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "US": "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray, For Presentation
    "PT": "1.2.840.10008.5.1.4.1.1.128",  # PET Image Storage
    "NM": "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image Storage
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography, For Presentation
}

_MODALITIES = tuple(_MODALITY_TERMS)

_TRANSFER_SYNTAXES = (  # PS3.5 Annex A / PS3.6 Annex A
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
)

_TYPICAL_SIZE_BY_MODALITY = {
    "CT": 526_000,
    "MR": 263_000,
    "US": 780_000,
    "CR": 8_400_000,
    "DX": 10_500_000,
    "PT": 68_000,
    "NM": 130_000,
    "MG": 27_000_000,
}

_BODY_PARTS_BY_MODALITY = {
    "CT": ("CHEST", "HEAD", "ABDOMEN", "PELVIS", "CSPINE", "LSPINE", "NECK", "HEART"),
    "MR": ("HEAD", "CSPINE", "LSPINE", "KNEE", "PELVIS", "ABDOMEN", "HEART", "BREAST"),
    "US": ("ABDOMEN", "PELVIS", "NECK", "HEART", "BREAST"),
    "CR": ("CHEST", "KNEE", "LSPINE", "PELVIS"),
    "DX": ("CHEST", "KNEE", "CSPINE", "LSPINE"),
    "PT": ("CHEST", "HEAD", "ABDOMEN"),
    "NM": ("HEART", "CHEST", "HEAD"),
    "MG": ("BREAST",),
}

_SERIES_DESCRIPTIONS = {
    "CT": ("AXIAL 5mm", "AXIAL 1.25mm", "CORONAL MPR", "SAGITTAL MPR", "SCOUT"),
    "MR": ("AX T1", "AX T2 FLAIR", "SAG T1", "COR T2", "DWI"),
    "US": ("B-MODE", "DOPPLER", "CINE"),
    "CR": ("PA", "LAT", "AP"),
    "DX": ("PA", "LAT", "AP"),
    "PT": ("PET AC", "PET NAC"),
    "NM": ("STRESS", "REST"),
    "MG": ("L CC", "R CC", "L MLO", "R MLO"),
}

_STUDY_SUFFIXES = ("W/O CONTRAST", "WITH CONTRAST", "ROUTINE", "FOLLOW-UP", "")
_ISSUERS = ("HOSP-A", "HOSP-B")

# (Hangul, romanised) pairs, so a subject's name exists in both forms.
_FAMILY_NAMES = (
    ("김", "KIM"), ("이", "LEE"), ("박", "PARK"), ("최", "CHOI"), ("정", "JUNG"),
    ("강", "KANG"), ("조", "CHO"), ("윤", "YOON"), ("장", "JANG"), ("홍", "HONG"),
)
_GIVEN_NAMES = (
    ("민준", "MINJUN"), ("서연", "SEOYEON"), ("지우", "JIWOO"), ("하준", "HAJUN"),
    ("서윤", "SEOYUN"), ("도윤", "DOYUN"), ("민지", "MINJI"), ("길동", "GILDONG"),
    ("예은", "YEEUN"), ("현우", "HYUNWOO"), ("민호", "MINHO"), ("수아", "SUA"),
)

# Draw budgets: how many random words each generator consumes at most.
_SUBJECT_DRAWS = 7
_STUDY_DRAWS = 9
_SERIES_DRAWS = 5

_BIRTH_FIRST = date(1930, 1, 1).toordinal()
_BIRTH_SPAN = date(2020, 12, 31).toordinal() - _BIRTH_FIRST
_STUDY_DATE_SPAN_DAYS = 3650


# --- time helpers shared with the simulator --------------------------------------


def to_epoch_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch: an exact, cheap sort key for updated_at."""
    if moment.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_us(epoch_us: int) -> datetime:
    """Inverse of :func:`to_epoch_us`, in UTC."""
    return _EPOCH + timedelta(microseconds=epoch_us)


def format_timestamp(epoch_us: int) -> str:
    """RFC 3339 in UTC with microseconds and ``Z``: the contract's ``updated_at`` form."""
    moment = _NAIVE_EPOCH + timedelta(microseconds=epoch_us)
    return moment.isoformat(timespec="microseconds") + "Z"


# --- the spec --------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate; every study is a pure function of this spec and its index.

    ``subjects`` defaults to ``studies // 2 + 1`` so several studies share a
    subject, and ``bucket`` to ``"{partner}-dicom"``; both are resolved at
    construction, so ``spec.subjects`` and ``spec.bucket`` are always concrete.
    UIDs embed a code derived from ``partner`` and ``seed``, so two partners'
    generated studies never share a Study Instance UID unless a test makes them.
    """

    partner: str = "demo"
    studies: int = 100
    series_per_study: int = 2
    instances_per_series: int = 5
    subjects: int | None = None
    seed: int = 1
    uid_root: str = "1.2.826.0.1.3680043.10.1234"
    bucket: str = ""
    korean_fraction: float = 0.3
    base_time: datetime = datetime(2026, 1, 1, tzinfo=_UTC)
    bare_key_fraction: float = 0.2

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_fractions()
        if self.base_time.tzinfo is None:
            raise ValueError('DatasetSpec "base_time" must be timezone-aware.')
        object.__setattr__(self, "base_time", self.base_time.astimezone(_UTC))
        if self.subjects is None:
            object.__setattr__(self, "subjects", self.studies // 2 + 1)
        if not self.bucket:
            object.__setattr__(self, "bucket", f"{self.partner}-dicom")
        self._check_identifiers()

    def _check_counts(self) -> None:
        for name in ("studies", "series_per_study", "instances_per_series", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f'DatasetSpec "{name}" must not be negative.')
        if self.subjects is not None and self.subjects < 1:
            raise ValueError('DatasetSpec "subjects" must be at least 1.')

    def _check_fractions(self) -> None:
        for name in ("korean_fraction", "bare_key_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'DatasetSpec "{name}" must be between 0 and 1.')

    def _check_identifiers(self) -> None:
        if not self.partner:
            raise ValueError('DatasetSpec "partner" must not be empty.')
        if not _UID_PATTERN.fullmatch(self.uid_root):
            raise ValueError(f'DatasetSpec "uid_root" is not a valid UID: {self.uid_root!r}.')
        last = max(self.studies - 1, 0)
        longest_uid = self.instance_uid(last, self.series_per_study, self.instances_per_series)
        if len(longest_uid) > _MAX_UID_LENGTH:
            raise ValueError(
                f'DatasetSpec "uid_root" is too long: generated UIDs reach {len(longest_uid)} '
                f"characters, the limit is {_MAX_UID_LENGTH}."
            )
        longest_id = self.instance_id(last, self.series_per_study, self.instances_per_series)
        if len(longest_id) > _MAX_ID_LENGTH:
            raise ValueError(
                f'DatasetSpec "partner" is too long for {_MAX_ID_LENGTH}-character ids.'
            )

    # Identifiers. Study and subject numbers are zero-padded so that
    # lexicographic order of ids equals index order.

    @cached_property
    def _width(self) -> int:
        return max(6, len(str(max(self.studies, self.subjects or 0))))

    @cached_property
    def _uid_prefix(self) -> str:
        partner_code = zlib.crc32(self.partner.encode()) % 1_000_000
        return f"{self.uid_root}.{partner_code}.{self.seed}"

    def study_id(self, index: int) -> str:
        """The partner's id of study ``index`` (0-based)."""
        return f"{self.partner}-study-{index:0{self._width}d}"

    def study_index(self, study_id: str) -> int | None:
        """Inverse of :meth:`study_id`; ``None`` if the id is not a generated study's."""
        prefix = f"{self.partner}-study-"
        digits = study_id[len(prefix):]
        well_formed = digits.isascii() and digits.isdigit() and len(digits) == self._width
        if not study_id.startswith(prefix) or not well_formed:
            return None
        index = int(digits)
        return index if index < self.studies else None

    def series_id(self, index: int, series_number: int) -> str:
        """The partner's id of series ``series_number`` (1-based) of study ``index``."""
        return f"{self.partner}-ser-{index:0{self._width}d}-{series_number}"

    def instance_id(self, index: int, series_number: int, instance_number: int) -> str:
        """The partner's id of one instance (numbers 1-based)."""
        return f"{self.partner}-inst-{index:0{self._width}d}-{series_number}-{instance_number}"

    def subject_id(self, subject_index: int) -> str:
        """The partner's id of subject ``subject_index`` (0-based)."""
        return f"{self.partner}-subj-{subject_index:0{self._width}d}"

    def study_uid(self, index: int) -> str:
        """Study Instance UID of study ``index``, under ``uid_root`` (PS3.5 section 9)."""
        return f"{self._uid_prefix}.{index + 1}"

    def instance_uid(self, index: int, series_number: int, instance_number: int) -> str:
        """SOP Instance UID of one instance: the series UID plus the instance number."""
        return f"{self._uid_prefix}.{index + 1}.{series_number}.{instance_number}"

    def base_updated_at_us(self, index: int) -> int:
        """``updated_at`` of generated study ``index`` in epoch microseconds: base + index ms."""
        return to_epoch_us(self.base_time) + index * _MS


# --- generation ------------------------------------------------------------------


class _Draw:
    """Cheap deterministic draws from a SHAKE-256 stream of 32-bit words.

    ``random.Random`` costs about 6 microseconds just to seed, and each
    ``choice`` several Python calls; a study makes a dozen draws, so at
    100,000 studies that is seconds. One XOF call gives every word a study
    needs; ``count`` is the caller's budget of draws.
    """

    __slots__ = ("_words", "_next")

    def __init__(self, seed: str, count: int) -> None:
        stream = hashlib.shake_256(seed.encode()).digest(4 * count)
        self._words: tuple[int, ...] = struct.unpack(f"<{count}I", stream)
        self._next = 0

    def _word(self) -> int:
        word = self._words[self._next]
        self._next += 1
        return word

    def below(self, n: int) -> int:
        """Uniform-enough integer in ``0..n-1`` (bias below 2**-32 * n)."""
        return self._word() * n >> 32

    def pick(self, choices: tuple[Any, ...]) -> Any:
        return choices[self._word() * len(choices) >> 32]

    def chance(self, probability: float) -> bool:
        return self._word() < probability * 4294967296.0


def _person_name(draw: _Draw, korean: bool, title_case: bool = False) -> str:
    """A DICOM PN value (PS3.5 section 6.2): ``Family^Given``, Hangul or romanised."""
    family_ko, family_en = draw.pick(_FAMILY_NAMES)
    given_ko, given_en = draw.pick(_GIVEN_NAMES)
    if korean:
        return f"{family_ko}^{given_ko}"
    if title_case:
        return f"{family_en.title()}^{given_en.title()}"
    return f"{family_en}^{given_en}"


@lru_cache(maxsize=65536)
def _subject_values(
    seed: int, korean_fraction: float, subject_index: int
) -> tuple[str, str, str | None, str]:
    """(issuer, name, birth date, DICOM sex) of one subject, seeded by the subject alone.

    Every study of a subject must agree on these, and studies share subjects,
    so the values are cached rather than drawn again for each study.
    """
    draw = _Draw(f"{seed}:subject:{subject_index}", _SUBJECT_DRAWS)
    sex_roll = draw.below(100)
    sex = "M" if sex_roll < 48 else "F" if sex_roll < 96 else "O"
    birth_date = None
    if not draw.chance(0.05):  # about one subject in twenty has no recorded birth date
        birth_date = date.fromordinal(_BIRTH_FIRST + draw.below(_BIRTH_SPAN)).isoformat()
    issuer = draw.pick(_ISSUERS)
    name = _person_name(draw, korean=draw.chance(korean_fraction))
    return issuer, name, birth_date, sex


def _subject(spec: DatasetSpec, subject_index: int) -> dict[str, Any]:
    """One subject's wire form (a fresh dict: callers may mutate what they get)."""
    issuer, name, birth_date, sex = _subject_values(spec.seed, spec.korean_fraction, subject_index)
    return {
        "id": spec.subject_id(subject_index),
        "patient_id": f"{subject_index + 1:08d}",
        "issuer_of_patient_id": issuer,
        "name": name,
        "birth_date": birth_date,
        "sex": _SEX_TERMS[sex],
    }


def _study_description(modality: str, body_part: str, suffix: str) -> str:
    text = f"{modality} {_BODY_PART_TERMS[body_part].upper()} {suffix}".strip()
    return text[:64]  # LO, PS3.5 section 6.2


def _instances(
    spec: DatasetSpec, index: int, series_number: int, modality: str, transfer_syntax: str
) -> list[dict[str, Any]]:
    """The instances of one series: the hot loop, so one hash per instance and no RNG.

    The SHA-256 of the instance id stands in for the file's digest, and its
    bytes also drive the size jitter and the location form, which keeps the
    loop free of RNG calls and datetime formatting.
    """
    width = spec._width
    padded = f"{index:0{width}d}"
    partner = spec.partner
    uid_prefix = f"{spec._uid_prefix}.{index + 1}.{series_number}."
    key_prefix = f"studies/{padded}/{series_number}/"
    s3_prefix = f"s3://{spec.bucket}/{key_prefix}"
    sop_class = _SOP_CLASS_BY_MODALITY[modality]
    typical_size = _TYPICAL_SIZE_BY_MODALITY[modality]
    bare_threshold = int(spec.bare_key_fraction * 65536)
    sha256 = hashlib.sha256
    instances = []
    for number in range(1, spec.instances_per_series + 1):
        instance_id = f"{partner}-inst-{padded}-{series_number}-{number}"
        digest = sha256(instance_id.encode()).digest()
        if (digest[2] << 8 | digest[3]) < bare_threshold:
            slash = "/" if digest[4] & 1 else ""
            location = f"{slash}{key_prefix}{number}.dcm"
        else:
            location = f"{s3_prefix}{number}.dcm"
        instances.append({
            "id": instance_id,
            "sop_instance_uid": f"{uid_prefix}{number}",
            "sop_class_uid": sop_class,
            "transfer_syntax_uid": transfer_syntax,
            "instance_number": number,
            "size_bytes": typical_size + (digest[0] << 8 | digest[1]),
            "sha256": digest.hex(),
            "location": location,
        })
    return instances


def _series(
    spec: DatasetSpec, index: int, draw: _Draw, modality: str, body_part: str
) -> list[dict[str, Any]]:
    """The series of one study; now and then a later series has another modality."""
    series = []
    study_uid = spec.study_uid(index)
    for number in range(1, spec.series_per_study + 1):
        series_modality, series_body_part = modality, body_part
        if number > 1 and draw.chance(0.1):
            series_modality = draw.pick(_MODALITIES)
            series_body_part = draw.pick(_BODY_PARTS_BY_MODALITY[series_modality])
        transfer_syntax = draw.pick(_TRANSFER_SYNTAXES)
        series.append({
            "id": spec.series_id(index, number),
            "series_instance_uid": f"{study_uid}.{number}",
            "modality": _MODALITY_TERMS[series_modality],
            "series_number": number,
            "description": draw.pick(_SERIES_DESCRIPTIONS[series_modality]),
            "body_part_examined": _BODY_PART_TERMS[series_body_part],
            "instances": _instances(spec, index, number, series_modality, transfer_syntax),
        })
    return series


def generate_study(spec: DatasetSpec, index: int) -> dict[str, Any]:
    """Wire ``StudyItem`` of study ``index``, exactly as the contract shapes it.

    Deterministic for ``(spec, index)`` and independent of every other index,
    which is what lets the simulator generate pages lazily. ``updated_at`` is
    ``base_time + index`` milliseconds, so base items are already in listing order.
    """
    if not 0 <= index < spec.studies:
        raise IndexError(f"study index {index} is outside 0..{spec.studies - 1}")
    draw = _Draw(f"{spec.seed}:{index}", _STUDY_DRAWS + _SERIES_DRAWS * spec.series_per_study)
    subject_index = draw.below(spec.subjects or 1)
    modality = draw.pick(_MODALITIES)
    body_part = draw.pick(_BODY_PARTS_BY_MODALITY[modality])
    study_day = spec.base_time.date().toordinal() - draw.below(_STUDY_DATE_SPAN_DAYS)
    seconds = 7 * 3600 + draw.below(13 * 3600)  # day-time hours, 07:00 to 20:00
    return {
        "id": spec.study_id(index),
        "updated_at": format_timestamp(spec.base_updated_at_us(index)),
        "deleted": False,
        "study_instance_uid": spec.study_uid(index),
        "accession_number": f"ACC{index + 1:08d}"[:16],  # SH, 16 characters at most
        "study_date": date.fromordinal(study_day).isoformat(),
        "study_time": f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}",
        "description": _study_description(modality, body_part, draw.pick(_STUDY_SUFFIXES)),
        "referring_physician_name": _person_name(
            draw, korean=draw.chance(spec.korean_fraction), title_case=True
        ),
        "subject": _subject(spec, subject_index),
        "series": _series(spec, index, draw, modality, body_part),
    }


# --- the wire, read back in DICOM vocabulary ------------------------------------------


def split_location(location: str, default_bucket: str) -> tuple[str, str]:
    """``(bucket, key)`` of a contract ``location``.

    ``s3://bucket/key`` names its bucket; a bare key (``studies/…`` or
    ``/studies/…``) lives in the partner's default bucket, without the slash.
    """
    if location.startswith("s3://"):
        bucket, _, key = location[len("s3://"):].partition("/")
        return bucket, key
    return default_bucket, location.lstrip("/")


def _dicom_code(field: str, term: str, study_id: str) -> str:
    try:
        return PARTNER_VOCABULARY[field][term]
    except KeyError:
        raise ValueError(
            f"study {study_id!r}: {field} {term!r} has no DICOM mapping; a correct sync "
            "rejects this item, so build it with inject_raw rather than as a live study"
        ) from None


def to_dicom_study(item: dict[str, Any], default_bucket: str) -> dict[str, Any]:
    """DICOM-vocabulary truth of one live wire item: what a correct sync stores.

    Keyed the way the federation model is (UIDs, not partner ids); coded values
    go back through :data:`PARTNER_VOCABULARY`, locations become bucket + key.
    Raises ``ValueError`` for a term with no mapping, since no correct sync
    could store such an item.
    """
    study_id = item["id"]
    subject = item["subject"]
    return {
        "accession_number": item.get("accession_number"),
        "study_date": item.get("study_date"),
        "study_time": item.get("study_time"),
        "description": item.get("description"),
        "referring_physician_name": item.get("referring_physician_name"),
        "subject": {
            "patient_id": subject["patient_id"],
            "issuer_of_patient_id": subject.get("issuer_of_patient_id"),
            "name": subject.get("name"),
            "birth_date": subject.get("birth_date"),
            "sex": _dicom_code("sex", subject["sex"], study_id) if subject.get("sex") else None,
        },
        "series": {
            series["series_instance_uid"]: _dicom_series(series, default_bucket, study_id)
            for series in item.get("series", [])
        },
    }


def _dicom_series(series: dict[str, Any], default_bucket: str, study_id: str) -> dict[str, Any]:
    body_part = series.get("body_part_examined")
    return {
        "modality": _dicom_code("modality", series["modality"], study_id),
        "series_number": series.get("series_number"),
        "description": series.get("description"),
        "body_part_examined": (
            _dicom_code("body_part_examined", body_part, study_id) if body_part else None
        ),
        "instances": {
            instance["sop_instance_uid"]: _dicom_instance(instance, default_bucket)
            for instance in series.get("instances", [])
        },
    }


def _dicom_instance(instance: dict[str, Any], default_bucket: str) -> dict[str, Any]:
    bucket, key = split_location(instance["location"], default_bucket)
    return {
        "sop_class_uid": instance["sop_class_uid"],
        "transfer_syntax_uid": instance.get("transfer_syntax_uid"),
        "instance_number": instance.get("instance_number"),
        "size_bytes": instance.get("size_bytes"),
        "sha256": instance.get("sha256"),
        "bucket": bucket,
        "key": key,
    }
