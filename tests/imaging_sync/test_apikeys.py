import datetime as dt

import pytest
from sqlalchemy import Engine, select

from imaging_sync import apikeys
from imaging_sync.db.models import ApiKey
from imaging_sync.errors import AuthenticationError, NotFoundError, ValidationError


def test_a_created_key_authenticates_with_its_role_and_is_stored_only_hashed(engine: Engine) -> None:
    with engine.begin() as conn:
        info, token = apikeys.create_key(conn, "frontend", "viewer")
    with engine.begin() as conn:
        principal = apikeys.authenticate(conn, token)
        stored = conn.execute(select(ApiKey.secret_hash, ApiKey.prefix)).one()
    assert (principal.role, principal.key_id, principal.prefix) == ("viewer", info.id, info.prefix)
    assert token.split("_", 2)[2] not in stored.secret_hash and len(stored.secret_hash) == 64  # the secret may itself hold "_"


@pytest.mark.parametrize("mangle", [lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), lambda t: "isk_nope_x", lambda t: "garbage", lambda t: ""])
def test_wrong_tokens_are_refused_without_saying_why(engine: Engine, mangle) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        _, token = apikeys.create_key(conn, "k", "operator")
    with engine.begin() as conn, pytest.raises(AuthenticationError, match="invalid API key"):
        apikeys.authenticate(conn, mangle(token))


def test_revoked_and_expired_keys_are_refused(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        revoked, revoked_token = apikeys.create_key(conn, "old", "viewer")
        _, expired_token = apikeys.create_key(conn, "temp", "viewer", expires_at=now - dt.timedelta(seconds=1))
        apikeys.revoke_key(conn, revoked.prefix)
    with engine.begin() as conn:
        refusals = {}
        for token in (revoked_token, expired_token, "isk_nothere_secret"):
            with pytest.raises(AuthenticationError) as caught:
                apikeys.authenticate(conn, token)
            refusals[caught.value.reason] = str(caught.value)
        statuses = {k.name: k.status(now) for k in apikeys.list_keys(conn)}
    assert statuses == {"old": "revoked", "temp": "expired"}
    # The reason is the audit's; what a caller reads is one sentence for all three.
    assert refusals == {"revoked": "invalid API key", "expired": "invalid API key", "invalid": "invalid API key"}


def test_bad_role_and_unknown_key_are_clear_errors(engine: Engine) -> None:
    with engine.begin() as conn:
        with pytest.raises(ValidationError, match="role"):
            apikeys.create_key(conn, "x", "admin")
        with pytest.raises(NotFoundError):
            apikeys.revoke_key(conn, "nothere")
