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


__all__ = ["MediaRange", "choose", "parse_accept"]
