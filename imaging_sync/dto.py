"""Canonical, validated DTOs: what every partner adapter produces.

Values are already in DICOM vocabulary and form (dates as ``date``, times as
DICOM TM strings ``HHMMSS.FFFFFF``), locations already split into bucket and
key. The sync engine trusts these and nothing else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class SubjectDTO:
    partner_id: str
    patient_id: str
    issuer: str  # "" when the partner sends none: part of the subject's identity
    name: str | None
    birth_date: dt.date | None
    sex: str | None


@dataclass(frozen=True, slots=True)
class InstanceDTO:
    partner_id: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str | None
    instance_number: int | None
    size_bytes: int | None
    sha256: str | None
    bucket: str
    key: str


@dataclass(frozen=True, slots=True)
class SeriesDTO:
    partner_id: str
    series_instance_uid: str
    modality: str
    series_number: int | None
    description: str | None
    body_part_examined: str | None
    instances: tuple[InstanceDTO, ...]


@dataclass(frozen=True, slots=True)
class StudyDTO:
    """A full snapshot of one study as one partner has it now."""

    partner_id: str
    updated_at: dt.datetime
    # Hash of the item as the partner sent it (not its updated_at) plus the
    # partner's mapping: equal means the item need not even be validated again.
    content_hash: str
    study_instance_uid: str
    accession_number: str | None
    study_date: dt.date | None
    study_time: str | None
    description: str | None
    referring_physician_name: str | None
    subject: SubjectDTO
    series: tuple[SeriesDTO, ...]

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)

    def mapped_hash(self) -> str:
        """SHA-256 of what the study says once validated and mapped: every field but ``updated_at`` and ``content_hash``.

        What decides whether a study changed: a partner that renames its
        vocabulary (``CT`` → ``Computed Tomography``, with its table updated to
        match) sends new raw items whose mapped content, and so this hash, is
        the same. Field order is the dataclasses' own, so the encoding is stable.
        """
        content = (
            self.partner_id, self.study_instance_uid, self.accession_number, self.study_date, self.study_time,
            self.description, self.referring_physician_name, self.subject, self.series,
        )
        return hashlib.sha256(_encode(content)).hexdigest()


@dataclass(frozen=True, slots=True)
class DeletedStudyDTO:
    """The partner no longer has this study."""

    partner_id: str
    updated_at: dt.datetime
    study_instance_uid: str


@dataclass(frozen=True, slots=True)
class RejectedItemDTO:
    """An item that broke the contract, kept with its reason and payload."""

    partner_id: str | None
    updated_at: dt.datetime | None
    reason: str
    payload: str  # the item's JSON as received (truncated when huge)
    kind: str = "validation"  # or "mapping"


@dataclass(frozen=True, slots=True)
class PendingStudy:
    """A study item identified and fingerprinted but not yet validated.

    Validating every instance costs more than fetching it; the engine compares
    ``content_hash`` with what it committed last time and calls ``resolve()``
    (full validation and mapping) only for items whose raw content changed. An
    item whose hash matches was valid, under the same mapping, when it was
    committed. Whether a resolved item changed is then its mapped content's
    to say (``StudyDTO.mapped_hash``).
    """

    partner_id: str
    updated_at: dt.datetime
    content_hash: str
    instance_count: int
    resolve: Callable[[], StudyDTO | RejectedItemDTO]


PageItem = StudyDTO | PendingStudy | DeletedStudyDTO | RejectedItemDTO


@dataclass(frozen=True, slots=True)
class Page:
    items: list[PageItem]
    next_page_token: str | None

    @property
    def max_updated_at(self) -> dt.datetime | None:
        stamps = [item.updated_at for item in self.items if item.updated_at is not None]
        return max(stamps) if stamps else None
