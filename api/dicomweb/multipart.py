"""``multipart/related`` bodies (RFC 2387, PS3.18 8.6.1.2): each part its own Content-Type, written as it goes.

A WADO-RS answer of a series is hundreds of parts of up to gigabytes: parts
are yielded as their bytes arrive (an iterable of chunks per part), so the
body never sits in memory whole.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator


class Multipart:
    """One body: ``content_type`` for the response, :meth:`part` per part, :meth:`end` once."""

    def __init__(self, part_type: str) -> None:
        self.boundary = secrets.token_hex(16)
        self.content_type = f'multipart/related; type="{part_type}"; boundary={self.boundary}'

    def part(self, content_type: str, chunks: Iterable[bytes], *, location: str | None = None) -> Iterator[bytes]:
        head = f"--{self.boundary}\r\nContent-Type: {content_type}\r\n"
        if location is not None:
            head += f"Content-Location: {location}\r\n"
        yield (head + "\r\n").encode()
        yield from chunks
        yield b"\r\n"

    def end(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    def whole(self, parts: Iterable[tuple[str, bytes]]) -> bytes:
        """A small body at once (frames, bulk data): ``(content type, bytes)`` per part."""
        return b"".join(chunk for content_type, data in parts for chunk in self.part(content_type, [data])) + self.end()


__all__ = ["Multipart"]
