"""Our own primary keys: UUIDv7, time-ordered so B-tree inserts stay local."""

from __future__ import annotations

import uuid

import uuid6

_RAND_B_MASK = (1 << 62) - 1  # the 62 random bits below the variant (RFC 9562 §5.7)


def new_id() -> uuid.UUID:
    """A fresh UUIDv7 (``uuid6.UUID`` is a ``uuid.UUID`` subclass; drivers take it as is)."""
    return uuid6.uuid7()


def new_ids(count: int) -> list[uuid.UUID]:
    """``count`` UUIDv7s for one batch: a fresh uuid6 UUIDv7, then its random bits incremented.

    RFC 9562 §6.2 method 2 ("monotonic random"): within one timestamp the
    random part is incremented, which keeps the batch unique and sorted.
    Profiling a full sync showed one ``uuid6.uuid7()`` per row costing more
    than the COPY of that row.
    """
    if count <= 0:
        return []
    base = uuid6.uuid7().int
    if (base & _RAND_B_MASK) + count > _RAND_B_MASK:  # would carry into the variant bits: start low
        base &= ~_RAND_B_MASK
    return [uuid.UUID(int=base + offset) for offset in range(count)]
