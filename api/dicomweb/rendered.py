"""Rendered images and thumbnails (PS3.18 10.4.1.1.3, 10.4.1.1.4): a frame as JPEG or PNG, windowed for a screen.

For previews (a viewer's study browser, a report, a list of studies): the
frame's stored values are rescaled (Rescale Slope/Intercept), windowed
(the request's ``window=center,width[,linear|sigmoid]``, else the file's own
first Window Center/Width, else the frame's value range), inverted for
MONOCHROME1, scaled to fit ``viewport=width,height`` (a thumbnail: 128×128)
keeping the aspect ratio, and encoded as ``image/jpeg`` (``quality``, default
90) or ``image/png`` (lossless, so a test can check every pixel). RGB frames
are sent as they are, without windowing.

Needs numpy and Pillow, the ``render`` extra, which the production install
does not carry: without them these resources answer 406 saying what to
install (the frames themselves, which OHIF renders on its own, still work).
A compressed frame is decoded first when pydicom can (:mod:`api.dicomweb.pixels`),
else the answer is 406 too.
"""

from __future__ import annotations

import io
import math
from typing import Any

from litestar.exceptions import HTTPException

from api.dicomweb.media import NATIVE_SYNTAXES, choose
from api.dicomweb.pixels import can_decode, decode_frame
from imaging_sync.catalog.headers import CachedHeader
from imaging_sync.errors import ValidationError
from imaging_sync.extras import missing_modules

IMAGE_TYPES = ("image/jpeg", "image/png")
THUMBNAIL = (128, 128)


def render(header: CachedHeader, frame: bytes, params: dict[str, str], accept: str | None, *, thumbnail: bool = False) -> tuple[bytes, str]:
    """The frame as an image: its bytes and media type; ValidationError naming a bad parameter, 406 when it cannot be made."""
    media_type = choose(accept, IMAGE_TYPES)
    missing = missing_modules("render")
    if missing:
        raise HTTPException(status_code=406, detail=f"rendering needs the 'render' extra (no {', '.join(missing)} here): pip install 'imaging-sync[render]'")
    viewport = _viewport(params.get("viewport")) if not thumbnail else THUMBNAIL
    window = _window(params.get("window"))
    quality = _quality(params.get("quality"))
    if header.transfer_syntax_uid not in NATIVE_SYNTAXES:
        if not can_decode(header):
            raise HTTPException(status_code=406, detail=f"frames in {header.transfer_syntax_uid} cannot be decoded here to be rendered")
        frame = decode_frame(header, frame)
    image = _image(header, frame, window)
    if viewport is not None:
        image.thumbnail(viewport)
    out = io.BytesIO()
    if media_type == "image/png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue(), media_type


def _image(header: CachedHeader, frame: bytes, window: tuple[float, float, str] | None) -> Any:
    import numpy as np
    from PIL import Image

    attrs = header.attributes
    rows, columns = int(_first(attrs, "00280010")), int(_first(attrs, "00280011"))
    samples, bits = int(_first(attrs, "00280002", 1)), int(_first(attrs, "00280100"))
    signed = int(_first(attrs, "00280103", 0)) == 1
    dtype = np.dtype(f"{'i' if signed else 'u'}{max(1, bits // 8)}").newbyteorder("<")
    values = np.frombuffer(frame, dtype=dtype, count=rows * columns * samples)
    if samples == 3:
        planar = int(_first(attrs, "00280006", 0)) == 1
        rgb = values.reshape(3, rows, columns).transpose(1, 2, 0) if planar else values.reshape(rows, columns, 3)
        return Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    pixels = values.reshape(rows, columns).astype(np.float64)
    pixels = pixels * float(_first(attrs, "00281053", 1)) + float(_first(attrs, "00281052", 0))
    center, width, function = window or _stored_window(attrs) or _range_window(pixels)
    if function == "sigmoid":
        shown = 255.0 / (1.0 + np.exp(-4.0 * (pixels - center) / width))
    else:  # PS3.3 C.11.2.1.2.1, linear
        shown = ((pixels - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    shown = np.clip(np.rint(shown), 0, 255).astype(np.uint8)
    if _first(attrs, "00280004", "MONOCHROME2") == "MONOCHROME1":
        shown = 255 - shown
    return Image.fromarray(shown, mode="L")


def _first(attrs: dict[str, Any], tag: str, default: Any = None) -> Any:
    value = attrs.get(tag, {}).get("Value")
    if not value:
        if default is None:
            raise HTTPException(status_code=406, detail=f"this instance has no ({tag[:4]},{tag[4:]}) to render from")
        return default
    return value[0]


def _stored_window(attrs: dict[str, Any]) -> tuple[float, float, str] | None:
    center, width = attrs.get("00281050", {}).get("Value"), attrs.get("00281051", {}).get("Value")
    if not center or not width or float(width[0]) < 1:
        return None
    function = str(attrs.get("00281056", {}).get("Value", ["LINEAR"])[0]).lower()
    return float(center[0]), float(width[0]), "sigmoid" if function == "sigmoid" else "linear"


def _range_window(pixels: Any) -> tuple[float, float, str]:
    low, high = float(pixels.min()), float(pixels.max())
    return (low + high) / 2.0, max(high - low, 1.0) + 1.0, "linear"


def _window(value: str | None) -> tuple[float, float, str] | None:
    """``window=center,width[,linear|sigmoid]`` (PS3.18 8.3.5.1.4)."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    try:
        center, width = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise ValidationError("window", "must be center,width[,linear|sigmoid]") from None
    function = parts[2].lower() if len(parts) > 2 else "linear"
    if len(parts) > 3 or function not in ("linear", "sigmoid") or not (math.isfinite(center) and math.isfinite(width)) or width < 1:
        raise ValidationError("window", "must be center,width[,linear|sigmoid] with a width of at least 1")
    return center, width, function


def _viewport(value: str | None) -> tuple[int, int] | None:
    """``viewport=width,height``: the largest the image is sent (never enlarged)."""
    if value is None:
        return None
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValidationError("viewport", "must be width,height in pixels")
    width, height = int(parts[0]), int(parts[1])
    if not (1 <= width <= 8192 and 1 <= height <= 8192):
        raise ValidationError("viewport", "width and height must be between 1 and 8192")
    return width, height


def _quality(value: str | None) -> int:
    if value is None:
        return 90
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise ValidationError("quality", "must be a whole number from 1 to 100")
    return int(value)


__all__ = ["IMAGE_TYPES", "THUMBNAIL", "render"]
