"""API keys: created once and shown once, stored only as a SHA-256, checked per request.

A key looks like ``isk_<prefix>_<secret>``. The prefix is unique, indexed and
safe to show (lists, audit entries); the secret has 256 bits of entropy, so a
plain SHA-256 (not a slow password hash) is the right tool: there is nothing
to brute-force. Comparison is constant-time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection, or_, select, update

from imaging_sync.db.models import ApiKey, table_of, utcnow
from imaging_sync.errors import AuthenticationError, NotFoundError, ValidationError
from imaging_sync.ids import new_id

ROLES = ("viewer", "operator", "auditor")
_table = table_of(ApiKey)
_TOUCH_EVERY = dt.timedelta(minutes=1)  # last_used_at is a hint, not a per-request write


@dataclass(frozen=True)
class Principal:
    """Who is calling: what the audit log records and the guards check."""

    key_id: uuid.UUID
    name: str
    role: str
    prefix: str


@dataclass(frozen=True)
class ApiKeyInfo:
    id: uuid.UUID
    name: str
    role: str
    prefix: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None

    def status(self, now: dt.datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_new_key(name: str, role: str) -> None:
    """ValidationError naming ``name`` or ``role`` unless a key can be created with them."""
    if role not in ROLES:
        raise ValidationError("role", f"must be one of {', '.join(ROLES)}")
    if not name.strip() or len(name) > 100:
        raise ValidationError("name", "must be 1 to 100 characters")


def create_key(conn: Connection, name: str, role: str, expires_at: dt.datetime | None = None) -> tuple[ApiKeyInfo, str]:
    """Store a new key; return its info and the token, which is never retrievable again."""
    check_new_key(name, role)
    prefix = secrets.token_hex(6)
    token = f"isk_{prefix}_{secrets.token_urlsafe(32)}"
    info = ApiKeyInfo(id=new_id(), name=name.strip(), role=role, prefix=prefix, created_at=utcnow(), expires_at=expires_at, revoked_at=None, last_used_at=None)
    conn.execute(
        _table.insert().values(
            id=info.id, name=info.name, role=role, prefix=prefix, secret_hash=_hash(token), created_at=info.created_at, expires_at=expires_at
        )
    )
    return info, token


def list_keys(conn: Connection) -> list[ApiKeyInfo]:
    rows = conn.execute(select(_table).order_by(_table.c.created_at)).mappings()
    return [ApiKeyInfo(**{k: row[k] for k in ApiKeyInfo.__dataclass_fields__}) for row in rows]


def revoke_key(conn: Connection, key: str) -> ApiKeyInfo:
    """Revoke by id or prefix; revoking twice keeps the first time."""
    condition = _table.c.prefix == key
    try:
        condition = or_(condition, _table.c.id == uuid.UUID(key))
    except ValueError:
        pass
    row = conn.execute(select(_table).where(condition)).mappings().first()
    if row is None:
        raise NotFoundError(f"no API key with id or prefix {key!r}")
    if row["revoked_at"] is None:
        conn.execute(update(_table).where(_table.c.id == row["id"]).values(revoked_at=utcnow()))
    return next(k for k in list_keys(conn) if k.id == row["id"])


def authenticate(conn: Connection, token: str, now: dt.datetime | None = None) -> Principal:
    """The principal for a presented token, or AuthenticationError.

    Its ``reason`` (invalid, revoked, expired) is for the audit log; its
    message is the same for all three (errors.AuthenticationError).
    """
    now = now or utcnow()
    parts = token.split("_", 2)  # the secret may itself contain "_"
    if len(parts) != 3 or parts[0] != "isk":
        raise AuthenticationError("invalid")
    row = conn.execute(select(_table).where(_table.c.prefix == parts[1])).mappings().first()
    if row is None or not hmac.compare_digest(row["secret_hash"], _hash(token)):
        raise AuthenticationError("invalid")
    if row["revoked_at"] is not None:
        raise AuthenticationError("revoked")
    if row["expires_at"] is not None and row["expires_at"] <= now:
        raise AuthenticationError("expired")
    if row["last_used_at"] is None or now - row["last_used_at"] > _TOUCH_EVERY:
        conn.execute(update(_table).where(_table.c.id == row["id"]).values(last_used_at=now))
    return Principal(key_id=row["id"], name=row["name"], role=row["role"], prefix=row["prefix"])
