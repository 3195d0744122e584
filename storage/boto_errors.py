"""One place that turns boto3/botocore failures, and S3's error codes, into our storage errors.

Used by the botocore calls and by ``storage.fetch`` (our own GETs), so a
missing object, a refusal or an outage reads and counts the same whichever
path met it. Messages name the action, the bucket and the key, plus S3's error code or the
kind of connection failure; they are built from those fields only, never from
``str(exc)`` of a botocore exception, so no signed request, header or
credential can leak into a log line or an API response.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from imaging_sync.errors import ObjectNotFoundError, StorageError

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {
    "AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AccountProblem",
}


def where(bucket: str, key: str | None) -> str:
    return f"s3://{bucket}/{key}" if key is not None else f"bucket {bucket!r}"


def storage_error(exc: Exception, *, action: str, bucket: str, key: str | None = None) -> StorageError:
    """The StorageError (or ObjectNotFoundError) that ``exc`` means for ``action`` on bucket/key."""
    place = where(bucket, key)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "unknown")
        return error_for_code(code, action=action, bucket=bucket, key=key)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(f"{action} {place}: no usable credentials for this bucket ({type(exc).__name__})")
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        # Connect/read timeouts, refused or dropped connections, a stream cut mid-object.
        return StorageError(f"{action} {place}: storage endpoint unreachable or connection lost ({type(exc).__name__})")
    if isinstance(exc, (IncompleteReadError, FlexibleChecksumError)):
        return StorageError(f"{action} {place}: object data arrived short or corrupt ({type(exc).__name__})")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{action} {place}: storage client failed ({type(exc).__name__})")
    return StorageError(f"{action} {place}: unexpected failure ({type(exc).__name__})")


def error_for_code(code: str, *, action: str, bucket: str, key: str | None = None) -> StorageError:
    """The error for S3's answer ``code`` (its ``<Code>``, or the HTTP status when it sent none).

    A refusal (403, ``AccessDenied``, a bad or expired key) is a plain
    ``StorageError`` (kind ``storage``), as every storage failure but a missing
    object: the copy chooser then tries the partner's next copy.
    """
    place = where(bucket, key)
    if code in _NOT_FOUND and key is not None:
        return ObjectNotFoundError(f"{action} {place}: no such object")
    if code in _DENIED:
        return StorageError(f"{action} {place}: access denied by the storage service ({code})")
    if code == "NoSuchBucket":
        return StorageError(f"{action} {place}: the bucket does not exist at its endpoint (NoSuchBucket)")
    return StorageError(f"{action} {place}: the storage service answered {code}")
