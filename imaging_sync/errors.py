"""The service's own exception hierarchy.

Each edge (CLI exit code, HTTP status, DIMSE status) maps these once; the core
raises nothing else on purpose. ``kind`` is a stable, countable failure class
for logs, run records and alerts, and each kind is raised as exactly one type
(a subclass refines the handling, never reuses its parent's kind):

================  =======================  ==================================================
kind              type                     failure
================  =======================  ==================================================
internal          ImagingSyncError         a bug (no deliberate raise uses the base itself)
config            ConfigError              the configuration is unusable
validation        ValidationError          input breaks its contract (partner item, request, storage call)
mapping           MappingError             a coded value the partner's vocabulary lacks
protocol          PartnerError             the partner answered outside its contract
network           PartnerUnavailableError  the partner unreachable or failing, retries spent
auth              PartnerAuthError         the partner refused our key
rate_limit        PartnerRateLimitedError  the partner kept answering 429
page_expired      PageTokenExpiredError    a page token the partner no longer honours (410)
queue             QueueUnavailableError    the job queue did not take a task
locked            SyncLockedError          the partner is being synced by another process
not_found         NotFoundError            a named thing (partner, run, entity, study) does not exist
database          DatabaseError            the database is unreachable or its schema not current
audit             AuditUnavailableError    the audit log could not record an access
storage           StorageError             object storage failed or refused
bucket_refused    BucketNotAllowedError    a bucket outside the registry (never signed, never read)
object_missing    ObjectNotFoundError      a registered location whose object is gone
object_corrupt    ObjectCorruptError       an object whose bytes fail its checksum (CRC32, single-part ETag)
object_changed    ObjectChangedError       an object replaced since it was read (its ETag differs: If-Match)
denied            AccessDeniedError        a known caller whose role may not do this
unauthenticated   AuthenticationError      no credentials, or unusable ones (``reason`` says which)
================  =======================  ==================================================

An edge adds kinds only for what no other edge can meet: the DICOM node's
Query/Retrieve refusals (``dicom/errors.py``, its own table: a malformed
identifier, an unknown move destination, a request over a limit). A refusal
that means the same on every edge uses the core's type: a DICOM peer asking
an operation it was not granted is ``AccessDeniedError`` (``denied``), as a
REST caller whose role may not is.
"""

from __future__ import annotations


class ImagingSyncError(Exception):
    """Base of every error the service raises deliberately."""

    kind = "internal"


class ConfigError(ImagingSyncError):
    """The configuration is unusable; the message names the key and the reason."""

    kind = "config"

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        self.problems: tuple[ConfigError, ...] = (self,)
        super().__init__(f"config error at {key}: {reason}")

    @classmethod
    def of(cls, problems: list[ConfigError]) -> ConfigError:
        """One error for several problems (each missing secret, say), so one start-up shows them all."""
        if len(problems) == 1:
            return problems[0]
        error = cls(", ".join(p.key for p in problems), "; ".join(f"{p.key}: {p.reason}" for p in problems))
        error.problems = tuple(problems)
        error.args = (f"{len(problems)} config errors:\n" + "\n".join(f"  at {p.key}: {p.reason}" for p in problems),)
        return error


class ValidationError(ImagingSyncError):
    """Input breaks its contract; ``path`` names the field, ``reason`` says why.

    The same kind wherever the input comes from: a partner's item (``path``
    points into the item, which is rejected alone), a request's parameter (a
    400 naming it), a storage call asking for what it may not have (a presigned
    URL living longer than ``storage.presign_max_seconds``, an empty key, an
    inverted range: the caller's mistake, a 400, not a storage failure).
    """

    kind = "validation"

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)

    def within(self, prefix: str) -> ValidationError:
        """The same error seen from an enclosing object (``prefix.path``)."""
        return type(self)(f"{prefix}.{self.path}" if self.path else prefix, self.reason)


class MappingError(ValidationError):
    """A coded value has no entry in the partner's vocabulary table."""

    kind = "mapping"


class PartnerError(ImagingSyncError):
    """The partner API failed in a way that ends this run."""

    kind = "protocol"

    def __init__(self, partner: str, message: str) -> None:
        self.partner = partner
        super().__init__(f"partner {partner!r}: {message}")


class PartnerUnavailableError(PartnerError):
    """5xx, connection errors or timeouts that outlasted the retry budget."""

    kind = "network"


class PartnerAuthError(PartnerError):
    """401/403: the key is wrong or revoked; retrying cannot help."""

    kind = "auth"


class PartnerRateLimitedError(PartnerError):
    """429s that outlasted the retry budget (or asked for too long a wait)."""

    kind = "rate_limit"


class PageTokenExpiredError(PartnerError):
    """410 Gone on a page token: the listing restarts from what the run committed (it ends no run by itself)."""

    kind = "page_expired"


class QueueUnavailableError(ImagingSyncError):
    """The job queue (the Celery broker) did not take a task."""

    kind = "queue"


class SyncLockedError(ImagingSyncError):
    """Another process holds this partner's sync lock."""

    kind = "locked"

    def __init__(self, partner: str) -> None:
        self.partner = partner
        super().__init__(f"partner {partner!r} is already being synced by another process")


class NotFoundError(ImagingSyncError):
    """A named thing (partner, run, entity) does not exist."""

    kind = "not_found"


class DatabaseError(ImagingSyncError):
    """The database is unreachable or its schema is not current."""

    kind = "database"


class AuditUnavailableError(ImagingSyncError):
    """The audit log could not record an access, so the access must not happen (or go on).

    The message names only the database error's class and SQLSTATE: the
    driver's own text and context can quote the values being written, which
    are patient names and IDs. Raised ``from None`` for the same reason.
    """

    kind = "audit"


class StorageError(ImagingSyncError):
    """Object storage failed or refused (access denied, endpoint down)."""

    kind = "storage"


class BucketNotAllowedError(StorageError):
    """A bucket outside the configured registry: never signed, never read.

    Our own refusal (a partner's location naming a bucket we do not serve),
    not a storage failure: counted apart from ``storage``.
    """

    kind = "bucket_refused"

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        super().__init__(f"bucket {bucket!r} is not in the storage registry ([storage.buckets])")


class ObjectNotFoundError(StorageError):
    """The location is registered but the object is not there (any more).

    The partner's index and its bucket disagree: a different failure from a
    caller naming something that does not exist (``not_found``), and one an
    operator takes up with the partner.
    """

    kind = "object_missing"


class ObjectCorruptError(StorageError):
    """An object's bytes are not what its checksum says (S3's CRC32, or the MD5 of a single-part ETag).

    It changed or was damaged in the partner's bucket: that copy is passed
    over like a missing one, and the operator takes it up with the partner.
    A body cut short in transit is a plain ``storage`` failure, not this.
    """

    kind = "object_corrupt"


class ObjectChangedError(StorageError):
    """The object is no longer the one read before (its ETag differs): what was learnt from it (a cached header,
    a frame's offsets) no longer holds and must be read again."""

    kind = "object_changed"


class AccessDeniedError(ImagingSyncError):
    """The caller is known but its role may not do this."""

    kind = "denied"


class AuthenticationError(ImagingSyncError):
    """No credentials, or unknown, expired or revoked ones.

    ``reason`` (``missing``, ``invalid``, ``expired``, ``revoked``) is for the
    audit log only. The message, all a client is ever told, says no more than
    "no key" or "not a usable key": telling a revoked key from an expired or an
    unknown one would tell whoever holds a stolen key which it is.
    """

    kind = "unauthenticated"
    REASONS = ("missing", "invalid", "expired", "revoked")

    def __init__(self, reason: str = "invalid") -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown authentication failure reason {reason!r}")
        self.reason = reason
        super().__init__("missing API key: send Authorization: Bearer <key> or X-API-Key: <key>" if reason == "missing" else "invalid API key")

    @property
    def presented(self) -> bool:
        """A key was presented (RFC 6750 §3: the challenge then says ``error="invalid_token"``)."""
        return self.reason != "missing"
