from pathlib import Path

import pytest

from imaging_sync.config import DEFAULT_DATABASE_URL, Secret, load_settings, resolve_api_key
from imaging_sync.errors import ConfigError

PARTNER = """
[partners.b]
base_url = "https://b.example.org/export"
api_key_env = "B_KEY"
default_bucket = "partner-b-dicom"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imaging-sync.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_config_file_runs_on_embedded_sqlite_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, {})
    assert settings.database.url == DEFAULT_DATABASE_URL
    assert settings.partners == {}
    assert settings.source == "embedded defaults"


def test_partner_section_is_typed_and_named(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, PARTNER), {"B_KEY": "k"})
    partner = settings.partner("b")
    assert partner.name == "b"
    assert partner.page_size == 200
    assert partner.auth_header == "X-API-Key"
    assert partner.buckets == {"partner-b-dicom"}


def test_environment_overrides_a_nested_key_with_type_conversion(tmp_path: Path) -> None:
    env = {"B_KEY": "k", "IMAGING_SYNC__PARTNERS__B__PAGE_SIZE": "75", "IMAGING_SYNC__DATABASE__URL": "sqlite:///x.db"}
    settings = load_settings(write(tmp_path, PARTNER), env)
    assert settings.partner("b").page_size == 75
    assert settings.database.url == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ("page_size = 900", "partners.b.page_size", "<= 500"),
        ('page_size = "many"', "partners.b.page_size", "Expected `int`"),
        ("colour = 1", "partners.b.colour", "unknown key"),
        ('api_key = "hunter2"', "partners.b.api_key", "secrets must not be written"),
        ("[partners.b.vocabulary.sex]\nmale = 'Q'", "partners.b.vocabulary.sex", "not a DICOM value"),
        ("[partners.b.vocabulary.colour]\nred = 'R'", "partners.b.vocabulary.colour", "unknown coded field"),
    ],
)
def test_bad_config_names_the_key_and_the_reason(tmp_path: Path, extra: str, key: str, reason: str) -> None:
    text = PARTNER.replace('default_bucket = "partner-b-dicom"', f'default_bucket = "partner-b-dicom"\n{extra}')
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), {"B_KEY": "k"})
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert "hunter2" not in str(caught.value)


def test_missing_api_key_variable_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, PARTNER), {})
    assert caught.value.key == "partners.b.api_key_env"
    assert "B_KEY" in caught.value.reason


def test_api_key_from_file_is_read_and_never_shown(tmp_path: Path) -> None:
    key_file = tmp_path / "b.key"
    key_file.write_text("s3cret-value\n")
    text = PARTNER.replace('api_key_env = "B_KEY"', f'api_key_file = "{key_file}"')
    settings = load_settings(write(tmp_path, text), {})
    secret = resolve_api_key(settings.partner("b"), {})
    assert secret.reveal() == "s3cret-value"
    assert "s3cret" not in repr(secret) and "s3cret" not in str(settings)


def test_database_password_in_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, '[database]\nurl = "postgresql://app:pw@db/index"\n'), {})
    assert caught.value.key == "database.url"


def test_explicit_config_path_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"IMAGING_SYNC_CONFIG": str(tmp_path / "missing.toml")})
    assert caught.value.key == "IMAGING_SYNC_CONFIG"


def test_secret_repr_hides_the_value() -> None:
    assert "abc" not in repr(Secret("abc")) and "abc" not in f"{Secret('abc')}"
