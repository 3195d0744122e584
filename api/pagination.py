"""Page sizes and opaque cursors for keyset-paginated listings.

A cursor is the base64url (unpadded) JSON of ``[listing, *sort key of the
last row]``; clients treat it as opaque and pass it back as ``cursor``. The
listing name in it means a cursor from one listing is refused by another
(400 naming ``cursor``) instead of silently paging from a wrong position.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import msgspec

from imaging_sync.catalog.keyset import Key
from imaging_sync.config import ApiConfig
from imaging_sync.errors import ValidationError

MAX_CURSOR_LENGTH = 512
_encoder = msgspec.json.Encoder()


def page_size(limit: int | None, config: ApiConfig) -> int:
    """The page size to use: ``api.default_page_size`` when not given, at most ``api.max_page_size``.

    A limit the OpenAPI document allows (up to 1000) but above the configured
    maximum is reduced to it rather than refused: the schema is the same for
    every deployment, the maximum is not, and a client paging by cursor loses
    nothing by getting smaller pages.
    """
    if limit is None:
        return config.default_page_size
    if limit < 1:
        raise ValidationError("limit", "must be at least 1")
    return min(limit, config.max_page_size)


def encode_cursor(listing: str, key: Key | None) -> str | None:
    if key is None:
        return None
    return base64.urlsafe_b64encode(_encoder.encode([listing, *key])).rstrip(b"=").decode()


def decode_cursor(token: str | None, listing: str, types: tuple[Any, ...]) -> Key | None:
    """The sort key in ``token``, checked against the listing's key ``types``; ValidationError("cursor") otherwise."""
    if token is None:
        return None
    if not token or len(token) > MAX_CURSOR_LENGTH:
        raise ValidationError("cursor", "not a cursor returned by this listing")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = msgspec.json.decode(raw, type=tuple.__class_getitem__((Literal[listing], *types)))
    except (binascii.Error, ValueError, msgspec.ValidationError, msgspec.DecodeError):
        raise ValidationError("cursor", "not a cursor returned by this listing") from None
    return tuple(decoded[1:])
