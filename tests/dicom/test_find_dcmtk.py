"""C-FIND with DCMTK's findscu as the peer: matching at each level, Korean names in UTF-8 and ISO 2022 IR 149."""

from __future__ import annotations

from pathlib import Path

from dicom_fixtures import NODE_AE, Node, run_tool
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian


def findscu(dcmtk: Path, node: Node, out: Path, *args: str, model: str = "-S") -> list[Dataset]:
    """Run findscu with -X (each response written as rsp*.dcm into ``out``) and read the responses back."""
    out.mkdir(exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    result = run_tool(dcmtk, "findscu", model, "-aet", "FINDSCU", "-aec", NODE_AE, "-X", "-od", str(out), "127.0.0.1", str(node.port), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_findscu_at_each_level(node: Node, dcmtk: Path, tmp_path: Path) -> None:
    out = tmp_path / "rsp"
    studies = findscu(dcmtk, node, out, "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyDate=20240101-20240131", "-k", "StudyInstanceUID",
                      "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances")
    assert sorted((s.StudyInstanceUID, s.NumberOfStudyRelatedInstances) for s in studies) == [("1.2.826.0.1.1", 6), ("1.2.826.0.1.4", 3)]
    patients = findscu(dcmtk, node, out, "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientName=lee*", "-k", "PatientID",
                       "-k", "NumberOfPatientRelatedStudies", model="-P")
    assert [(p.PatientID, p.NumberOfPatientRelatedStudies) for p in patients] == [("P003", 1)]
    series = findscu(dcmtk, node, out, "-k", "QueryRetrieveLevel=SERIES", "-k", "StudyInstanceUID=1.2.826.0.1.3", "-k", "Modality=MR",
                     "-k", "SeriesInstanceUID", "-k", "NumberOfSeriesRelatedInstances")
    assert [(s.SeriesInstanceUID, s.NumberOfSeriesRelatedInstances) for s in series] == [("1.2.826.0.1.3.2", 1)]
    images = findscu(dcmtk, node, out, "-k", "QueryRetrieveLevel=IMAGE", "-k", "StudyInstanceUID=1.2.826.0.1.1", "-k", "SeriesInstanceUID=1.2.826.0.1.1.1",
                     "-k", "SOPInstanceUID", "-k", "InstanceNumber=2")
    assert [i.SOPInstanceUID for i in images] == ["1.2.826.0.1.1.1.2"]
    refused = run_tool(dcmtk, "findscu", "-v", "-P", "-aec", NODE_AE, "127.0.0.1", str(node.port), "-k", "QueryRetrieveLevel=SERIES",
                       "-k", "StudyInstanceUID=1.2.826.0.1.1", "-k", "SeriesInstanceUID")
    assert "DataSetDoesNotMatchSOPClass" in refused.stdout + refused.stderr  # 0xA900


def _query_file(path: Path, charset: str | list[str], name: str) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = name
    ds.StudyInstanceUID = ""
    ds.StudyDescription = ""
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return path


def test_findscu_korean_names_in_utf8_and_iso_2022_ir_149(node: Node, dcmtk: Path, tmp_path: Path) -> None:
    out = tmp_path / "rsp"
    for charset in ("ISO_IR 192", ["", "ISO 2022 IR 149"]):
        query = _query_file(tmp_path / "q.dcm", charset, "김^민준")
        [match] = findscu(dcmtk, node, out, str(query))
        assert match.SpecificCharacterSet == "ISO_IR 192"
        assert (str(match.PatientName), match.StudyDescription, match.StudyInstanceUID) == ("김^민준", "CT 흉부", "1.2.826.0.1.3"), charset
