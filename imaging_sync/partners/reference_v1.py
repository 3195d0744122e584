"""The ``reference-v1`` adapter: the Partner Export API v1 over HTTP (httpx).

Retry rules follow the contract: 5xx, connection errors and timeouts are
transient (exponential backoff with full jitter, bounded in attempts and total
time); 429 waits ``Retry-After``; 401/403 are permanent for the run; 410 on a
page token means "restart from your bookmark" and is left to the engine,
which knows what it has committed.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx

from imaging_sync.config import PartnerConfig, Secret
from imaging_sync.dates import format_rfc3339
from imaging_sync.dto import Page, PageItem
from imaging_sync.errors import (
    PageTokenExpiredError,
    PartnerAuthError,
    PartnerError,
    PartnerRateLimitedError,
    PartnerUnavailableError,
    ValidationError,
)
from imaging_sync.partners.prefetch import prefetch
from imaging_sync.partners.wire import ItemParser, check_id, next_page_token
from imaging_sync.vocabulary import Vocabulary

log = logging.getLogger(__name__)

_TRANSIENT_STATUS = {500, 502, 503, 504, 408}


class ReferenceV1Source:
    """One partner's export API. Not thread-safe: one instance per sync run."""

    def __init__(
        self,
        config: PartnerConfig,
        api_key: Secret,
        *,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = config.name
        self.config = config
        self._sleep = sleep
        self._owns_client = client is None
        self._client = client or httpx.Client(
            base_url=config.base_url.rstrip("/"),
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
            headers={"Accept": "application/json", "User-Agent": "imaging-sync/0.1"},
        )
        scheme = f"{config.auth_scheme} " if config.auth_scheme else ""
        self._auth_headers = {config.auth_header: f"{scheme}{api_key.reveal()}"}
        self.parser = ItemParser(
            config.name,
            Vocabulary(config.vocabulary, passthrough_dicom_terms=config.passthrough_dicom_terms),
            config.default_bucket,
            config.buckets,
        )

    def list_changed(self, since: dt.datetime | None) -> Iterator[Page]:
        """Pages in order; the next page's HTTP request runs while the caller writes this one."""
        for body in prefetch(self._listing_bodies(since)):
            try:
                items, token = self.parser.parse_page(body)
            except ValidationError as exc:
                raise PartnerError(self.name, f"malformed listing response: {exc}") from None
            yield Page(items=items, next_page_token=token)

    def _listing_bodies(self, since: dt.datetime | None) -> Iterator[bytes]:
        params: dict[str, Any] = {"page_size": self.config.page_size}
        if since is not None:
            params["updated_since"] = format_rfc3339(since)
        while True:
            body = self._get("/v1/studies", params, listing_page="page_token" in params).content
            yield body
            token = next_page_token(body)
            if not token:
                return
            params["page_token"] = token

    def get_study(self, partner_id: str) -> PageItem | None:
        """The study the partner has under this id (a deleted item too), or None on 404.

        The id is sent as one path segment whatever it holds (path_segment), so
        it can name no other resource; one the contract rules out (empty, over
        128 characters) is a ValidationError before any request.
        """
        check_id(partner_id, "study_id")
        try:
            response = self._get(f"/v1/studies/{path_segment(partner_id)}", {}, not_found_ok=True)
        except _NotFound:
            return None
        return self.parser.parse_item(response.content)

    def health(self) -> None:
        response = self._get("/v1/health", {})
        try:
            status = response.json().get("status")
        except (ValueError, AttributeError):
            status = None
        if status != "ok":
            raise PartnerError(self.name, f"health check answered {response.text[:100]!r}")

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def _get(self, path: str, params: dict[str, Any], *, listing_page: bool = False, not_found_ok: bool = False) -> httpx.Response:
        """GET with the contract's retry rules; returns a 200 response or raises."""
        policy = self.config.retry
        deadline = time.monotonic() + policy.max_total_seconds
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._client.get(path, params=params, headers=self._auth_headers)
            except httpx.TransportError as exc:  # connection refused/reset, timeouts
                problem, wait = f"{type(exc).__name__}: {exc}", self._backoff(attempt)
                exhausted_error: type[PartnerError] = PartnerUnavailableError
            else:
                status = response.status_code
                if status == 200:
                    return response
                if status in (401, 403):
                    what = "rejected the API key (401)" if status == 401 else "refused access: key revoked or not allowed (403)"
                    raise PartnerAuthError(self.name, f"{what} on {path}; check partners.{self.name} api key")
                if status == 410 and listing_page:
                    raise PageTokenExpiredError(self.name, "page token expired (410)")
                if status == 404 and not_found_ok:
                    raise _NotFound()
                if status == 429:
                    wait = _retry_after(response.headers.get("Retry-After"), self._backoff(attempt))
                    if wait > policy.max_retry_after:
                        raise PartnerRateLimitedError(self.name, f"429 asked to wait {wait:.0f}s (more than max_retry_after)")
                    problem, exhausted_error = "429 Too Many Requests", PartnerRateLimitedError
                elif status in _TRANSIENT_STATUS or status >= 500:
                    problem, wait, exhausted_error = f"HTTP {status}", self._backoff(attempt), PartnerUnavailableError
                else:
                    raise PartnerError(self.name, f"unexpected HTTP {status} on {path}: {response.text[:200]!r}")
            if attempt >= policy.max_attempts or time.monotonic() + wait > deadline:
                raise exhausted_error(self.name, f"{problem} on {path}, giving up after {attempt} attempts")
            log.warning("partner %s: %s on %s, retry %d in %.2fs", self.name, problem, path, attempt, wait)
            self._sleep(wait)

    def _backoff(self, attempt: int) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base·2^n)], never zero."""
        policy = self.config.retry
        ceiling: float = min(policy.max_backoff, policy.initial_backoff * 2 ** (attempt - 1))
        return max(ceiling * 0.1, random.uniform(0, ceiling))


class _NotFound(Exception):
    pass


def path_segment(value: str) -> str:
    """``value`` as exactly one path segment of a URL (the contract, § 3.2).

    Percent-encoded with nothing left safe (RFC 3986 §3.3), so ``/`` is
    ``%2F``; a segment that is all dots (``.``, ``..``) has its dots encoded too
    (``%2E``), since a resolver removes dot-segments before the request is
    sent (httpx turns ``/v1/studies/.`` into ``/v1/studies``, the listing) but
    leaves ``%2E`` as it is on the request line.
    """
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


def _retry_after(header: str | None, fallback: float) -> float:
    """Retry-After as seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not header:
        return fallback
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return fallback
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
