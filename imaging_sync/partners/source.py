"""What the sync engine needs from a partner, whatever its wire format."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Protocol

from imaging_sync.dto import Page, PageItem


class PartnerSource(Protocol):
    """A partner's export API turned into canonical, validated DTOs.

    Implementations raise ``PartnerAuthError`` (permanent), ``PartnerUnavailableError``
    or ``PartnerRateLimitedError`` (retries exhausted) and ``PageTokenExpiredError``
    (the caller restarts from its bookmark).
    """

    name: str

    def list_changed(self, since: dt.datetime | None) -> Iterator[Page]:
        """Every study changed at or after ``since`` (all when None), page by page, in (updated_at, id) order."""
        ...

    def get_study(self, partner_id: str) -> PageItem | None:
        """One study by the partner's id (None when the partner never had it)."""
        ...

    def health(self) -> None:
        """Raise a PartnerError unless the partner answers its health check."""
        ...

    def close(self) -> None: ...
