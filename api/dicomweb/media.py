"""Content negotiation (PS3.18 8.7, RFC 9110 12.5.1): which of the media types an answer can take the client accepts.

A missing ``Accept`` accepts anything. Media ranges (``*/*``,
``application/*``) match; ``q=0`` refuses; parameters other than ``q`` are
kept for the caller (a multipart's ``type``, a ``transfer-syntax``). Nothing
acceptable is a 406 naming what this resource can be (PS3.18 8.7.1.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from litestar.exceptions import HTTPException


@dataclass(frozen=True)
class MediaRange:
    type: str  # "application/dicom+json", "application/*", "*/*"
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        main, _, sub = media_type.partition("/")
        want_main, _, want_sub = self.type.partition("/")
        return want_main in ("*", main) and want_sub in ("*", sub)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an ``Accept`` header, most preferred first (a missing header: ``*/*``)."""
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges = []
    for item in _split(header, ","):
        parts = _split(item, ";")
        if not parts or "/" not in parts[0]:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for part in parts[1:]:
            name, _, value = part.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif name:
                params[name] = value
        ranges.append(MediaRange(parts[0].strip().lower(), params, q))
    return sorted((r for r in ranges if r.q > 0), key=lambda r: -r.q)


def choose(header: str | None, offered: Sequence[str]) -> str:
    """The first of ``offered`` the client accepts, by the client's preference; 406 naming ``offered`` when none."""
    for media_range in parse_accept(header):
        for media_type in offered:
            if media_range.matches(media_type):
                return media_type
    raise HTTPException(status_code=406, detail=f"this resource is available as {', '.join(offered)} only")


def choose_part(header: str | None, part_type: str) -> MediaRange:
    """The media range under which the client takes ``multipart/related`` parts of ``part_type`` (a bare
    ``part_type`` or ``*/*`` counts too: the answer is still multipart); 406 naming the form when none does."""
    for media_range in parse_accept(header):
        if media_range.type == "multipart/related":
            if MediaRange(media_range.params.get("type", part_type).lower()).matches(part_type):
                return media_range
        elif media_range.matches(part_type):
            return media_range
    raise HTTPException(status_code=406, detail=f'this resource is available as multipart/related; type="{part_type}" only')


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside double quotes (``type="application/dicom"`` keeps its inner ``;``)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == separator and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]





# Transfer syntaxes whose frames are the plain little-endian pixel values (PS3.5 8.1): sent as application/octet-stream.
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
# The media type of one compressed frame by its transfer syntax (PS3.18 Table 8.7.3-2).
FRAME_MEDIA: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg", "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg", "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2", "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx", "1.2.840.10008.1.2.5": "image/dicom-rle",
}


@dataclass(frozen=True)
class FrameChoice:
    """How frames will be sent: as stored, or decoded to native pixels; the parts' Content-Type."""

    decode: bool
    part_type: str  # the multipart's type parameter
    content_type: str  # each part's Content-Type


def choose_frames(header: str | None, transfer_syntax: str, *, can_decode: bool) -> FrameChoice:
    """How to send frames stored in ``transfer_syntax`` to a client that sent ``header`` (PS3.18 8.7.3.5); 406 if no way.

    Native frames go as ``application/octet-stream`` (Explicit VR Little
    Endian). Compressed frames go as stored when the client accepts their
    syntax (``transfer-syntax=*`` or the syntax's UID, with
    ``application/octet-stream`` or the syntax's own image type), else decoded
    to native when ``can_decode`` and the client accepts
    ``application/octet-stream`` without another syntax.
    """
    native = transfer_syntax in NATIVE_SYNTAXES
    own = FRAME_MEDIA.get(transfer_syntax)
    for media_range in parse_accept(header):
        part_type = media_range.params.get("type", media_range.type) if media_range.type == "multipart/related" else media_range.type
        part = MediaRange(part_type.strip('"').lower())
        wanted = media_range.params.get("transfer-syntax")
        if native:
            if part.matches("application/octet-stream") and wanted in (None, "*", EXPLICIT_LITTLE, transfer_syntax):
                return FrameChoice(False, "application/octet-stream", f"application/octet-stream; transfer-syntax={EXPLICIT_LITTLE}")
            continue
        if wanted in ("*", transfer_syntax) or (wanted is None and part.type == "*/*"):  # a bare */* (or no Accept): as stored
            if part.matches("application/octet-stream"):
                return FrameChoice(False, "application/octet-stream", f"application/octet-stream; transfer-syntax={transfer_syntax}")
        if own is not None and part.type != "*/*" and part.matches(own) and wanted in (None, "*", transfer_syntax):
            return FrameChoice(False, own, f"{own}; transfer-syntax={transfer_syntax}")
        if can_decode and part.matches("application/octet-stream") and wanted in (None, EXPLICIT_LITTLE):
            return FrameChoice(True, "application/octet-stream", f"application/octet-stream; transfer-syntax={EXPLICIT_LITTLE}")
    offered = [f'multipart/related; type="application/octet-stream"; transfer-syntax={transfer_syntax if not native else EXPLICIT_LITTLE}']
    if own is not None:
        offered.append(f'multipart/related; type="{own}"')
    if can_decode:
        offered.append(f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT_LITTLE}')
    raise HTTPException(status_code=406, detail=f"these frames are available as {', or '.join(offered)}")


__all__ = ["EXPLICIT_LITTLE", "FRAME_MEDIA", "NATIVE_SYNTAXES", "FrameChoice", "MediaRange", "choose", "choose_frames", "choose_part", "parse_accept"]
