"""Whole-object GETs for the DICOM node's C-MOVE/C-GET, without botocore's per-request client pipeline.

Why: botocore's ``get_object`` validates parameters, serialises, runs the
endpoint rules, fires its event hooks and signs on every call, about 1 ms of
CPU per object; it was ~30 % of the node's CPU per moved instance. Measured
(``bench/s3_fetch.py``, ``bench/results/s3_fetch-2026-12-03.txt``: moto in
another process, CPU of the fetching process per GET, median of 7 rounds of
200 objects), 64 KiB / 1 MiB objects: ``get_object`` 1415 / 2108 µs; a URL
presigned by ``storage.presign`` on a urllib3 pool 513 / 1008 µs; our SigV4
header on a urllib3 pool 438 / 886 µs, on botocore's urllib3 transport
511 / 908 µs; this module (that, plus the CRC32 check) 588 / 1210 µs. Here, per GET:

- **signing**: :func:`storage.sigv4.sign_get_headers` with the bucket's
  current (possibly refreshed assumed-role) credentials from the registry,
  the session token as ``x-amz-security-token``. In the header rather than a
  presigned URL: it costs the same, and the request target then holds no
  signature, credential or token that urllib3's debug log line or an
  exception quoting the URL could leak (and the checksum mode can be signed);
- **endpoint**: resolved once per bucket by botocore (``BucketRegistry.endpoint``);
- **transport**: botocore's own urllib3 transport (``URLLib3Session``), one
  per endpoint origin, so one connection pool per endpoint, shared by every
  thread (urllib3's pools are thread-safe), keep-alive, at most
  ``MAX_POOL_CONNECTIONS`` idle connections kept (more concurrent GETs open
  extra connections that are closed after use, as botocore's clients do),
  the registry's connect/read timeouts (``BucketConfig`` has none of its
  own), the CA bundle and ``HTTP(S)_PROXY``/``NO_PROXY`` handling of the
  botocore client. It skips only the client pipeline, not the transport:
  a bare urllib3 pool saved 0.02-0.2 ms more per GET (runs vary) but would redo those;
- **retries**: as the registry's clients (botocore "standard" mode): up to
  ``MAX_ATTEMPTS`` attempts on connection failures, 5xx,
  throttling and request timeouts, with jittered exponential backoff. Only
  before the body: once chunks have gone to the caller, a failure is final.

Ranged reads wanted whole (:meth:`ObjectFetcher.read`: a DICOMweb frame, a
header, a bulk data value) take the same signing, endpoint, retries and error
mapping, but another transport, :mod:`storage.http1`: small answers read into
memory, where urllib3's per-response machinery was half of the fetching CPU
per GET. :meth:`ObjectFetcher.open` (streamed, whole objects and ranges alike)
stays on urllib3.

Integrity while streaming (the caller writes a spool file and discards it on
any error): a body ending before its ``Content-Length`` raises; then, at the
end, the cheapest check the response allows: S3's CRC32 checksum
(``x-amz-checksum-crc32``, asked for with ``x-amz-checksum-mode``, as botocore
does; 290 µs of CPU per MiB), else, if the ETag is a single-part MD5
(32 hex digits, no ``-``), the MD5 of the bytes (1.35 ms per MiB: almost the
whole saving on a 1 MiB object, hence CRC32 first). A multipart ETag
(``…-N``) and the ETag of an SSE-KMS (or SSE-C) object are not an MD5 of the
content, and a composite multipart checksum (``…-N``) or another algorithm
(CRC32C, CRC64NVME, SHA) is not computed here: such objects get the length
check only.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import random
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import urllib3
from botocore.awsrequest import AWSPreparedRequest
from botocore.exceptions import BotoCoreError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.httpsession import URLLib3Session

from imaging_sync.errors import ObjectChangedError, ObjectCorruptError, StorageError, ValidationError
from storage.boto_errors import error_for_code, storage_error, where
from storage.http1 import Http1Pool, TransportError
from storage.presign import check_key
from storage.registry import CONNECT_TIMEOUT_SECONDS, MAX_ATTEMPTS, MAX_POOL_CONNECTIONS, READ_TIMEOUT_SECONDS, BucketRegistry
from storage.sigv4 import sign_get_headers

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# botocore's standard retry mode: these statuses and codes are transient (botocore/retries/standard.py).
RETRY_STATUSES = frozenset({500, 502, 503, 504})
RETRY_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"})
MAX_BACKOFF_SECONDS = 20.0
ERROR_BODY_LIMIT = 64 * 1024  # S3's error documents are a few hundred bytes; read no more than this of one
_CHECKSUM_HEADERS = {"x-amz-checksum-mode": "ENABLED"}  # S3 GetObject: send the stored checksum with the object
_SINGLE_PART_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_ERROR_CODE = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")
_CONTENT_RANGE_TOTAL = re.compile(r"^bytes \d+-\d+/(\d+)$")
_NOT_MD5_ENCRYPTION = frozenset({"aws:kms", "aws:kms:dsse"})  # their ETag is not the MD5 of the content


class Body(Protocol):
    """What :class:`storage.reader.ObjectStream` reads: chunks of at most ``amt`` bytes, ``b""`` at the end."""

    def read(self, amt: int) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class FetchedObject:
    """An open GET: the body to stream and what the response said about the object."""

    body: Body
    size: int  # of the body: the whole object, or the range asked for
    etag: str  # without the surrounding quotes S3 sends
    content_type: str | None
    object_size: int = -1  # of the whole object (from Content-Range for a range); -1: as ``size``

    @property
    def total_size(self) -> int:
        return self.size if self.object_size < 0 else self.object_size


class ObjectFetcher:
    """Opens GETs of whole objects in registered buckets; thread-safe, one per process (the reader holds it)."""

    def __init__(
        self,
        registry: BucketRegistry,
        *,
        attempts: int = MAX_ATTEMPTS,
        backoff_seconds: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._registry = registry
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._transports: dict[tuple[str, str | None], URLLib3Session] = {}
        self._small: dict[tuple[str, str | None], Http1Pool] = {}

    def open(self, bucket: str, key: str, *, byte_range: tuple[int, int] | None = None, if_match: str | None = None) -> FetchedObject:
        """Send the GET and return once the headers are in: a missing object raises ``ObjectNotFoundError`` here.

        The bucket is checked against the registry before anything else
        (``BucketNotAllowedError``); any other failure is a ``StorageError``
        naming bucket and key, never the request's headers.

        ``byte_range`` ``(start, end)``: bytes ``start`` to ``end`` exclusive, as
        ``data[start:end]`` (a DICOM header, one frame); its body is checked for
        length only (S3's checksums are of the whole object). A range starting
        past the end is a ValidationError. ``if_match``: the ETag the object must
        still have, else ``ObjectChangedError`` (offsets learnt from it are stale).
        """
        extra = self._conditions(byte_range, if_match)
        if byte_range is None:
            extra.update(_CHECKSUM_HEADERS)
        origin, ca_bundle = self._origin(bucket, key)
        transport = self._transport(origin, ca_bundle)
        for attempt in range(1, self._attempts + 1):
            path, headers = self._signed(bucket, key, extra)
            try:
                response = transport.send(AWSPreparedRequest("GET", origin + path, headers, None, True)).raw
            except (BotoConnectionError, HTTPClientError) as exc:
                if attempt < self._attempts:
                    self._wait(attempt, bucket, type(exc).__name__)
                    continue
                raise storage_error(exc, action="open", bucket=bucket, key=key) from exc
            except BotoCoreError as exc:
                raise storage_error(exc, action="open", bucket=bucket, key=key) from exc
            if response.status == 200 or (response.status == 206 and byte_range is not None):
                return _opened(response, bucket, key, ranged=response.status == 206)
            self._not_the_object(response.status, _error_code(response), bucket, key, byte_range, attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def read(self, bucket: str, key: str, byte_range: tuple[int, int], *, if_match: str | None = None) -> bytes:
        """Bytes ``start`` to ``end`` exclusive of the object, in memory, as :meth:`open` with a range read whole, but
        on the small-answer transport (:mod:`storage.http1`): a viewer's frame is one of these per request."""
        extra = self._conditions(byte_range, if_match)
        origin, ca_bundle = self._origin(bucket, key)
        pool = self._small_transport(origin, ca_bundle)
        wanted = byte_range[1] - byte_range[0]
        for attempt in range(1, self._attempts + 1):
            path, headers = self._signed(bucket, key, extra)
            try:
                answer = pool.get(path, headers, max_body=wanted + ERROR_BODY_LIMIT)
            except TransportError as exc:
                if attempt < self._attempts:
                    self._wait(attempt, bucket, exc.reason)
                    continue
                raise StorageError(f"open {where(bucket, key)}: storage endpoint unreachable or connection lost ({exc.reason})") from exc
            if answer.status == 206:
                if not _CONTENT_RANGE_TOTAL.search(answer.headers.get("content-range", "")) or len(answer.body) > wanted:
                    raise StorageError(f"open {where(bucket, key)}: a range answered without a usable Content-Range")
                return answer.body
            if answer.status == 200:  # a server that ignores Range sends the whole object (if it fit in max_body)
                return answer.body[byte_range[0] : byte_range[1]]
            found = _ERROR_CODE.search(answer.body)
            self._not_the_object(answer.status, found.group(1).decode() if found else str(answer.status), bucket, key, byte_range, attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _conditions(byte_range: tuple[int, int] | None, if_match: str | None) -> dict[str, str]:
        extra: dict[str, str] = {}
        if byte_range is not None:
            if not 0 <= byte_range[0] < byte_range[1]:
                raise ValidationError("range", f"needs 0 <= start < end, got {byte_range}")
            extra["range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
        if if_match is not None:
            extra["if-match"] = f'"{if_match}"'
        return extra

    def _origin(self, bucket: str, key: str) -> tuple[str, str | None]:
        """The bucket checked against the registry and the key against our rules; its endpoint's origin and CA bundle."""
        self._registry.bucket_config(bucket)
        check_key(key)
        parts = urlsplit(self._registry.endpoint(bucket).base_url)
        return f"{parts.scheme}://{parts.netloc}", self._registry.ca_bundle(bucket)

    def _signed(self, bucket: str, key: str, extra: dict[str, str]) -> tuple[str, dict[str, str]]:
        credentials = self._registry.credentials(bucket)  # per attempt: a refresh between attempts is used
        return sign_get_headers(self._registry.signing_scope(bucket, credentials), signed_at=self._clock(), key=key, headers=extra)

    def _not_the_object(self, status: int, code: str, bucket: str, key: str, byte_range: tuple[int, int] | None, attempt: int) -> None:
        """An answer that is not the object: return to try again (after the backoff), else raise what it means."""
        if status == 412 or code == "PreconditionFailed":
            raise ObjectChangedError(f"open {where(bucket, key)}: the object has changed since it was read (ETag)")
        if status == 416 or code == "InvalidRange":
            raise ValidationError("range", f"start={byte_range[0] if byte_range else 0} is past the end of {where(bucket, key)}")
        if (status in RETRY_STATUSES or code in RETRY_CODES) and attempt < self._attempts:
            self._wait(attempt, bucket, code)
            return
        raise error_for_code(code, action="open", bucket=bucket, key=key)

    def _small_transport(self, origin: str, ca_bundle: str | None) -> Http1Pool:
        """The endpoint's pool of small-answer connections (storage.http1), built on first use."""
        return self._built(self._small, (origin, ca_bundle), lambda: Http1Pool(
            origin, ca_bundle=_verify(ca_bundle), connect_timeout=CONNECT_TIMEOUT_SECONDS, read_timeout=READ_TIMEOUT_SECONDS,
            max_idle=MAX_POOL_CONNECTIONS,
        ))

    def _transport(self, origin: str, ca_bundle: str | None) -> URLLib3Session:
        """The endpoint's transport (its connection pool), built on first use."""
        return self._built(self._transports, (origin, ca_bundle), lambda: URLLib3Session(
            verify=_verify(ca_bundle),
            timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
            max_pool_connections=MAX_POOL_CONNECTIONS,
            # botocore's clients' socket options (URLLib3Session alone would pass none, dropping urllib3's TCP_NODELAY).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        ))

    def _built(self, cache: dict[tuple[str, str | None], _T], key: tuple[str, str | None], build: Callable[[], _T]) -> _T:
        """``cache[key]``, built by ``build`` the first time any thread asks (once: under the lock, looked up again)."""
        found = cache.get(key)
        if found is not None:
            return found
        with self._lock:
            found = cache.get(key)
            if found is None:
                found = cache[key] = build()
        return found

    def _wait(self, attempt: int, bucket: str, reason: str) -> None:
        # botocore standard mode: a random share of base * 2^(attempt-1), at most 20 s. Bucket only: keys may carry patient data.
        log.info("GET from bucket %s failed (%s), attempt %d of %d; retrying", bucket, reason, attempt, self._attempts)
        time.sleep(random.random() * min(self._backoff * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS))


def _verify(ca_bundle: str | None) -> str | bool:
    """What a transport verifies TLS with, as botocore's create_client and EndpointCreator decide: the bucket's
    configured bundle, else REQUESTS_CA_BUNDLE, else True (botocore's own bundle)."""
    return ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or True


def _opened(response: Any, bucket: str, key: str, *, ranged: bool = False) -> FetchedObject:
    headers = response.headers
    length = headers.get("Content-Length")
    if length is None or not length.isdigit():
        _drop(response)
        raise StorageError(f"open {where(bucket, key)}: the storage service answered without a usable Content-Length")
    etag = str(headers.get("ETag", "")).strip('"')
    size = int(length)
    object_size = -1
    if ranged:
        total = _CONTENT_RANGE_TOTAL.search(headers.get("Content-Range", ""))
        if total is None:
            _drop(response)
            raise StorageError(f"open {where(bucket, key)}: a range answered without a usable Content-Range")
        object_size = int(total.group(1))
    check = None if ranged else _check_for(headers, etag)
    return FetchedObject(_CheckedBody(response, size, check, bucket, key), size, etag, headers.get("Content-Type"), object_size)


class _Check:
    """A digest over the streamed bytes and what it must come to."""

    def __init__(self, name: str, update: Callable[[bytes], None], result: Callable[[], str], expected: str) -> None:
        self.name, self.update, self.result, self.expected = name, update, result, expected


def _check_for(headers: Any, etag: str) -> _Check | None:
    """S3's CRC32 if it sent a full-object one, else a single-part MD5 ETag of an object not SSE-KMS/SSE-C encrypted, else none."""
    crc = headers.get("x-amz-checksum-crc32")
    if crc and "-" not in crc:  # "…-N": a composite (checksum of part checksums), not of the content
        state = [0]

        def crc_update(data: bytes) -> None:
            state[0] = zlib.crc32(data, state[0])

        return _Check("CRC32 checksum", crc_update, lambda: base64.b64encode(state[0].to_bytes(4, "big")).decode(), crc)
    encrypted = headers.get("x-amz-server-side-encryption", "") in _NOT_MD5_ENCRYPTION or headers.get("x-amz-server-side-encryption-customer-algorithm")
    if _SINGLE_PART_MD5.fullmatch(etag) and not encrypted:
        md5 = hashlib.md5(usedforsecurity=False)
        return _Check("ETag", md5.update, md5.hexdigest, etag.lower())
    return None


class _CheckedBody:
    """The response body, checked for length and content as it is read; the connection goes back to the pool at the end."""

    def __init__(self, response: Any, size: int, check: _Check | None, bucket: str, key: str) -> None:
        self._response = response
        self._size = size
        self._check = check
        self._bucket, self._key = bucket, key
        self._seen = 0
        self._done = False

    def read(self, amt: int) -> bytes:
        if self._done:
            return b""
        try:
            data: bytes = self._response.read(amt, decode_content=False)  # the stored bytes, as botocore returns them
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            self.close()
            raise StorageError(f"read {where(self._bucket, self._key)}: storage endpoint unreachable or connection lost ({type(exc).__name__})") from exc
        if data:
            self._seen += len(data)  # never past Content-Length: http.client reads no further
            if self._check is not None:
                self._check.update(data)
            return data
        if self._seen < self._size:
            self.close()
            raise StorageError(f"read {where(self._bucket, self._key)}: object data arrived short ({self._seen} of {self._size} bytes)")
        if self._check is not None and self._check.result() != self._check.expected:
            self.close()
            raise ObjectCorruptError(f"read {where(self._bucket, self._key)}: content does not match its {self._check.name}")
        self._done = True
        self._response.release_conn()  # read to the end: the connection is reusable
        return b""

    def close(self) -> None:
        """Left before the end (or failed): the connection is closed, never reused with unread data on it."""
        if not self._done:
            self._done = True
            _drop(self._response)


def _drop(response: Any) -> None:
    response.close()  # closes the socket
    response.release_conn()  # and frees its place in the pool (a closed connection reconnects when next taken)


def _error_code(response: Any) -> str:
    """S3's ``<Code>`` from the error document, else the HTTP status; the response is dropped."""
    try:
        body = response.read(ERROR_BODY_LIMIT, decode_content=False) or b""
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError):
        body = b""
    finally:
        _drop(response)
    found = _ERROR_CODE.search(body)
    return found.group(1).decode() if found else str(response.status)
