"""What S3 does with a presigned GET that moto 5.2 leaves out, as WSGI middleware for the embedded S3.

moto's server serves any URL that carries ``X-Amz-Signature``: it checks
neither the signature nor ``X-Amz-Date`` + ``X-Amz-Expires``, and ignores the
``response-content-type`` / ``response-content-disposition`` overrides. Locally
an expired or mis-signed URL would then "work", and the demo would hand out
downloads without the DICOM content type. This gate, in front of moto, does
what the Amazon S3 API Reference ("Authenticating Requests: Using Query
Parameters (AWS Signature Version 4)" and GetObject's "Overriding response
header values") describes:

- a malformed or over-7-day URL: 400 ``AuthorizationQueryParametersError``;
- past ``X-Amz-Date + X-Amz-Expires``: 403 ``AccessDenied`` "Request has expired";
- with ``secrets`` (access key id -> secret) given: unknown key 403
  ``InvalidAccessKeyId``, wrong signature 403 ``SignatureDoesNotMatch``. The
  expected signature is computed by botocore's own SigV4 code, not by
  ``storage.sigv4``, so a test through the gate is an independent check;
- on 200/206, the ``response-*`` parameters replace the response headers.

Requests signed in the Authorization header (boto3's own calls) pass through.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote
from xml.sax.saxutils import escape

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from storage.sigv4 import ALGORITHM, AMZ_DATE_FORMAT, MAX_EXPIRES_SECONDS

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# GetObject's "Overriding response header values" parameters.
OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-disposition": "Content-Disposition",
    "response-content-language": "Content-Language",
    "response-content-encoding": "Content-Encoding",
    "response-cache-control": "Cache-Control",
    "response-expires": "Expires",
}
CLOCK_SKEW = timedelta(minutes=15)


class _Refusal(Exception):
    def __init__(self, status: str, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class PresignedGetGate:
    """Refuses what S3 would refuse, then lets moto serve, then applies the overrides."""

    def __init__(
        self,
        app: WsgiApp,
        *,
        secrets: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._app = app
        self._secrets = secrets  # read per request: a live mapping may learn keys later (STS sessions)
        self._clock = clock

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        params = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        query = dict(params)
        if "X-Amz-Signature" not in query:
            return self._app(environ, start_response)
        try:
            self._check(environ, params, query)
        except _Refusal as refusal:
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{escape(refusal.code)}</Code><Message>{escape(refusal.message)}</Message></Error>"
            ).encode()
            start_response(refusal.status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        overrides = {OVERRIDES[name]: value for name, value in params if name in OVERRIDES}
        if not overrides:
            return self._app(environ, start_response)
        replaced = {name.lower() for name in overrides}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if status[:3] in ("200", "206"):
                headers = [(n, v) for n, v in headers if n.lower() not in replaced] + list(overrides.items())
            return start_response(status, headers, exc_info)

        return self._app(environ, start)

    def _check(self, environ: dict[str, Any], params: list[tuple[str, str]], query: dict[str, str]) -> None:
        try:
            if query["X-Amz-Algorithm"] != ALGORITHM:
                raise ValueError
            signed_at = datetime.strptime(query["X-Amz-Date"], AMZ_DATE_FORMAT).replace(tzinfo=UTC)
            expires = int(query["X-Amz-Expires"])
            access_key, datestamp, region, service, terminator = query["X-Amz-Credential"].split("/")
            if terminator != "aws4_request" or datestamp != query["X-Amz-Date"][:8]:
                raise ValueError
            signed_headers = query["X-Amz-SignedHeaders"].split(";")
        except (KeyError, ValueError):
            raise _Refusal("400 Bad Request", "AuthorizationQueryParametersError", "Malformed presigned URL parameters") from None
        if not 1 <= expires <= MAX_EXPIRES_SECONDS:
            raise _Refusal(
                "400 Bad Request",
                "AuthorizationQueryParametersError",
                f"X-Amz-Expires must be less than a week (in seconds) that is; {MAX_EXPIRES_SECONDS}",
            )
        now = self._clock()
        if now > signed_at + timedelta(seconds=expires):
            raise _Refusal("403 Forbidden", "AccessDenied", "Request has expired")
        if signed_at > now + CLOCK_SKEW:
            raise _Refusal("403 Forbidden", "AccessDenied", "Request is not valid yet")
        if self._secrets is None:
            return
        secret = self._secrets.get(access_key)
        if secret is None:
            raise _Refusal("403 Forbidden", "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        expected = _botocore_signature(environ, params, query, secret, region, service, expires, signed_headers)
        if not hmac.compare_digest(expected, query["X-Amz-Signature"]):
            raise _Refusal(
                "403 Forbidden",
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )


def _botocore_signature(
    environ: dict[str, Any],
    params: list[tuple[str, str]],
    query: dict[str, str],
    secret: str,
    region: str,
    service: str,
    expires: int,
    signed_headers: list[str],
) -> str:
    """The signature botocore computes for this request as received (decoded path and query, re-encoded)."""
    # WSGI gives the percent-decoded path as latin-1 "bytes in a str" (PEP 3333).
    raw_path = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1").decode("utf-8")
    host = environ.get("HTTP_HOST", "")
    headers = {}
    for name in signed_headers:
        if name == "host":
            headers["host"] = host
        else:
            headers[name] = environ.get("HTTP_" + name.upper().replace("-", "_"), "")
    request = AWSRequest(
        method=environ["REQUEST_METHOD"],
        url=f"http://{host}{quote(raw_path, safe='/~')}",
        params=[(k, v) for k, v in params if k != "X-Amz-Signature"],
        headers=headers,
    )
    request.context["timestamp"] = query["X-Amz-Date"]
    auth = S3SigV4QueryAuth(Credentials(query["X-Amz-Credential"].split("/")[0], secret), service, region, expires=expires)
    canonical_request = auth.canonical_request(request)
    signature: str = auth.signature(auth.string_to_sign(request, canonical_request), request)  # botocore is untyped: a hex str
    return signature
