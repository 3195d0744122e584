"""A DICOM file's header read from its first bytes: the DICOM JSON of every attribute but bulk data, and where the
bulk data and each frame's bytes lie in the file.

Why: DICOMweb answers metadata and pixel frames for files that stay in the
partners' buckets. Reading a whole file to answer either would cost a GET of
megabytes per request; instead the header is parsed once from a ranged GET of
the file's start (:func:`parse`), and the answer is kept (``instance_header``):
metadata then costs no S3 read, a native frame one ranged GET of exactly its
bytes.

- **Header**: pydicom reads the bytes up to Pixel Data
  (``stop_before_pixels``). The bytes given may end early: unless reading
  stopped at the Pixel Data element or the bytes are the whole object, the
  header is longer than what was read, and :class:`NeedMore` says how much
  to read instead (four times as much, at most the object).
- **Bulk data** (PS3.18 F.2.6): binary values longer than
  :data:`BULK_THRESHOLD` bytes are not in the JSON; each becomes a
  ``BulkDataURI`` holding the key of its byte range in :attr:`Header.bulk`
  (the edge turns the key into a URL it serves).
- **Native pixel data**: frame ``i`` is ``frame_length`` bytes at
  ``value_offset + i * frame_length`` (Rows × Columns × Samples per Pixel ×
  Bits Allocated / 8). Frames of 1-bit data not ending on a byte are not
  addressable one by one (PS3.5 8.1.1) and get no frame table.
- **Encapsulated pixel data** (PS3.5 A.4): the fragments' offsets come from
  the item headers, read as a stream by :class:`FragmentScanner` (the
  pixel data is not in the header's bytes); frames are grouped from the
  Basic Offset Table, or one fragment per frame when the counts agree, or
  every fragment for a single frame.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from imaging_sync.errors import ValidationError

FIRST_READ = 64 << 10  # the first ranged GET: most headers fit in 64 KiB
BULK_THRESHOLD = 1024  # binary values longer than this are bulk data, not in the JSON
PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data
_ITEM, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)


class NeedMore(Exception):
    """The bytes given end inside the header: read ``size`` bytes from the start instead."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the header is longer than the bytes read; read {size}")
        self.size = size


@dataclass
class PixelData:
    """Where the pixel data is: its value's offset, and per frame the byte ranges (offset, length) that make it up."""

    tag: int
    value_offset: int
    encapsulated: bool
    frames: list[list[tuple[int, int]]] = field(default_factory=list)
    number_of_frames: int = 1


@dataclass
class Header:
    transfer_syntax_uid: str
    attributes: dict[str, Any]  # DICOM JSON (PS3.18 F.2), bulk data as {"vr", "BulkDataURI": key of `bulk`}
    bulk: dict[str, tuple[int, int]]  # key -> (offset, length) in the file
    pixel: PixelData | None


def parse(data: bytes, object_size: int) -> Header:
    """The header in ``data``, the first bytes of an object of ``object_size`` bytes.

    NeedMore when the header goes on past ``data``; ValidationError when the
    bytes are no DICOM file pydicom can read.
    """
    whole = len(data) >= object_size
    fp = io.BytesIO(data)
    try:
        ds = dcmread(fp, stop_before_pixels=True, force=False)
    except (InvalidDicomError, EOFError, struct.error, ValueError, OSError) as exc:
        if not whole:
            raise NeedMore(min(object_size, max(len(data) * 4, FIRST_READ))) from None
        raise ValidationError("file", f"not a DICOM file pydicom can read ({type(exc).__name__})") from None
    stop = fp.tell()
    at_pixels = _tag_at(data, stop, little=not _big_endian(ds)) in PIXEL_DATA_TAGS
    if not at_pixels and not whole:
        raise NeedMore(min(object_size, len(data) * 4))
    transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    bulk: dict[str, tuple[int, int]] = {}

    def bulk_uri(elem: DataElement) -> str:
        if elem.file_tell is None:
            raise ValidationError(elem.keyword or f"{int(elem.tag):08X}", "bulk data without a place in the file")
        key = str(elem.file_tell)
        bulk[key] = (elem.file_tell, len(elem.value))
        return key

    # Through json once: pydicom's values are str and float subclasses (UID, DSfloat …), kept as plain JSON.
    attributes = json.loads(json.dumps(ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=bulk_uri)))
    pixel = _pixel_data(ds, data, stop, transfer_syntax) if at_pixels else None
    return Header(transfer_syntax, attributes, bulk, pixel)


def _big_endian(ds: Any) -> bool:
    return str(ds.file_meta.get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.2"


def _tag_at(data: bytes, offset: int, *, little: bool) -> int | None:
    if offset + 4 > len(data):
        return None
    group, element = struct.unpack_from("<HH" if little else ">HH", data, offset)
    return int((group << 16) | element)


def _pixel_data(ds: Any, data: bytes, offset: int, transfer_syntax: str) -> PixelData:
    """The Pixel Data element at ``offset``: its value's place, and for native data the frame table."""
    uid = UID(transfer_syntax)
    little = uid != "1.2.840.10008.1.2.2"
    tag = _tag_at(data, offset, little=little) or 0
    if uid.is_implicit_VR:
        if offset + 8 > len(data):
            raise NeedMore(len(data) + 8)
        (length,) = struct.unpack_from("<I", data, offset + 4)
        value_offset = offset + 8
    else:
        if offset + 12 > len(data):
            raise NeedMore(len(data) + 12)
        (length,) = struct.unpack_from("<I" if little else ">I", data, offset + 8)
        value_offset = offset + 12
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixel = PixelData(tag=tag, value_offset=value_offset, encapsulated=length == 0xFFFFFFFF, number_of_frames=frames)
    if not pixel.encapsulated:
        frame_bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated)
        if frame_bits % 8 == 0 and frame_bits // 8 * frames <= length:
            size = frame_bits // 8
            pixel.frames = [[(value_offset + i * size, size)] for i in range(frames)]
    return pixel


class FragmentScanner:
    """Reads the item headers of encapsulated pixel data as its bytes stream by, keeping only the offsets.

    Feed it the object's bytes from ``start`` (the pixel data's value) in
    chunks of any size; :meth:`frames` then groups the fragments into frames.
    Memory stays at one item header, however large the fragments.
    """

    def __init__(self, start: int) -> None:
        self.position = start  # file offset of the next unread byte
        self.offset_table: list[int] = []
        self.fragments: list[tuple[int, int]] = []  # (offset, length) of each fragment's value
        self.done = False
        self._pending = b""
        self._skip = 0
        self._first = True

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk
        start = self.position - len(self._pending)
        i = 0
        while not self.done:
            if self._skip:
                step = min(self._skip, len(data) - i)
                i += step
                self._skip -= step
                if self._skip:
                    break
            if len(data) - i < 8:
                break
            group, element, length = struct.unpack_from("<HHI", data, i)
            if (group, element) == _SEQUENCE_END:
                self.done = True
                break
            if (group, element) != _ITEM:
                raise ValidationError("PixelData", f"an item tag was expected at byte {start + i}, found ({group:04X},{element:04X})")
            value_at = start + i + 8
            if self._first:
                if len(data) - i - 8 < length:  # the offset table is read whole before going on
                    break
                self._first = False
                self.offset_table = [v for (v,) in struct.iter_unpack("<I", data[i + 8 : i + 8 + length])]
                i += 8 + length
                continue
            self.fragments.append((value_at, length))
            i += 8
            self._skip = length
        self._pending = data[i:] if not self.done else b""
        self.position = start + len(data)

    def frames(self, number_of_frames: int) -> list[list[tuple[int, int]]]:
        """Each frame's fragments; empty when the frames cannot be told apart (several per frame, no offset table)."""
        if not self.fragments:
            return []
        if number_of_frames == 1:
            return [list(self.fragments)]
        if self.offset_table and len(self.offset_table) == number_of_frames:
            first = self.fragments[0][0] - 8  # offsets count from the first fragment's item tag
            starts = [first + o for o in self.offset_table]
            grouped: list[list[tuple[int, int]]] = [[] for _ in starts]
            for fragment in self.fragments:
                index = max(k for k, s in enumerate(starts) if s <= fragment[0] - 8)
                grouped[index].append(fragment)
            return grouped
        if len(self.fragments) == number_of_frames:
            return [[f] for f in self.fragments]
        return []


def scan_fragments(start: int, chunks: Iterable[bytes], number_of_frames: int) -> list[list[tuple[int, int]]]:
    """:class:`FragmentScanner` over ``chunks`` (the object's bytes from ``start``), stopping at the sequence's end."""
    scanner = FragmentScanner(start)
    for chunk in chunks:
        scanner.feed(chunk)
        if scanner.done:
            break
    return scanner.frames(number_of_frames)


__all__ = ["BULK_THRESHOLD", "FIRST_READ", "FragmentScanner", "Header", "NeedMore", "PixelData", "parse", "scan_fragments"]
