"""Our own primary keys: UUIDv7, time-ordered so B-tree inserts stay local."""

from __future__ import annotations

import uuid

import uuid6


def new_id() -> uuid.UUID:
    """A fresh UUIDv7 as a standard ``uuid.UUID`` (what SQLAlchemy's Uuid type expects)."""
    return uuid.UUID(int=uuid6.uuid7().int)
