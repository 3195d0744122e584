"""AWS Signature Version 4 for S3 GET: query-string presigning, and the Authorization header of our own GETs.

Why our own: botocore's ``generate_presigned_url`` runs its whole request
pipeline (parameter validation, serialisation, endpoint rules, event hooks) for
every URL, about 0.4 ms each; a series of 500 instances would take 200 ms. The
signature itself is a few string joins, one SHA-256 and one HMAC. This module
does exactly that, for two request shapes, both a GET with ``UNSIGNED-PAYLOAD``:
a presigned URL (only ``host`` signed, :class:`GetUrlSigner`) and a request
signed in its ``Authorization`` header (:func:`sign_get_headers`, used by
``storage.fetch`` for the DICOM node's object reads). It stays small enough to
check line by line against the AWS documents it cites:

- Amazon S3 API Reference, "Authenticating Requests: Using Query Parameters
  (AWS Signature Version 4)" (sigv4-query-string-auth) — the parameter set,
  ``UNSIGNED-PAYLOAD``, the 7-day limit;
- Amazon S3 API Reference, "Authenticating Requests: Using the Authorization
  Header (AWS Signature Version 4)" (sigv4-auth-using-authorization-header) —
  the header form, ``x-amz-content-sha256`` required on every request;
- AWS General Reference / IAM User Guide, "Create a signed AWS API request"
  (create-signed-request) — canonical request, string to sign, signing key.

Endpoint resolution (which host, path or virtual-host addressing) is not done
here: the registry resolves it once per bucket with botocore and hands us the
result, so the URLs we produce are the ones botocore would.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# sigv4-query-string-auth: "X-Amz-Expires ... minimum value you can set is 1, and the maximum is 604800 (seven days)".
MAX_EXPIRES_SECONDS = 7 * 24 * 3600
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"


def uri_encode_path(key: str) -> str:
    """UriEncode(key, encode_slash=False): every byte but A-Z a-z 0-9 - . _ ~ and '/' as %XX.

    create-signed-request, "CanonicalURI": S3 object keys are encoded once
    (not twice as for other services) and '/' stays, so a nested key keeps its
    path shape. ``quote`` works on the UTF-8 bytes and uses upper-case hex, as
    the document requires. Keys made only of those characters (the usual
    ``studies/<uuid>.dcm``) are returned as they are: ``quote`` would not change
    them and was a sixth of a batch's signing time.
    """
    if _NOTHING_TO_ENCODE.fullmatch(key):
        return key
    return quote(key, safe="/~")


_NOTHING_TO_ENCODE = re.compile(r"[A-Za-z0-9\-._~/]*")


def uri_encode(value: str) -> str:
    """UriEncode(value, encode_slash=True), for query-string names and values."""
    return quote(value, safe="-_.~")


@lru_cache(maxsize=256)
def signing_key(secret_key: str, datestamp: str, region: str, service: str) -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").

    create-signed-request, "Calculate the signature": the key depends only on
    the secret, the day, the region and the service, so it is derived once
    and reused for every URL of that day (cached; thread-safe).
    """
    k = hmac.digest(f"AWS4{secret_key}".encode(), datestamp.encode(), "sha256")
    k = hmac.digest(k, region.encode(), "sha256")
    k = hmac.digest(k, service.encode(), "sha256")
    return hmac.digest(k, b"aws4_request", "sha256")


@dataclass(frozen=True, slots=True)
class SigningScope:
    """Who signs for which endpoint: what both signers below need besides the instant and the object.

    ``base_url`` is scheme, host and any path prefix up to (not including)
    the ``/`` before the key: ``https://bucket.s3.amazonaws.com`` (virtual
    host) or ``http://127.0.0.1:9000/bucket`` (path style). ``host`` is the
    value of the Host header the client will send (port included unless it
    is the scheme's default). Built by ``BucketRegistry.signing_scope``.
    """

    base_url: str
    host: str
    region: str
    service: str
    access_key: str
    secret_key: str
    session_token: str | None


class GetUrlSigner:
    """Signs GET URLs for one endpoint, one set of credentials, one instant and one lifetime.

    Everything that is the same for a whole batch (credential scope, signing
    key, the encoded ``X-Amz-*`` parameters) is computed here once;
    :meth:`sign` then costs one SHA-256 and one HMAC per URL.
    """

    __slots__ = (
        "_origin", "_prefix", "_canonical_tail", "_auth_pairs", "_auth_query", "_canonical_auth_query", "_key", "_sts_prefix"
    )

    def __init__(self, scope: SigningScope, *, signed_at: datetime, expires_in: int) -> None:
        if not 1 <= expires_in <= MAX_EXPIRES_SECONDS:
            raise ValueError(f"expires_in must be between 1 and {MAX_EXPIRES_SECONDS} seconds, got {expires_in}")
        if signed_at.tzinfo is None:
            raise ValueError("signed_at must be timezone-aware")
        amz_date = signed_at.astimezone(UTC).strftime(AMZ_DATE_FORMAT)
        datestamp = amz_date[:8]
        credential_scope = f"{datestamp}/{scope.region}/{scope.service}/aws4_request"
        # sigv4-query-string-auth, in the order botocore writes them (the order
        # in the URL does not matter to S3; the canonical query is sorted).
        auth = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{scope.access_key}/{credential_scope}"),
            ("X-Amz-Date", amz_date),
            ("X-Amz-Expires", str(expires_in)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if scope.session_token:
            # Temporary (STS) credentials: the token travels in the URL and is signed.
            auth.append(("X-Amz-Security-Token", scope.session_token))
        self._auth_pairs = [(uri_encode(k), uri_encode(v)) for k, v in auth]
        self._auth_query = "&".join(f"{k}={v}" for k, v in self._auth_pairs)
        self._canonical_auth_query = "&".join(f"{k}={v}" for k, v in sorted(self._auth_pairs))
        parts = urlsplit(scope.base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        # The canonical URI is the whole path: a path-style bucket ("/bucket") is part of it.
        self._prefix = parts.path.rstrip("/")
        # CanonicalHeaders ("host:…\n"), blank line, SignedHeaders, HashedPayload.
        self._canonical_tail = f"host:{scope.host}\n\nhost\n{UNSIGNED_PAYLOAD}"
        self._sts_prefix = f"{ALGORITHM}\n{amz_date}\n{credential_scope}\n"
        self._key = signing_key(scope.secret_key, datestamp, scope.region, scope.service)

    def sign(self, key: str, params: Sequence[tuple[str, str]] = ()) -> str:
        """The presigned URL of object ``key``, with extra (unencoded) query ``params``.

        ``params`` are S3's ``response-*`` overrides; they are signed like the
        ``X-Amz-*`` ones, so nobody can change them without breaking the URL.
        """
        path = f"{self._prefix}/{uri_encode_path(key)}"
        if params:
            op_pairs = [_encoded_pair(k, v) for k, v in params]
            canonical_query = "&".join(f"{k}={v}" for k, v in sorted(op_pairs + self._auth_pairs))
            query = "&".join(f"{k}={v}" for k, v in op_pairs) + "&" + self._auth_query
        else:
            canonical_query = self._canonical_auth_query
            query = self._auth_query
        # create-signed-request: HTTPMethod \n CanonicalURI \n CanonicalQueryString \n
        # CanonicalHeaders \n SignedHeaders \n HashedPayload
        canonical_request = f"GET\n{path}\n{canonical_query}\n{self._canonical_tail}"
        string_to_sign = self._sts_prefix + hashlib.sha256(canonical_request.encode()).hexdigest()
        signature = hmac.digest(self._key, string_to_sign.encode(), "sha256").hex()  # one C call, no HMAC object
        return f"{self._origin}{path}?{query}&X-Amz-Signature={signature}"


def sign_get_headers(
    scope: SigningScope,
    *,
    signed_at: datetime,
    key: str,
    headers: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    """The path and the headers of a GET of object ``key``, signed in the ``Authorization`` header.

    sigv4-auth-using-authorization-header: ``host``, ``x-amz-content-sha256``
    (``UNSIGNED-PAYLOAD``: a GET has no body), ``x-amz-date`` and, with
    temporary credentials, ``x-amz-security-token`` are signed, plus any
    ``headers`` given (lower-case names, e.g. ``x-amz-checksum-mode``). Every
    returned header must be sent as it is; ``host`` is not among them (the
    HTTP client sends it, and it must equal ``scope.host``). Unlike a presigned URL,
    nothing secret ends up in the request target, so neither a log line nor
    an exception that quotes the URL can leak the signature or the token.
    """
    if signed_at.tzinfo is None:
        raise ValueError("signed_at must be timezone-aware")
    amz_date = signed_at.astimezone(UTC).strftime(AMZ_DATE_FORMAT)
    datestamp = amz_date[:8]
    credential_scope = f"{datestamp}/{scope.region}/{scope.service}/aws4_request"
    path = f"{urlsplit(scope.base_url).path.rstrip('/')}/{uri_encode_path(key)}"
    signed = {name: " ".join(value.split()) for name, value in (headers or {}).items()}  # create-signed-request: Trimall
    signed["x-amz-content-sha256"] = UNSIGNED_PAYLOAD
    signed["x-amz-date"] = amz_date
    if scope.session_token:
        signed["x-amz-security-token"] = scope.session_token
    names = sorted([*signed, "host"])
    canonical_headers = "".join(f"{name}:{scope.host if name == 'host' else signed[name]}\n" for name in names)
    signed_headers = ";".join(names)
    # create-signed-request: HTTPMethod \n CanonicalURI \n CanonicalQueryString (none) \n
    # CanonicalHeaders (each ending in \n) \n SignedHeaders \n HashedPayload
    canonical_request = f"GET\n{path}\n\n{canonical_headers}\n{signed_headers}\n{UNSIGNED_PAYLOAD}"
    string_to_sign = f"{ALGORITHM}\n{amz_date}\n{credential_scope}\n" + hashlib.sha256(canonical_request.encode()).hexdigest()
    signature = hmac.digest(signing_key(scope.secret_key, datestamp, scope.region, scope.service), string_to_sign.encode(), "sha256").hex()
    signed["Authorization"] = f"{ALGORITHM} Credential={scope.access_key}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}"
    return path, signed


@lru_cache(maxsize=1024)
def _encoded_pair(name: str, value: str) -> tuple[str, str]:
    """A query parameter encoded, remembered: a batch repeats the same ``response-content-type`` for every URL."""
    return uri_encode(name), uri_encode(value)
