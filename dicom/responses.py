"""C-FIND pending responses, encoded in one pass from the SQL row to the bytes that go on the wire.

Why: a large answer is thousands of pending responses, and each used to cost
about 0.6 ms of the node's CPU: a pydicom ``Dataset`` built per match, encoded
by pynetdicom, then a command set built and encoded twice (once more for its
group length) and sent as a P-DATA-TF PDU of its own. Profiled, that was
nearly all of a query's time, PostgreSQL a twentieth of it.

So, per request, :class:`ResponseEncoder` is compiled once: the elements the
response carries in tag order (PS3.5 7.1: ascending), the ones whose value
is the same in every match (the level, keys we answer zero-length, Retrieve
AE Title) encoded once by pydicom itself, and for the others their element
header for each little endian syntax. Per match only the values become
bytes. The C-FIND-RSP command set is the same for every pending response of
one request, so it is encoded once too, and the command and the identifier
leave in one P-DATA-TF PDU (two PDVs: PS3.8 9.3.5 allows several per PDU)
instead of two.

Two of pynetdicom's internals are used, guarded by
``tests/dicom/test_pynetdicom_internals.py`` and the version pin in
``pyproject.toml``: ``service_class.encode`` (which encodes a handler's
identifier) learns to take an :class:`EncodedIdentifier`, and an
association's ``dimse.send_msg`` learns the one-PDU pending response
(:func:`use_fast_responses`). Everything else (big endian or deflated
syntaxes, other services, a PDU that would be too large for the peer) goes
through pynetdicom as before. :meth:`EncodedIdentifier.dataset` is the same
answer as a pydicom ``Dataset``: the reference the tests compare the bytes
with, and what the other syntaxes are encoded from.
"""

from __future__ import annotations

import datetime as dt
import functools
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import service_class
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE
from pynetdicom.dsutils import encode as pydicom_encode
from pynetdicom.pdu_primitives import P_DATA

from dicom import commands
from dicom.identifiers import Requested

UTF8 = "ISO_IR 192"  # PS3.5 §6.1.2.5.3 / PS3.3 C.12.1.1.2: Unicode in UTF-8
QUERY_RETRIEVE_LEVEL, RETRIEVE_AE_TITLE, SPECIFIC_CHARACTER_SET = 0x00080052, 0x00080054, 0x00080005
PENDING = 0xFF00

# PS3.5 7.1.2: these VRs have a 2-byte reserved field and a 4-byte length in explicit VR.
_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
# PS3.5 6.2: UI values are padded with NUL, every other text VR with a space.
_NUL_PADDED = frozenset({"UI"})


def _header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", group, element, length)
    if vr in _LONG_LENGTH_VRS:
        return struct.pack("<HH2sHI", group, element, vr.encode("ascii"), 0, length)
    return struct.pack("<HH2sH", group, element, vr.encode("ascii"), length)


def _text(value: Any) -> str | None:
    """The value as DICOM text (dates as YYYYMMDD, numbers as digits, lists joined by backslashes), None if empty."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, (list, tuple)):
        return "\\".join(str(v) for v in value) if value else None
    return str(value)


class EncodedIdentifier:
    """One match's response identifier: its values, encoded on demand by the request's encoder."""

    __slots__ = ("_encoder", "values")

    def __init__(self, encoder: ResponseEncoder, values: tuple[Any, ...]) -> None:
        self._encoder = encoder
        self.values = values

    def encode(self, implicit: bool) -> bytes:
        return self._encoder.encode(self.values, implicit)

    def dataset(self) -> Dataset:
        return self._encoder.dataset(self.values)


class ResponseEncoder:
    """The response identifiers of one request (PS3.4 C.4.1.1.3.2): exactly the keys asked for, the level, Retrieve
    AE Title (C.4.1.2.1: where to retrieve from), and the character set when a value needs one."""

    def __init__(self, level: str, returned: Sequence[Requested], retrieve_ae_title: str) -> None:
        constant = Dataset()
        constant.QueryRetrieveLevel = level
        constant.RetrieveAETitle = retrieve_ae_title
        variable: list[tuple[int, str]] = []  # (tag, VR) of the elements whose value each match gives
        self.sources: list[Requested] = []  # where each variable element's value comes from, in the same order
        for req in sorted(returned, key=lambda r: r.tag):
            if req.key is None or req.key.match == "none":
                constant.add_new(req.tag, req.vr, [] if req.vr == "SQ" else None)
            else:
                variable.append((req.key.tag, req.key.vr))
                self.sources.append(req)
        self._constant = constant
        self._variable = variable
        # Per syntax, compiled when first used (an association uses one): the constant elements' bytes (encoded by
        # pydicom), placed between the variable ones by tag.
        self._layouts: dict[bool, list[tuple[bytes, int, str, bytes] | bytes]] = {}

    def _compile(self, implicit: bool) -> list[tuple[bytes, int, str, bytes] | bytes]:
        """The response's elements in tag order: bytes for a constant one, (header prefix, index, VR, pad) for a variable one."""
        constants = [(int(elem.tag), pydicom_encode(_one(elem), implicit, True) or b"") for elem in self._constant]
        items: list[tuple[int, tuple[bytes, int, str, bytes] | bytes]] = list(constants)
        for index, (tag, vr) in enumerate(self._variable):
            items.append((tag, (_header(tag, vr, 0, implicit)[:-4 if implicit or vr in _LONG_LENGTH_VRS else -2], index, vr,
                                b"\x00" if vr in _NUL_PADDED else b" ")))
        items.sort(key=lambda item: item[0])
        return [part for _, part in items]

    def identifier(self, values: tuple[Any, ...]) -> EncodedIdentifier:
        return EncodedIdentifier(self, values)

    def encode(self, values: tuple[Any, ...], implicit: bool) -> bytes:
        parts: list[bytes] = []
        needs_utf8 = False
        layout = self._layouts.get(implicit)
        if layout is None:
            layout = self._layouts[implicit] = self._compile(implicit)
        for part in layout:
            if isinstance(part, bytes):
                parts.append(part)
                continue
            prefix, index, vr, pad = part
            text = _text(values[index])
            if text is None:
                raw = b""
            else:
                if not text.isascii():
                    needs_utf8 = True
                raw = text.encode("utf-8")
                if len(raw) % 2:
                    raw += pad
            length = len(raw)
            parts.append(prefix + (struct.pack("<I", length) if implicit or vr in _LONG_LENGTH_VRS else struct.pack("<H", length)) + raw)
        if needs_utf8:  # (0008,0005) comes before every other element we send
            parts.insert(0, _utf8_character_set(implicit))
        return b"".join(parts)

    def dataset(self, values: tuple[Any, ...]) -> Dataset:
        """The same response as a pydicom Dataset (the reference path; big endian and deflated syntaxes)."""
        ds = Dataset()
        needs_utf8 = False
        for elem in self._constant:
            ds.add(elem)
        for (tag, vr), value in zip(self._variable, values, strict=True):
            text = _text(value)
            if text is not None and not text.isascii():
                needs_utf8 = True
            ds.add_new(tag, vr, _pydicom_value(value))
        if needs_utf8:
            ds.SpecificCharacterSet = UTF8
        return ds


def _pydicom_value(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    return value


def _one(elem: Any) -> Dataset:
    ds = Dataset()
    ds.add(elem)
    return ds


@functools.cache
def _utf8_character_set(implicit: bool) -> bytes:
    """(0008,0005) Specific Character Set = ISO_IR 192, encoded once per syntax."""
    ds = Dataset()
    ds.add_new(SPECIFIC_CHARACTER_SET, "CS", UTF8)
    return pydicom_encode(ds, implicit, True) or b""


# -- pynetdicom: the identifier as encoded, the pending response in one PDU ----------------------------

_encode_dataset: Callable[..., bytes | None] = service_class.encode  # type: ignore[attr-defined]  # imported there, not re-exported


def _encode(ds: Any, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
    """pynetdicom's ``encode`` for a handler's identifier, taking an EncodedIdentifier as it is."""
    if isinstance(ds, EncodedIdentifier):
        if is_little_endian and not deflated:
            return ds.encode(is_implicit_vr)
        ds = ds.dataset()
    return _encode_dataset(ds, is_implicit_vr, is_little_endian, deflated)


service_class.encode = _encode  # type: ignore[attr-defined]


def use_fast_responses(assoc: Any, *, pending_interval: float = 0.0) -> None:
    """Send this association's pending responses as one PDU each: a C-FIND's with the command set encoded once per
    request, a C-MOVE's or C-GET's (the sub-operation counts) encoded by dicom.commands, at most one per
    ``pending_interval`` seconds of each request (0: one after every file).

    pynetdicom's retrieve loop offers a pending response after every file. They are optional (PS3.4
    C.4.2.3.1, C.4.3.3.1: "may optionally generate"), and each is a message the node encodes and sends: one
    a second still shows a viewer the progress. The first of each request goes at once; the final
    response, with the counts, always.
    """
    dimse = assoc.dimse
    dimse._pending_interval = pending_interval  # per request: a C-FIND on the association wants none held back
    if getattr(dimse, "_sends_fast_responses", False):
        return
    original = dimse.send_msg
    cached: dict[tuple[int, str, int], bytes] = {}
    last_sent: dict[int, float] = {}  # message ID responded to -> when its last pending response went

    def send_msg(primitive: Any, context_id: int) -> None:
        if primitive.MessageIDBeingRespondedTo is None or getattr(primitive, "Status", None) != PENDING:
            original(primitive, context_id)
        elif isinstance(primitive, C_FIND) and primitive.Identifier is not None:
            send_find_pending(primitive, context_id)
        elif isinstance(primitive, (C_MOVE, C_GET)) and primitive.Identifier is None:
            now, responding_to = time.monotonic(), int(primitive.MessageIDBeingRespondedTo)
            if responding_to in last_sent and now - last_sent[responding_to] < dimse._pending_interval:
                return
            last_sent.clear()  # one request at a time per association
            last_sent[responding_to] = now
            command = commands.retrieve_pending(
                commands.C_MOVE_RSP if isinstance(primitive, C_MOVE) else commands.C_GET_RSP, primitive.AffectedSOPClassUID,
                primitive.MessageIDBeingRespondedTo, primitive.NumberOfRemainingSuboperations, primitive.NumberOfCompletedSuboperations,
                primitive.NumberOfFailedSuboperations, primitive.NumberOfWarningSuboperations,
            )
            for pdata in commands.p_data(context_id, command, None, dimse.maximum_pdu_size):
                assoc.dul.send_pdu(pdata)
        else:
            original(primitive, context_id)

    def send_find_pending(primitive: Any, context_id: int) -> None:
        key = (int(primitive.MessageIDBeingRespondedTo), str(primitive.AffectedSOPClassUID), context_id)
        command = cached.get(key)
        if command is None:
            message = C_FIND_RSP()
            message.primitive_to_message(primitive)
            command = pydicom_encode(message.command_set, True, True) or b""
            cached.clear()  # one request at a time per association: keep only its command
            cached[key] = command
        data = primitive.Identifier.getvalue()
        limit = dimse.maximum_pdu_size
        if not command or (limit and 12 + len(command) + len(data) > limit):
            original(primitive, context_id)  # pynetdicom fragments what does not fit one PDU
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list = [[context_id, b"\x03" + command], [context_id, b"\x02" + data]]  # type: ignore[list-item]  # its setter wants lists
        assoc.dul.send_pdu(pdata)

    dimse.send_msg = send_msg
    dimse._sends_fast_responses = True


__all__ = ["UTF8", "EncodedIdentifier", "ResponseEncoder", "use_fast_responses"]
