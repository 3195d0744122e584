"""Presigned GET URLs for registered buckets: one at a time, or a whole series at once.

A presigned URL lets a viewer download an instance straight from the
partner's bucket, with no credentials of its own, until the URL expires.
Only registry buckets are signed (anything else: ``BucketNotAllowedError``).

Lifetime policy: ``expires_in`` defaults to ``storage.presign_default_seconds``;
asking for more than ``storage.presign_max_seconds`` (or less than 1 s) raises
``ValidationError`` naming the limit — we refuse rather than clamp, so a
caller never gets a URL that dies sooner than it asked for without knowing
(the API maps it to 400). A URL signed with temporary credentials also stops
working when their session ends. For an assumed role the registry knows when
that is, and such a URL is signed, and its ``expires_at`` reported, to end
then (botocore refreshes the role 15 minutes before its end, so at least that
much is left): shorter than asked, but never shorter than it says. Keys with a
session token from the environment, and the default chain's instance or
container roles, have no end the registry knows; keep ``presign_max_seconds``
at or below 15 minutes with those.

Signing is our own SigV4 (``storage.sigv4``), ~25x faster than botocore's
``generate_presigned_url`` and proven equal to it by the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from imaging_sync.errors import StorageError, ValidationError
from storage.disposition import attachment
from storage.registry import BucketRegistry
from storage.sigv4 import GetUrlSigner

DICOM_CONTENT_TYPE = "application/dicom"
MAX_KEY_BYTES = 1024  # S3's limit on object key length (UTF-8 bytes)

# An object to sign: (bucket, key, download filename or None). Not a copy's location
# (imaging_sync.copies.Location, partner included): which copy to sign is decided there.
ObjectToSign = tuple[str, str, str | None]


@dataclass(frozen=True, slots=True)
class PresignedUrl:
    # Not in repr: until it expires the URL is a bearer credential, and reprs end up in logs.
    url: str = field(repr=False)
    expires_at: datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


class Presigner:
    """Signs GET URLs with each bucket's own (possibly refreshed) credentials, region and endpoint."""

    def __init__(self, registry: BucketRegistry, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._registry = registry
        self._clock = clock
        storage = registry.storage_config
        self._default_seconds = storage.presign_default_seconds
        self._max_seconds = storage.presign_max_seconds

    def lifetime(self, expires_in: int | None) -> int:
        """The lifetime in seconds a request gets: the default, or the one asked for if allowed."""
        if expires_in is None:
            return self._default_seconds
        if isinstance(expires_in, bool) or not isinstance(expires_in, int):
            raise ValidationError("expires_in", "must be a whole number of seconds")
        if expires_in < 1:
            raise ValidationError("expires_in", f"must be at least 1 second, got {expires_in}")
        if expires_in > self._max_seconds:
            raise ValidationError(
                "expires_in", f"must be at most {self._max_seconds} seconds (storage.presign_max_seconds), got {expires_in}"
            )
        return expires_in

    def presign_get(
        self,
        bucket: str,
        key: str,
        *,
        expires_in: int | None = None,
        content_type: str | None = DICOM_CONTENT_TYPE,
        filename: str | None = None,
    ) -> PresignedUrl:
        """One presigned GET URL; ``content_type``/``filename`` become the response's headers.

        S3 answers a presigned GET with the object's stored Content-Type; the
        signed ``response-content-type`` override makes a viewer see
        ``application/dicom`` whatever the partner stored, and
        ``response-content-disposition`` names the download.
        """
        return self.presign_many([(bucket, key, filename)], expires_in=expires_in, content_type=content_type)[0]

    def presign_many(
        self,
        locations: Sequence[ObjectToSign],
        *,
        expires_in: int | None = None,
        content_type: str | None = DICOM_CONTENT_TYPE,
    ) -> list[PresignedUrl]:
        """Presigned GET URLs for many objects (a whole series), in the order given.

        All or nothing: every bucket is checked against the registry and every
        key validated before anything is signed. One signing instant, and per
        bucket one credentials read, one endpoint and one derived signing key,
        for the whole batch.
        """
        seconds = self.lifetime(expires_in)
        type_params = _content_type_params(content_type)
        for bucket, key, _ in locations:
            self._registry.bucket_config(bucket)
            check_key(key)
        signed_at = self._clock().astimezone(UTC).replace(microsecond=0)
        signers: dict[str, tuple[GetUrlSigner, datetime]] = {}
        urls: list[PresignedUrl] = []
        for bucket, key, filename in locations:
            found = signers.get(bucket)
            if found is None:
                found = signers[bucket] = self._signer(bucket, signed_at, seconds)
            signer, expires_at = found
            params = type_params if filename is None else [("response-content-disposition", attachment(filename)), *type_params]
            urls.append(PresignedUrl(url=signer.sign(key, params), expires_at=expires_at))
        return urls

    def _signer(self, bucket: str, signed_at: datetime, seconds: int) -> tuple[GetUrlSigner, datetime]:
        """The bucket's signer and when its URLs end: at ``seconds``, or when the credentials do if sooner."""
        credentials = self._registry.credentials(bucket)  # first: "no credentials" is the clearer error
        ends = self._registry.expiry(credentials)
        if ends is not None:
            seconds = min(seconds, int((ends - signed_at).total_seconds()))
            if seconds < 1:
                raise StorageError(f"sign for bucket {bucket!r}: its temporary credentials have expired")
        signer = GetUrlSigner(self._registry.signing_scope(bucket, credentials), signed_at=signed_at, expires_in=seconds)
        return signer, signed_at + timedelta(seconds=seconds)


def _content_type_params(content_type: str | None) -> list[tuple[str, str]]:
    if content_type is None:
        return []
    if not content_type or any(not (0x20 <= ord(ch) < 0x7F) for ch in content_type) or "/" not in content_type:
        raise ValidationError("content_type", "must be a printable ASCII media type such as application/dicom")
    return [("response-content-type", content_type)]


def check_key(key: str) -> None:
    """An S3 object key we may sign or read: a non-empty string, valid Unicode, at most 1024 bytes in UTF-8 (else ValidationError)."""
    if not isinstance(key, str) or not key:
        raise ValidationError("key", "must be a non-empty string")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError("key", "must be valid Unicode (no lone surrogates)") from None
    if size > MAX_KEY_BYTES:
        raise ValidationError("key", f"must be at most {MAX_KEY_BYTES} bytes in UTF-8")
