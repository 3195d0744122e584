"""The DIMSE messages a retrieve sends for every file, encoded by hand and sent as few PDUs as they fit in.

Why: a C-MOVE or C-GET sends, per instance, a C-STORE request to whoever
receives the file and a pending response (the sub-operation counts) to the
requester. pynetdicom builds each as a pydicom command ``Dataset``, encodes
it twice (once more for its group length), then sends the command and each
fragment of the data set as a P-DATA-TF PDU of its own: together about a
fifth of the node's CPU per moved instance. The command sets are small and
fixed (PS3.7 9.3.1.1, 9.3.4.2, 9.3.3.2): a dozen elements in Implicit VR
Little Endian (PS3.7 6.3.1), built here from their values; the command and
the data set's first fragment leave in one P-DATA-TF when they fit (PS3.8
9.3.5: a PDU may carry several PDVs), each later fragment in its own.
``tests/dicom/test_commands.py`` checks every byte against pynetdicom's own
encoding.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from pynetdicom.pdu_primitives import P_DATA

C_STORE_RQ, C_STORE_RSP, C_GET_RSP, C_MOVE_RSP = 0x0001, 0x8001, 0x8010, 0x8021
NO_DATA_SET, DATA_SET = 0x0101, 0x0001  # (0000,0800) Command Data Set Type
PENDING = 0xFF00

# PDV message control header (PS3.8 E.2): bit 0 command/data set, bit 1 last fragment.
_COMMAND_LAST, _DATA, _DATA_LAST = b"\x03", b"\x00", b"\x02"


def _element(tag: int, vr: str, value: int | str) -> bytes:
    if vr == "US":
        raw = struct.pack("<H", value)
    elif vr == "UL":
        raw = struct.pack("<I", value)
    else:  # UI padded with NUL, AE with a space (PS3.5 6.2)
        raw = str(value).encode("ascii")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
    return struct.pack("<HHI", 0x0000, tag, len(raw)) + raw


def _command(elements: list[tuple[int, str, int | str | None]]) -> bytes:
    """A command set: its group length, then the elements with a value, in tag order."""
    body = b"".join(_element(tag, vr, value) for tag, vr, value in elements if value is not None)
    return _element(0x0000, "UL", len(body)) + body


def store_request(
    sop_class_uid: str, sop_instance_uid: str, message_id: int, priority: int, originator_aet: str | None, originator_id: int | None
) -> bytes:
    """C-STORE-RQ (PS3.7 9.3.1.1); the Move Originator elements only for a C-MOVE's sub-operations."""
    return _command([
        (0x0002, "UI", sop_class_uid),
        (0x0100, "US", C_STORE_RQ),
        (0x0110, "US", message_id),
        (0x0700, "US", priority),
        (0x0800, "US", DATA_SET),
        (0x1000, "UI", sop_instance_uid),
        (0x1030, "AE", originator_aet),
        (0x1031, "US", originator_id),
    ])


def retrieve_pending(
    command_field: int, sop_class_uid: str | None, responding_to: int,
    remaining: int | None, completed: int | None, failed: int | None, warning: int | None,
) -> bytes:
    """A C-MOVE-RSP or C-GET-RSP with status Pending and no identifier (PS3.7 9.3.4.2, 9.3.3.2)."""
    return _command([
        (0x0002, "UI", sop_class_uid),
        (0x0100, "US", command_field),
        (0x0120, "US", responding_to),
        (0x0800, "US", NO_DATA_SET),
        (0x0900, "US", PENDING),
        (0x1020, "US", remaining),
        (0x1021, "US", completed),
        (0x1022, "US", failed),
        (0x1023, "US", warning),
    ])


def _fragments(size: int, command_size: int, max_pdu: int) -> Iterator[tuple[int, int]]:
    """Where a data set of ``size`` bytes is cut: first the fragment that shares the command's PDU ((0, 0) when
    none fits beside it), then one fragment per PDU. ``max_pdu`` is the peer's Maximum Length Received (0: no
    limit), the most a PDU's PDV items may take, each item 6 bytes of header beside its data."""
    room = max_pdu - 6 if max_pdu else 0
    offset = min(size, size if not room else max(0, room - (6 + command_size)))
    yield 0, offset
    while offset < size:
        end = min(size, offset + room)
        yield offset, end
        offset = end


def p_data(context_id: int, command: bytes, data: bytes | memoryview | None, max_pdu: int) -> Iterator[P_DATA]:
    """The message as P-DATA primitives: the command and the data set's first fragment together when they fit."""
    first = P_DATA()
    first.presentation_data_value_list = [[context_id, _COMMAND_LAST + command]]  # type: ignore[list-item]  # its setter wants lists
    if not data:
        yield first
        return
    view = memoryview(data)
    size = len(view)
    cuts = _fragments(size, len(command), max_pdu)
    _, end = next(cuts)
    if end:
        first.presentation_data_value_list.append([context_id, (_DATA_LAST if end == size else _DATA) + bytes(view[:end])])  # type: ignore[arg-type]
    yield first
    for start, end in cuts:
        pdata = P_DATA()
        pdata.presentation_data_value_list = [[context_id, (_DATA_LAST if end == size else _DATA) + bytes(view[start:end])]]  # type: ignore[list-item]
        yield pdata


# -- The same messages on the wire, for a socket written directly (dicom.sending's C-MOVE line) --------------

P_DATA_TF, A_ABORT = 0x04, 0x07
_PDU_HEADER = struct.Struct(">BxI")  # PDU type, reserved, length (PS3.8 9.3.1)
_PDV_HEADER = struct.Struct(">IBc")  # item length, presentation context ID, message control header (PS3.8 9.3.5.1)
ABORT_PDU = bytes([A_ABORT, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # A-ABORT-RQ, source: service user, no reason (PS3.8 9.3.8)


def pdu_header(pdu_type: int, length: int) -> bytes:
    return _PDU_HEADER.pack(pdu_type, length)


def parse_pdu_header(header: bytes) -> tuple[int, int]:
    """(PDU type, length of what follows) of a PDU's first six bytes."""
    pdu_type, length = _PDU_HEADER.unpack(header)
    return pdu_type, length


def pdv_header(context_id: int, control: bytes, fragment_size: int) -> bytes:
    return _PDV_HEADER.pack(fragment_size + 2, context_id, control)


def wire_pdus(context_id: int, command: bytes, size: int, max_pdu: int) -> Iterator[tuple[bytes, int, int]]:
    """The P-DATA-TF PDUs of a message whose data set is ``size`` bytes, cut as :func:`p_data` cuts it.

    Each is (the PDU's bytes up to its data fragment, the fragment's start and
    end in the data set): the caller writes the two together, the fragment
    straight from where the data set lies (memory or a file). The first PDU
    carries the command, and the first fragment when it fits (else an empty one).
    """
    command_pdv = pdv_header(context_id, _COMMAND_LAST, len(command)) + command
    for index, (start, end) in enumerate(_fragments(size, len(command), max_pdu)):
        data_pdv = pdv_header(context_id, _DATA_LAST if end == size else _DATA, end - start) if end > start else b""
        head = (command_pdv if index == 0 else b"") + data_pdv
        yield pdu_header(P_DATA_TF, len(head) + end - start) + head, start, end


def pdv_items(body: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(context ID, message control header, fragment) of each PDV item in a P-DATA-TF's body."""
    offset = 0
    while offset < len(body):
        if offset + 6 > len(body):
            raise ValueError("a PDV item runs past its P-DATA-TF")
        length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > len(body):
            raise ValueError("a PDV item runs past its P-DATA-TF")
        yield context_id, control[0], body[offset + 6:offset + 4 + length]
        offset += 4 + length


def command_values(command: bytes) -> dict[int, bytes]:
    """A command set's elements (Implicit VR Little Endian, group 0000, PS3.7 6.3.1) by element number."""
    values: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, offset)
        if group != 0x0000 or offset + 8 + length > len(command):
            raise ValueError("not a command set")
        values[element] = command[offset + 8:offset + 8 + length]
        offset += 8 + length
    if offset != len(command):
        raise ValueError("not a command set")
    return values


def store_response(command: bytes) -> tuple[int, int]:
    """(Message ID Being Responded To, Status) of a C-STORE-RSP command set (PS3.7 9.3.1.2); ValueError if it is not one."""
    values = command_values(command)
    try:
        (field,) = struct.unpack("<H", values[0x0100])
        (responding_to,) = struct.unpack("<H", values[0x0120])
        (status,) = struct.unpack("<H", values[0x0900])
    except (KeyError, struct.error) as exc:
        raise ValueError("a C-STORE-RSP without Command Field, Message ID Being Responded To or Status") from exc
    if field != C_STORE_RSP:
        raise ValueError(f"command field 0x{field:04X}, not a C-STORE-RSP")
    return responding_to, status


__all__ = [
    "ABORT_PDU", "C_GET_RSP", "C_MOVE_RSP", "command_values", "p_data", "parse_pdu_header", "pdv_items", "retrieve_pending",
    "store_request", "store_response", "wire_pdus",
]
