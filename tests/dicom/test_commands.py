"""dicom.commands encodes the per-file DIMSE messages of a retrieve byte for byte as pynetdicom does, and splits
them into PDUs no larger than the peer accepts; dicom.sending reads the File Meta Information as pydicom does."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicom_fixtures import Files
from pynetdicom.dimse_messages import C_GET_RSP, C_MOVE_RSP, C_STORE_RQ
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.pdu import P_DATA_TF

from dicom import commands
from dicom.sending import file_meta

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_MOVE, STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.2", "1.2.840.10008.5.1.4.1.2.2.3"


def _pynetdicom(message: object, primitive: object) -> bytes:
    message.primitive_to_message(primitive)  # type: ignore[attr-defined]
    return encode(message.command_set, True, True)  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("originator", [("MOVESCU", 7), ("ODD", 65535), (None, None)], ids=["c-move", "odd-length AE", "c-get"])
@pytest.mark.parametrize("uid", ["1.2.826.0.1.1.1.1", "1.2.826.0.1.1.1.12"], ids=["even", "odd"])
def test_store_request_is_pynetdicoms_command_set(originator: tuple[str | None, int | None], uid: str) -> None:
    primitive = C_STORE()
    primitive.MessageID, primitive.Priority = 3, 2
    primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID = CT, uid
    primitive.MoveOriginatorApplicationEntityTitle, primitive.MoveOriginatorMessageID = originator
    primitive.DataSet = __import__("io").BytesIO(b"\x08\x00\x18\x00")
    assert commands.store_request(CT, uid, 3, 2, *originator) == _pynetdicom(C_STORE_RQ(), primitive)


@pytest.mark.parametrize("kind", ["move", "get"])
def test_pending_retrieve_response_is_pynetdicoms_command_set(kind: str) -> None:
    primitive = C_MOVE() if kind == "move" else C_GET()
    primitive.MessageIDBeingRespondedTo = 9
    primitive.AffectedSOPClassUID = STUDY_ROOT_MOVE if kind == "move" else STUDY_ROOT_GET
    primitive.Status = 0xFF00
    primitive.NumberOfRemainingSuboperations, primitive.NumberOfCompletedSuboperations = 17, 2
    primitive.NumberOfFailedSuboperations, primitive.NumberOfWarningSuboperations = 1, 0
    expected = _pynetdicom(C_MOVE_RSP() if kind == "move" else C_GET_RSP(), primitive)
    field = commands.C_MOVE_RSP if kind == "move" else commands.C_GET_RSP
    assert commands.retrieve_pending(field, primitive.AffectedSOPClassUID, 9, 17, 2, 1, 0) == expected


def _pdu(primitive: object) -> P_DATA_TF:
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)  # type: ignore[arg-type]
    return pdu


@pytest.mark.parametrize("max_pdu", [0, 16384, 4096, 200])
def test_a_message_is_split_into_pdus_the_peer_accepts_and_reassembles_exactly(max_pdu: int) -> None:
    command = commands.store_request(CT, "1.2.3.4", 1, 2, "MOVESCU", 1)
    data = bytes(range(256)) * 200  # 51,200 bytes
    pdus = [_pdu(p) for p in commands.p_data(1, command, data, max_pdu)]
    items = [item for pdu in pdus for item in pdu.presentation_data_value_items]
    assert all(max_pdu == 0 or len(pdu.encode()) - 6 <= max_pdu for pdu in pdus)
    headers = [item.presentation_data_value[0] for item in items]
    assert headers[0] == 0x03 and headers[-1] == 0x02 and set(headers[1:-1]) <= {0x00}
    assert b"".join(item.presentation_data_value[1:] for item in items[1:]) == data
    assert items[0].presentation_data_value[1:] == command
    if max_pdu == 0:
        assert len(pdus) == 1


def test_file_meta_is_read_as_pydicom_reads_it(files: Files, tmp_path: Path) -> None:
    for uid, blob in files.data.items():
        path = tmp_path / "f.dcm"
        path.write_bytes(blob)
        meta, offset = split_dataset(path)
        ours = file_meta(blob)
        assert (ours.sop_class_uid, ours.sop_instance_uid, ours.transfer_syntax_uid, ours.offset) == (
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID, offset
        ), uid


@pytest.mark.parametrize("max_pdu", [0, 16384, 4096, 200, 120], ids=["unlimited", "16384", "4096", "200", "120: no room beside the command"])
@pytest.mark.parametrize("size", [1, 150, 51_200])
def test_the_wire_pdus_are_the_p_data_pdus_byte_for_byte(max_pdu: int, size: int) -> None:
    """dicom.sending writes wire_pdus to the socket itself: the same bytes pynetdicom would send for p_data."""
    command = commands.store_request(CT, "1.2.3.4", 1, 2, "MOVESCU", 1)
    data = (bytes(range(256)) * 201)[:size]
    expected = b"".join(_pdu(p).encode() for p in commands.p_data(5, command, data, max_pdu))
    assert b"".join(head + data[start:end] for head, start, end in commands.wire_pdus(5, command, size, max_pdu)) == expected


@pytest.mark.parametrize("status, comment", [(0x0000, None), (0xB000, None), (0xA700, "out of disk"), (0xC123, "odd")])
def test_a_c_store_response_is_read_as_pynetdicom_encodes_it(status: int, comment: str | None) -> None:
    from pynetdicom.dimse_messages import C_STORE_RSP

    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 42
    primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID = CT, "1.2.826.0.1.1.1.12"
    primitive.Status = status
    primitive.ErrorComment = comment
    pdus = [item for pdu in [_pdu(p) for p in commands.p_data(1, _pynetdicom(C_STORE_RSP(), primitive), None, 0)] for item in pdu.presentation_data_value_items]
    assert commands.store_response(pdus[0].presentation_data_value[1:]) == (42, status)
    [(context_id, control, fragment)] = list(commands.pdv_items(_pdu(next(commands.p_data(3, b"\x00" * 10, None, 0))).encode()[6:]))
    assert (context_id, control, fragment) == (3, 0x03, b"\x00" * 10)


@pytest.mark.parametrize("command", [
    commands.store_request(CT, "1.2.3", 1, 2, None, None),  # a request, not a response
    b"\x00\x00\x00\x01\x02\x00\x00\x00",  # an element running past its end
    b"\x08\x00\x18\x00\x00\x00\x00\x00",  # not group 0000
], ids=["c-store-rq", "truncated", "data set"])
def test_anything_but_a_c_store_response_is_refused(command: bytes) -> None:
    with pytest.raises(ValueError):
        commands.store_response(command)


def test_a_pdv_item_running_past_its_pdu_is_refused() -> None:
    with pytest.raises(ValueError):
        list(commands.pdv_items(b"\x00\x00\x00\x10\x01\x03abc"))
