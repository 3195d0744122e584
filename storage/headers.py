"""Reading a file's header out of a partner's bucket with ranged GETs, never the whole file for it.

The first GET asks for :data:`~imaging_sync.dicom_header.FIRST_READ` bytes
(64 KiB); a longer header is read again, larger, with ``If-Match`` on the
ETag the first answer gave (the object must not change between the two). For
encapsulated pixel data the fragments' places are learnt by streaming the
pixel data once and keeping only item headers (memory: one chunk). Which
copy is read is the copy chooser's decision; a copy whose object is gone or
whose storage fails is passed over for the next (``imaging_sync.copies``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine

from imaging_sync.catalog import headers as headers_catalog
from imaging_sync.catalog.headers import CachedHeader, InstanceRef
from imaging_sync.copies import Attempt, CopyChooser, Location
from imaging_sync.dicom_header import FIRST_READ, Header, NeedMore, parse, scan_fragments
from imaging_sync.errors import ObjectCorruptError, ValidationError
from storage.boto_errors import where
from storage.reader import ObjectReader

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 << 20  # a header longer than this (bulk data before the pixels) is not read


@dataclass(frozen=True)
class ReadHeader:
    """A header, and the object it was read from: its ETag and size at the time."""

    header: Header
    etag: str
    size: int


class HeaderReader:
    """Reads headers through the process's object reader; thread-safe (the reader is)."""

    def __init__(self, reader: ObjectReader, copies: CopyChooser) -> None:
        self._reader = reader
        self._copies = copies

    def read(self, locations: list[Location], *, context: dict[str, str] | None = None) -> Attempt[ReadHeader]:
        """The header of the first copy that can be read; ``Attempt.value`` None when none could (``skipped`` says why)."""
        return self._copies.first_available(locations, self.read_copy, context=context)

    def read_copy(self, location: Location) -> ReadHeader:
        """One copy's header; a StorageError when it cannot be read: the object gone, changed while read, the storage
        failing, or ``ObjectCorruptError`` for bytes that are no DICOM file pydicom can read."""
        bucket, key = location.bucket, location.key
        with self._reader.open_range(bucket, key, 0, FIRST_READ) as stream:
            data = b"".join(stream)
            etag, size = stream.info.etag, stream.info.size
        while True:
            try:
                header = parse(data, size)
                break
            except NeedMore as more:
                if more.size > MAX_HEADER_BYTES:
                    raise ObjectCorruptError(f"read the header of {where(bucket, key)}: longer than {MAX_HEADER_BYTES} bytes") from None
                data = self._reader.read_range(bucket, key, 0, more.size, if_match=etag)
            except ValidationError as exc:  # the partner's object is no DICOM file we can read: that copy is unusable
                raise ObjectCorruptError(f"read the header of {where(bucket, key)}: {exc.reason}") from None
        pixel = header.pixel
        if pixel is not None and pixel.encapsulated and pixel.value_offset < size:
            with self._reader.open_range(bucket, key, pixel.value_offset, size, if_match=etag) as stream:
                pixel.frames = scan_fragments(pixel.value_offset, stream, pixel.number_of_frames)
        return ReadHeader(header, etag, size)




@dataclass
class FillResult:
    """What one background read of a partner's headers did: how many were read, and the failures by kind."""

    partner: str
    read: int = 0
    failed: dict[str, int] = field(default_factory=dict)


class HeaderCache:
    """Instances' headers: the kept ones (``instance_header``), the others read now, several at once, and kept.

    The background reader (after a sync) and the DICOMweb edge (a first
    metadata or frame request) both come here, so a header is read the same
    way whoever asks first. A copy that cannot be read is recorded as a
    failure (its kind; never its bucket or key in the log: a partner may
    build keys from patient data) and answered as such; the next request
    tries again.
    """

    def __init__(self, engine: Engine, reader: HeaderReader, *, concurrency: int = 8) -> None:
        self._engine = engine
        self._reader = reader
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="header-read")

    def headers(self, refs: Sequence[InstanceRef], conn: Connection | None = None) -> dict[uuid.UUID, CachedHeader | str]:
        """Each instance's header, or the kind of failure that kept it from being read (``object_missing``, …).

        ``conn``: a connection the caller holds (a request's), for the lookup of the kept ones; headers read
        now are kept in a transaction of their own."""
        if conn is not None:
            found: dict[uuid.UUID, CachedHeader | str] = dict(headers_catalog.cached(conn, [r.id for r in refs]))
        else:
            with self._engine.connect() as own:
                found = dict(headers_catalog.cached(own, [r.id for r in refs]))
        missing = [r for r in refs if r.id not in found]
        if missing:
            found.update(self._read(missing))
        return found

    def read_again(self, ref: InstanceRef) -> CachedHeader | str:
        """Forget what was kept for ``ref`` (its object changed) and read it again."""
        with self._engine.begin() as conn:
            headers_catalog.forget(conn, ref.id)
        return self._read([ref])[ref.id]

    def _read(self, refs: Sequence[InstanceRef]) -> dict[uuid.UUID, CachedHeader | str]:
        attempts = list(self._pool.map(lambda ref: self._reader.read(ref.locations, context={"instance_id": str(ref.id)}), refs))
        out: dict[uuid.UUID, CachedHeader | str] = {}
        with self._engine.begin() as conn:
            for ref, attempt in zip(refs, attempts, strict=True):
                if attempt.value is not None and attempt.location is not None:
                    read = attempt.value
                    out[ref.id] = headers_catalog.store(conn, ref.id, attempt.location, read.etag, read.size, read.header)
                    continue
                kind = attempt.failure.kind if attempt.failure is not None else (attempt.skipped[-1].kind if attempt.skipped else "no_copy")
                partner = attempt.skipped[-1].partner if attempt.skipped else ""
                headers_catalog.record_failure(conn, ref.id, partner, kind)
                log.warning("header of instance %s could not be read (%s)", ref.id, kind)
                out[ref.id] = kind
        return out

    def fill(self, partner: str, *, batch: int = 200, retry_failed: bool = False, should_stop: Callable[[], bool] = lambda: False) -> FillResult:
        """Read every header of ``partner``'s instances not kept yet (``retry_failed``: and those that failed), a batch at
        a time, ``concurrency`` at once: the background reader after a sync. Each batch is committed as it is read, so
        a reader stopped anywhere resumes where it was; a missing object is a recorded failure, never a crash."""
        result = FillResult(partner)
        after: uuid.UUID | None = None
        while not should_stop():
            with self._engine.connect() as conn:
                refs = headers_catalog.unread(conn, partner, limit=batch, retry_failed=retry_failed, after=after)
            if not refs:
                break
            for found in self._read(refs).values():
                if isinstance(found, str):
                    result.failed[found] = result.failed.get(found, 0) + 1
                else:
                    result.read += 1
            after = refs[-1].id
            log.info("headers of partner %s: %d read, %d failed so far", partner, result.read, sum(result.failed.values()))
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def read_frame(reader: ObjectReader, header: CachedHeader, number: int) -> bytes:
    """Frame ``number`` (1-based) of a kept header: one ranged GET, sent with ``If-Match`` on the kept ETag.

    The frame's fragments (encapsulated data) are read in the one range that
    covers them, their item headers cut out. ``ObjectChangedError`` when the
    object is no longer the one the header was read from.
    """
    ranges = header.frames[number - 1]
    start, end = ranges[0][0], ranges[-1][0] + ranges[-1][1]
    data = reader.read_range(header.location.bucket, header.location.key, start, end, if_match=header.etag)
    if len(ranges) == 1:
        return data
    return b"".join(data[offset - start : offset - start + length] for offset, length in ranges)


__all__ = ["MAX_HEADER_BYTES", "FillResult", "HeaderCache", "HeaderReader", "ReadHeader", "read_frame"]
