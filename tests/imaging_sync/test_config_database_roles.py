"""``[database] runtime_role``: which role and which secret each process connects with, decided in one place.

``database.url`` names the owning role, which only ``db upgrade`` uses; with
``runtime_role`` set every other process connects as that role, with its own
secret, and is never asked for the owner's (compose does not give it to them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imaging_sync.config import DatabaseConfig, load_settings
from imaging_sync.db.engine import connection_url
from imaging_sync.errors import ConfigError

OWNER_URL = "postgresql+psycopg://imaging_sync@db.internal:5432/imaging_sync"
CONFIG = f"""
[database]
url = "{OWNER_URL}"
password_env = "OWNER_PASSWORD"
runtime_role = "imaging_sync_app"
runtime_password_env = "RUNTIME_PASSWORD"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imaging-sync.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_services_connect_as_the_runtime_role_with_its_own_secret(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, CONFIG), {"RUNTIME_PASSWORD": "rt-secret"})  # no owner password: a service's environment
    url = connection_url(settings.database, "serve", {"RUNTIME_PASSWORD": "rt-secret"})
    assert (url.username, url.password, url.host, url.database) == ("imaging_sync_app", "rt-secret", "db.internal", "imaging_sync")


def test_migrations_connect_as_the_owner_with_the_owners_secret(tmp_path: Path) -> None:
    env = {"RUNTIME_PASSWORD": "rt-secret", "OWNER_PASSWORD": "owner-secret"}
    settings = load_settings(write(tmp_path, CONFIG), env)
    url = connection_url(settings.database, "migrate", env)
    assert (url.username, url.password) == ("imaging_sync", "owner-secret")


def test_migrating_without_the_owners_secret_names_the_key(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, CONFIG), {"RUNTIME_PASSWORD": "rt-secret"})
    with pytest.raises(ConfigError) as caught:
        connection_url(settings.database, "migrate", {"RUNTIME_PASSWORD": "rt-secret"})
    assert caught.value.key == "database.password_env"


def test_a_service_without_the_runtime_secret_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, CONFIG), {"OWNER_PASSWORD": "owner-secret"})
    assert "database.runtime_password_env" in str(caught.value)


def test_without_a_runtime_role_every_process_is_the_owner() -> None:
    config = DatabaseConfig(url=OWNER_URL)
    assert connection_url(config, "serve", {}).username == connection_url(config, "migrate", {}).username == "imaging_sync"


@pytest.mark.parametrize(("database", "key", "reason"), [
    ('url = "sqlite:///x.db"\nruntime_role = "app"', "database.runtime_role", "only for PostgreSQL"),
    (f'url = "{OWNER_URL}"\nruntime_role = "imaging_sync"', "database.runtime_role", "must differ"),
    (f'url = "{OWNER_URL}"\nruntime_role = "App-Role"', "database.runtime_role", "lower-case"),
    (f'url = "{OWNER_URL}"\nruntime_password_env = "X"', "database.runtime_role", "no runtime_role"),
    (f'url = "{OWNER_URL}"\nruntime_role = "app"\nruntime_password_env = "X"\nruntime_password_file = "/f"', "database", "runtime_password_env and runtime_password_file: set only one"),
])
def test_a_bad_runtime_role_names_the_key(tmp_path: Path, database: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, f"[database]\n{database}\n"), {"X": "x"})
    assert caught.value.key.startswith(key) and reason in str(caught.value), str(caught.value)
