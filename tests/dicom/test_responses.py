"""The one-pass C-FIND response encoding (dicom.responses) gives the bytes pydicom gives for the same answer.

Each query of the matching tables (test_find's, Korean and accented names
included) runs through the index; every match's identifier, encoded by the
fast path, must equal, byte for byte, pydicom's encoding of the same answer
built as a ``Dataset`` (the path the node used before), in both little endian
syntaxes.
"""

from __future__ import annotations

import pytest
from dicom_fixtures import NODE_AE, Node
from pynetdicom.dsutils import encode
from scu import identifier
from test_find import STUDY_CASES

from dicom.find import Finder
from dicom.identifiers import parse
from dicom.responses import ResponseEncoder

OTHER_LEVELS = {
    "patients by name wildcard, every patient key": ("PATIENT", identifier(
        "PATIENT", PatientName="*", PatientID="", PatientBirthDate="", PatientSex="", IssuerOfPatientID="", OtherPatientIDs="",
        NumberOfPatientRelatedStudies="", NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances="",
    )),
    "korean name, utf-8 answers": ("STUDY", identifier(
        "STUDY", charset="ISO_IR 192", PatientName="김*", StudyInstanceUID="", StudyDescription="", ReferringPhysicianName="", PatientID="",
    )),
    "korean query in ISO 2022 IR 149": ("PATIENT", identifier("PATIENT", charset=["", "ISO 2022 IR 149"], PatientName="김^민준", PatientID="")),
    "studies with every study key": ("STUDY", identifier(
        "STUDY", StudyInstanceUID="", PatientName="", PatientID="", PatientBirthDate="", StudyDate="", StudyTime="", AccessionNumber="",
        StudyDescription="", ReferringPhysicianName="", ModalitiesInStudy="", NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="",
        StudyID="", InstitutionName="", SOPClassesInStudy="", RetrieveAETitle="",
    )),
    "series with counts": ("STUDY", identifier(
        "SERIES", StudyInstanceUID="1.2.826.0.1.1", SeriesInstanceUID="", Modality="", SeriesNumber="", SeriesDescription="",
        BodyPartExamined="", NumberOfSeriesRelatedInstances="", SeriesDate="",
    )),
    "images, odd-length UIDs and numbers": ("STUDY", identifier(
        "IMAGE", StudyInstanceUID="1.2.826.0.1.4", SeriesInstanceUID="1.2.826.0.1.4.1", SOPInstanceUID="", SOPClassUID="",
        InstanceNumber="", AvailableTransferSyntaxUID="", Rows="", ContentDate="",
    )),
}


def _queries() -> dict[str, tuple[str, object]]:
    cases: dict[str, tuple[str, object]] = {
        f"study: {name}": (model, identifier("STUDY", **{"PatientName": "", "StudyDate": "", "ModalitiesInStudy": "", **keys}))
        for name, (model, keys, _, _) in STUDY_CASES.items()
    }
    return {**cases, **OTHER_LEVELS}


def test_fast_encoding_equals_pydicoms_for_every_answer_of_the_matching_tables(node: Node) -> None:
    finder = Finder(node.engine, retrieve_ae_title=NODE_AE)
    compared, differing = 0, []
    for name, (model, ds) in sorted(_queries().items()):
        request = parse(ds, model)  # type: ignore[arg-type]
        for match in finder.find(request):
            reference = match.identifier.dataset()
            for implicit in (True, False):
                fast = match.identifier.encode(implicit)
                if fast != encode(reference, implicit, True):
                    differing.append((name, implicit, str(reference)))
            compared += 1
    assert differing == []
    assert compared >= 50  # the tables' answers really were compared, Korean ones among them


def test_non_ascii_values_bring_the_utf8_character_set_first() -> None:
    ds = identifier("STUDY", PatientName="", StudyInstanceUID="")
    encoder = ResponseEncoder("STUDY", parse(ds, "STUDY").returned, "ISYNC")
    ascii_only = encoder.encode(("KIM^MINJUN", "1.2.3"), implicit=False)
    korean = encoder.encode(("홍^길동", "1.2.3"), implicit=False)
    assert b"ISO_IR 192" not in ascii_only
    assert korean.startswith(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 192")
    assert "홍^길동".encode() in korean


@pytest.mark.parametrize("implicit", [True, False])
def test_values_are_padded_to_even_length_as_their_vr_requires(implicit: bool) -> None:
    ds = identifier("STUDY", StudyInstanceUID="", AccessionNumber="")
    encoder = ResponseEncoder("STUDY", parse(ds, "STUDY").returned, "ISYNC")
    raw = encoder.encode(("ACC", "1.2.3"), implicit)  # AccessionNumber (SH), StudyInstanceUID (UI) in tag order
    assert b"ACC " in raw and b"1.2.3\x00" in raw
    assert raw == encode(encoder.dataset(("ACC", "1.2.3")), implicit, True)
