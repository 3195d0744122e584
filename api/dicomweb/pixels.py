"""Compressed frames decoded to native pixels, for a client that cannot take the stored syntax (PS3.18 8.7.3.5).

pydicom decodes with whatever decoders are installed: RLE Lossless always
(numpy), JPEG and JPEG 2000 only with its plugins (pylibjpeg, openjpeg), which
the production install does not carry. :func:`can_decode` asks pydicom
whether this syntax can be decoded here; when it cannot, the client gets a
406 naming what it can have (the frames as stored).
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from api.dicomweb.media import NATIVE_SYNTAXES
from imaging_sync.catalog.headers import CachedHeader

# The attributes a frame's pixels need to be decoded (PS3.3 C.7.6.3), read from the kept header.
_PIXEL_MODULE = {
    "00280002": "SamplesPerPixel", "00280004": "PhotometricInterpretation", "00280006": "PlanarConfiguration", "00280010": "Rows",
    "00280011": "Columns", "00280100": "BitsAllocated", "00280101": "BitsStored", "00280102": "HighBit", "00280103": "PixelRepresentation",
}


def can_decode(header: CachedHeader) -> bool:
    """The frames are compressed and pydicom has a decoder for their syntax installed here."""
    if header.transfer_syntax_uid in NATIVE_SYNTAXES:
        return False
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(UID(header.transfer_syntax_uid)).is_available)
    except (NotImplementedError, ValueError):
        return False


def decode_frame(header: CachedHeader, frame: bytes) -> bytes:
    """One compressed frame as native little-endian pixel values (what ``application/octet-stream`` carries)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(header.transfer_syntax_uid)
    for tag, keyword in _PIXEL_MODULE.items():
        value = _value(header.attributes.get(tag))
        if value is not None:
            setattr(ds, keyword, value)
    ds.NumberOfFrames = 1
    ds.PixelData = encapsulate([frame])
    array = ds.pixel_array  # pydicom's decoder for the syntax
    return bytes(array.astype(array.dtype.newbyteorder("<")).tobytes())


def _value(attribute: Any) -> Any:
    if not attribute or "Value" not in attribute:
        return None
    return attribute["Value"][0]


__all__ = ["can_decode", "decode_frame"]
