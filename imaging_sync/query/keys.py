"""The one table of DICOM keys ↔ index columns, per Query/Retrieve level (PS3.4 C.6.1.1, C.6.2.1).

Each key says how it matches (PS3.4 C.2.2.2: which matching types its VR
allows) and where its value comes from: a column of the level's table, a
column of a level above (joined), a fact the sync keeps on the study or series
row (``fact``: its counts and modalities, ``catalog.facts``), or a count computed
per batch of matches (``computed``: the patient level's). Keys we know but do not keep (Study ID, Other Patient
IDs, …) are answered zero-length, as C.2.2.1.2 allows for optional keys.

Every PN key the index stores has a search column beside its value (the
value's ``person_names.search_form``): each person name matches the same
way, whichever attribute it is (``imaging_sync.query.names``). In the core
because every edge that speaks DICOM attributes reads it: the DIMSE node's
C-FIND and retrieves today, a DICOMweb QIDO-RS tomorrow (edges never import
each other).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, tag_for_keyword

from imaging_sync.db.models import Instance, Series, Study, Subject, table_of

Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
LEVELS: tuple[Level, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")
# How a key matches: uid (single value or list), string (single value, wildcard;
# case-sensitive), cs (like string, plus lists), pn (case- and accent-insensitive, wildcard),
# date / time (single value or range), number (single value or list),
# fact (return-only, from a facts column the sync keeps on the study or series row: catalog/facts.py;
# ModalitiesInStudy also matches, by EXISTS on the study's series), computed (return-only, counted per
# batch of matches), none (not kept: return only).
Match = Literal["uid", "string", "cs", "pn", "date", "time", "number", "fact", "computed", "none"]

subject = table_of(Subject)
study = table_of(Study)
series = table_of(Series)
instance = table_of(Instance)

TABLE_OF_LEVEL = {"PATIENT": subject, "STUDY": study, "SERIES": series, "IMAGE": instance}


@dataclass(frozen=True, slots=True)
class Key:
    keyword: str
    level: Level
    match: Match
    column: Any = None  # the column the value is read from and matched on
    search_column: Any = None  # PN: the column holding person_names.search_form of the value (every PN key has one)
    tag: int = 0
    vr: str = ""


def _key(keyword: str, level: Level, match: Match, column: Any = None, search_column: Any = None) -> Key:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return Key(keyword, level, match, column, search_column, int(tag), dictionary_VR(tag))


KEYS: dict[str, Key] = {
    k.keyword: k
    for k in (
        # Patient level (PS3.4 C.6.1.1.2; in the Study Root model these are study-level keys).
        _key("PatientID", "PATIENT", "string", subject.c.patient_id),
        _key("PatientName", "PATIENT", "pn", subject.c.patient_name, subject.c.patient_name_search),
        _key("IssuerOfPatientID", "PATIENT", "string", subject.c.issuer),
        _key("PatientBirthDate", "PATIENT", "date", subject.c.birth_date),
        _key("PatientSex", "PATIENT", "cs", subject.c.sex),
        _key("NumberOfPatientRelatedStudies", "PATIENT", "computed"),
        _key("NumberOfPatientRelatedSeries", "PATIENT", "computed"),
        _key("NumberOfPatientRelatedInstances", "PATIENT", "computed"),
        _key("OtherPatientIDs", "PATIENT", "none"),
        _key("PatientBirthTime", "PATIENT", "none"),
        _key("EthnicGroup", "PATIENT", "none"),
        _key("PatientComments", "PATIENT", "none"),
        # Study level (C.6.1.1.3).
        _key("StudyInstanceUID", "STUDY", "uid", study.c.study_instance_uid),
        _key("StudyDate", "STUDY", "date", study.c.study_date),
        _key("StudyTime", "STUDY", "time", study.c.study_time),
        _key("AccessionNumber", "STUDY", "string", study.c.accession_number),
        _key("StudyDescription", "STUDY", "string", study.c.description),
        _key("ReferringPhysicianName", "STUDY", "pn", study.c.referring_physician_name, study.c.referring_physician_name_search),
        _key("ModalitiesInStudy", "STUDY", "fact", study.c.modalities),  # "CT\\MR": sorted, backslash-joined, as DICOM writes several values
        _key("NumberOfStudyRelatedSeries", "STUDY", "fact", study.c.series_count),
        _key("NumberOfStudyRelatedInstances", "STUDY", "fact", study.c.instance_count),
        _key("StudyID", "STUDY", "none"),
        _key("SOPClassesInStudy", "STUDY", "none"),
        _key("PatientAge", "STUDY", "none"),
        _key("PatientSize", "STUDY", "none"),
        _key("PatientWeight", "STUDY", "none"),
        _key("NameOfPhysiciansReadingStudy", "STUDY", "none"),
        _key("InstitutionName", "STUDY", "none"),
        # Series level (C.6.1.1.4).
        _key("SeriesInstanceUID", "SERIES", "uid", series.c.series_instance_uid),
        _key("Modality", "SERIES", "cs", series.c.modality),
        _key("SeriesNumber", "SERIES", "number", series.c.series_number),
        _key("SeriesDescription", "SERIES", "string", series.c.description),
        _key("BodyPartExamined", "SERIES", "cs", series.c.body_part_examined),
        _key("NumberOfSeriesRelatedInstances", "SERIES", "fact", series.c.instance_count),
        _key("SeriesDate", "SERIES", "none"),
        _key("SeriesTime", "SERIES", "none"),
        _key("PerformedProcedureStepStartDate", "SERIES", "none"),
        # Composite object instance level (C.6.1.1.5).
        _key("SOPInstanceUID", "IMAGE", "uid", instance.c.sop_instance_uid),
        _key("SOPClassUID", "IMAGE", "uid", instance.c.sop_class_uid),
        _key("InstanceNumber", "IMAGE", "number", instance.c.instance_number),
        _key("AvailableTransferSyntaxUID", "IMAGE", "uid", instance.c.transfer_syntax_uid),
        _key("ContentDate", "IMAGE", "none"),
        _key("ContentTime", "IMAGE", "none"),
        _key("NumberOfFrames", "IMAGE", "none"),
        _key("Rows", "IMAGE", "none"),
        _key("Columns", "IMAGE", "none"),
    )
}

# The unique key of each level (PS3.4 C.6.1.1 / C.6.2.1): what a hierarchical
# query must give, single-valued, for every level above the one it asks at.
UNIQUE_KEY: dict[Level, str] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

# Elements of an identifier that are not keys to match or return.
NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC", "QueryRetrieveView"}


def level_rank(level: Level) -> int:
    return LEVELS.index(level)


def key_level(key: Key, model: str) -> Level:
    """The level a key belongs to in an information model: patient keys are study keys in the Study Root (C.6.2.1)."""
    if model == "STUDY" and key.level == "PATIENT":
        return "STUDY"
    return key.level
