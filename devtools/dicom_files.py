"""Real, small DICOM Part 10 files for tests, the benchmark and the demo, as bytes.

Each file is what a partner bucket would hold for one index row (or one
simulator item): the patient, study, series and instance attributes of the
row, a tiny pixel matrix, and File Meta Information naming the row's SOP
class, SOP instance and transfer syntax (PS3.10 §7.1). Encoded with pydicom in
the transfer syntax asked for, for real: native (Implicit or Explicit VR
Little Endian, Deflated Explicit VR Little Endian) or RLE Lossless (PS3.5
Annex G, pydicom's own encoder). A syntax pydicom cannot encode without
plugins (JPEG, JPEG 2000) raises ``ValueError`` rather than writing a file
whose pixel data lies about its encoding.

The core never touches storage: uploading the bytes is the caller's job.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ENCODABLE_TRANSFER_SYNTAXES", "InstanceSpec", "dicom_file", "dicom_file_for_item", "dataset_bytes"]

ENCODABLE_TRANSFER_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless})


@dataclass(frozen=True)
class InstanceSpec:
    """The attributes of one file; names follow the index columns (imaging_sync.db.models)."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    transfer_syntax_uid: str = ExplicitVRLittleEndian
    patient_id: str = "PID-1"
    patient_name: str | None = None
    issuer: str | None = None
    birth_date: str | None = None  # YYYYMMDD
    sex: str | None = None
    accession_number: str | None = None
    study_date: str | None = None  # YYYYMMDD
    study_time: str | None = None  # HHMMSS
    study_description: str | None = None
    referring_physician_name: str | None = None
    modality: str = "OT"
    series_number: int | None = None
    series_description: str | None = None
    body_part_examined: str | None = None
    instance_number: int | None = None
    rows: int = 16
    columns: int = 16


def _pixels(spec: InstanceSpec) -> np.ndarray:
    """A deterministic 8-bit pattern seeded by the SOP Instance UID (every file differs)."""
    import numpy as np  # the demo extra: the base install writes no pixel data

    seed = int.from_bytes(hashlib.sha256(spec.sop_instance_uid.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    base = np.add.outer(np.arange(spec.rows), np.arange(spec.columns)).astype(np.uint16) * 3
    return ((base + rng.integers(0, 16, size=(spec.rows, spec.columns))) % 256).astype(np.uint8)


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    if value is not None and value != "":
        setattr(ds, keyword, value)


def dicom_file(spec: InstanceSpec) -> bytes:
    """The Part 10 file (preamble, ``DICM``, File Meta Information, data set) for ``spec``."""
    ts = UID(spec.transfer_syntax_uid)
    if ts not in ENCODABLE_TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer syntax {ts} ({ts.name}) cannot be encoded here; use one of "
            + ", ".join(sorted(ENCODABLE_TRANSFER_SYNTAXES))
        )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(spec.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(spec.sop_instance_uid)
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    texts = [spec.patient_name, spec.referring_physician_name, spec.study_description, spec.series_description]
    if any(t and not t.isascii() for t in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = spec.sop_class_uid
    ds.SOPInstanceUID = spec.sop_instance_uid
    ds.StudyInstanceUID = spec.study_instance_uid
    ds.SeriesInstanceUID = spec.series_instance_uid
    ds.PatientID = spec.patient_id
    ds.PatientName = spec.patient_name or ""
    _set(ds, "IssuerOfPatientID", spec.issuer)
    _set(ds, "PatientBirthDate", spec.birth_date)
    _set(ds, "PatientSex", spec.sex)
    ds.AccessionNumber = spec.accession_number or ""
    _set(ds, "StudyDate", spec.study_date)
    _set(ds, "StudyTime", spec.study_time)
    _set(ds, "StudyDescription", spec.study_description)
    ds.ReferringPhysicianName = spec.referring_physician_name or ""
    ds.StudyID = ""
    ds.Modality = spec.modality
    ds.SeriesNumber = spec.series_number if spec.series_number is not None else ""
    _set(ds, "SeriesDescription", spec.series_description)
    _set(ds, "BodyPartExamined", spec.body_part_examined)
    ds.InstanceNumber = spec.instance_number if spec.instance_number is not None else ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    pixels = _pixels(spec)
    if ts == RLELossless:
        ds.PixelData = pixels.tobytes()
        ds.compress(RLELossless, pixels, encoding_plugin="pydicom", generate_instance_uid=False)
    else:
        ds.PixelData = pixels.tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=ts.is_implicit_VR if ts != RLELossless else False, little_endian=True)
    return out.getvalue()


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file, without preamble and File Meta (what a C-STORE carries)."""
    import tempfile
    from pathlib import Path

    from pynetdicom.dsutils import split_dataset  # reads the meta group's own length

    with tempfile.NamedTemporaryFile(suffix=".dcm") as tmp:
        tmp.write(part10)
        tmp.flush()
        _, offset = split_dataset(Path(tmp.name))
    return part10[offset:]


def _da(iso: str | None) -> str | None:
    return iso.replace("-", "") if iso else None


def dicom_file_for_item(item: dict[str, Any], series_uid: str, sop_instance_uid: str, *, modality: str | None = None, transfer_syntax_uid: str | None = None) -> bytes:
    """The file of one instance of a simulator wire item (devtools.datagen.generate_study).

    ``modality`` is the DICOM code (the wire carries the partner's term);
    ``transfer_syntax_uid`` overrides the item's when that one cannot be encoded here.
    """
    subject = item["subject"]
    series = next(s for s in item["series"] if s["series_instance_uid"] == series_uid)
    inst = next(i for i in series["instances"] if i["sop_instance_uid"] == sop_instance_uid)
    spec = InstanceSpec(
        sop_instance_uid=sop_instance_uid,
        series_instance_uid=series_uid,
        study_instance_uid=item["study_instance_uid"],
        sop_class_uid=inst["sop_class_uid"],
        transfer_syntax_uid=transfer_syntax_uid or inst.get("transfer_syntax_uid") or ExplicitVRLittleEndian,
        patient_id=subject["patient_id"],
        patient_name=subject.get("name"),
        issuer=subject.get("issuer_of_patient_id"),
        birth_date=_da(subject.get("birth_date")),
        accession_number=item.get("accession_number"),
        study_date=_da(item.get("study_date")),
        study_time=(item.get("study_time") or "").replace(":", "") or None,
        study_description=item.get("description"),
        referring_physician_name=item.get("referring_physician_name"),
        modality=modality or "OT",
        series_number=series.get("series_number"),
        series_description=series.get("description"),
        instance_number=inst.get("instance_number"),
    )
    return dicom_file(spec)
