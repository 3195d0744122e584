"""Response bodies of the patient-data endpoints (subjects, studies, series, instances)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

import msgspec

NextCursor = Annotated[str | None, msgspec.Meta(description="Pass as `cursor` for the next page; null on the last page.")]


class Subject(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    patient_id: str
    issuer: Annotated[str, msgspec.Meta(description='Issuer of Patient ID; "" when the partner sent none.')]
    patient_name: Annotated[str | None, msgspec.Meta(description="DICOM PN (PS3.5 §6.2), e.g. KIM^MINJI or 홍^길동.")]
    birth_date: dt.date | None
    sex: str | None


class StudySummary(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    study_instance_uid: str
    study_date: dt.date | None
    study_time: Annotated[str | None, msgspec.Meta(description="DICOM TM (HHMMSS.FFFFFF).")]
    accession_number: str | None
    description: str | None
    referring_physician_name: str | None
    subject: Subject
    modalities: Annotated[list[str], msgspec.Meta(description="Modalities of the study's live series.")]
    series_count: int
    instance_count: int
    partners: Annotated[list[str], msgspec.Meta(description="Partners that have the study.")]


class SeriesSummary(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    series_instance_uid: str
    series_number: int | None
    modality: str
    description: str | None
    body_part_examined: str | None
    instance_count: int
    partners: list[str]


class StudyDetail(msgspec.Struct, kw_only=True):
    study: StudySummary
    series: Annotated[list[SeriesSummary], msgspec.Meta(description="Live series in series-number order.")]


class Instance(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str | None
    instance_number: int | None
    partners: Annotated[list[str], msgspec.Meta(description="Partners keeping a copy of the file.")]


class StudyPage(msgspec.Struct, kw_only=True):
    items: list[StudySummary]
    next_cursor: NextCursor


class SubjectPage(msgspec.Struct, kw_only=True):
    items: list[Subject]
    next_cursor: NextCursor


class InstancePage(msgspec.Struct, kw_only=True):
    items: list[Instance]
    next_cursor: NextCursor
