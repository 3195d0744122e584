"""Reading objects from registered buckets: metadata, whole objects as a stream of chunks, byte ranges.

The DICOM C-MOVE path sends instances of hundreds of megabytes to a peer; it
must start sending before the object has arrived and never hold it whole in
memory, hence :meth:`ObjectReader.open_object` yields bounded chunks from the
open HTTP response. Failures become ``ObjectNotFoundError`` (the location is
registered but the object is gone) or ``StorageError`` naming bucket and key.

Whole objects and byte ranges come through ``storage.fetch`` (our SigV4
header on botocore's pooled urllib3 transport, under half of ``get_object``'s
CPU per object; whole objects checked against S3's CRC32 or the ETag's MD5,
ranges for their length); HEAD, rare, stays on the botocore client.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from imaging_sync.errors import StorageError, ValidationError
from storage.boto_errors import storage_error, where
from storage.fetch import Body, ObjectFetcher
from storage.registry import BucketRegistry

DEFAULT_CHUNK_SIZE = 1 << 20  # 1 MiB: large enough for throughput, small enough to bound memory per stream
MAX_CHUNK_SIZE = 16 << 20


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    etag: str  # without the surrounding quotes S3 sends
    content_type: str | None


class ObjectStream:
    """An open object: iterate for chunks of at most ``chunk_size`` bytes.

    Use it in a ``with`` block (or iterate it to the end) so the HTTP
    connection goes back to the pool; leaving early closes the response.
    """

    def __init__(self, body: Body, info: ObjectInfo, *, chunk_size: int, bucket: str, key: str) -> None:
        self.info = info
        self._body = body
        self._chunk_size = chunk_size
        self._bucket = bucket
        self._key = key
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        if self._closed:
            raise StorageError(f"read {where(self._bucket, self._key)}: the stream is already closed")
        try:
            while chunk := self._body.read(self._chunk_size):
                yield chunk
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, action="read", bucket=self._bucket, key=self._key) from exc
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._body.close()

    def __enter__(self) -> ObjectStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ObjectReader:
    """Reads through the registry's shared clients and the fetcher's pools; only registered buckets.

    ``fetcher``: the whole-object GETs (default: an :class:`~storage.fetch.ObjectFetcher`
    over ``registry``, with the registry's retry policy).
    """

    def __init__(self, registry: BucketRegistry, *, chunk_size: int = DEFAULT_CHUNK_SIZE, fetcher: ObjectFetcher | None = None) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE} bytes")
        self._registry = registry
        self._chunk_size = chunk_size
        self._fetcher = fetcher if fetcher is not None else ObjectFetcher(registry)

    @property
    def registry(self) -> BucketRegistry:
        return self._registry

    def head(self, bucket: str, key: str) -> ObjectInfo:
        """Size, ETag and Content-Type without reading the data (S3 HeadObject)."""
        client = self._registry.client(bucket)
        try:
            response = client.head_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, action="head", bucket=bucket, key=key) from exc
        return _info(response)

    def open_object(self, bucket: str, key: str) -> ObjectStream:
        """Start a GET of the whole object and return its body as a stream of chunks.

        The request is made here, so a missing object raises
        ``ObjectNotFoundError`` now rather than at the first chunk. A body cut
        short, or whose bytes do not match S3's checksum or the ETag's MD5,
        raises ``StorageError`` from the iteration (at its end for a mismatch):
        whatever was written from it must be thrown away.
        """
        fetched = self._fetcher.open(bucket, key)
        info = ObjectInfo(size=fetched.size, etag=fetched.etag, content_type=fetched.content_type)
        return ObjectStream(fetched.body, info, chunk_size=self._chunk_size, bucket=bucket, key=key)

    def open_range(self, bucket: str, key: str, start: int, end: int, *, if_match: str | None = None) -> ObjectStream:
        """Start a GET of bytes ``start`` (inclusive) to ``end`` (exclusive) and return them as a stream of chunks.

        Like ``data[start:end]``: a range running past the end returns what
        exists; one starting past the end raises ``ValidationError``. The
        stream's ``info`` describes the whole object (its size from
        ``Content-Range``, its ETag). ``if_match``: the ETag the object must
        still have, else ``ObjectChangedError`` (what was read of it before is
        stale). Through the same cheap path as whole objects (one frame of a
        DICOMweb viewer is one of these).
        """
        _check_range(start, end)
        fetched = self._fetcher.open(bucket, key, byte_range=(start, end), if_match=if_match)
        info = ObjectInfo(size=fetched.total_size, etag=fetched.etag, content_type=fetched.content_type)
        return ObjectStream(fetched.body, info, chunk_size=self._chunk_size, bucket=bucket, key=key)

    def read_range(self, bucket: str, key: str, start: int, end: int, *, if_match: str | None = None) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) at once (a header, a frame): as :meth:`open_range` read whole, on
        the fetcher's transport for small answers (``ObjectFetcher.read``)."""
        _check_range(start, end)
        return self._fetcher.read(bucket, key, (start, end), if_match=if_match)


def _check_range(start: int, end: int) -> None:
    if isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, int) or not isinstance(end, int):
        raise ValidationError("range", "start and end must be integers")
    if start < 0 or end <= start:
        raise ValidationError("range", f"needs 0 <= start < end, got start={start}, end={end}")


def _info(response: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(
        size=int(response["ContentLength"]),
        etag=str(response.get("ETag", "")).strip('"'),
        content_type=response.get("ContentType"),
    )
