"""pynetdicom as the peer: small helpers the DICOM tests share (no fixtures here)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

FIND = {"PATIENT": PatientRootQueryRetrieveInformationModelFind, "STUDY": StudyRootQueryRetrieveInformationModelFind}
MOVE = {"PATIENT": PatientRootQueryRetrieveInformationModelMove, "STUDY": StudyRootQueryRetrieveInformationModelMove}
GET = {"PATIENT": PatientRootQueryRetrieveInformationModelGet, "STUDY": StudyRootQueryRetrieveInformationModelGet}


def identifier(level: str, charset: str | None = None, **keys: Any) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def scu(calling_ae: str = "TEST_SCU") -> AE:
    ae = AE(ae_title=calling_ae)
    for ctx in (*FIND.values(), *MOVE.values()):
        ae.add_requested_context(ctx)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def find(address: tuple[str, int], ds: Dataset, model: str = "STUDY", *, calling_ae: str = "TEST_SCU", ext_neg: Any = None) -> tuple[int, list[Dataset], Dataset]:
    """(final status, the pending identifiers, the final status dataset) of one C-FIND on a new association."""
    ae = scu(calling_ae)
    assoc = ae.associate(*address, ae_title="ISYNC_TEST", ext_neg=ext_neg)
    assert assoc.is_established, "association refused"
    try:
        results, final = [], Dataset()
        for status, found in assoc.send_c_find(ds, FIND[model]):
            if status.Status in (0xFF00, 0xFF01):
                results.append(found)
            else:
                final = status
        return int(final.Status), results, final
    finally:
        assoc.release()


def values(results: Iterable[Dataset], keyword: str) -> list[Any]:
    out = []
    for ds in results:
        value = ds.get(keyword)
        out.append(str(value) if value is not None and not isinstance(value, list) else value)
    return sorted(out, key=str)


def get_ae(sop_classes: Iterable[tuple[str, list[str]]], calling_ae: str = "GET_SCU") -> tuple[AE, list[Any]]:
    """An AE that proposes C-GET plus storage contexts with the SCP role (PS3.4 C.4.3.3.1)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for ctx in GET.values():
        ae.add_requested_context(ctx)
    roles = {}
    for sop_class, syntaxes in sop_classes:
        ae.add_requested_context(sop_class, syntaxes)
        roles[sop_class] = build_role(sop_class, scp_role=True)
    return ae, list(roles.values())
