"""The example config is generated from the schema, lists every key, and loads; secrets are all checked at once."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import msgspec
import pytest
from msgspec import inspect

from imaging_sync.config import Settings, WebhookConfig, load_settings, secret_sources, webhook_url
from imaging_sync.config_toml import dumps, render_example
from imaging_sync.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "docs" / "imaging-sync.example.toml"
EXAMPLE_ENV = {
    "PARTNER_B_API_KEY": "b-key",
    "PARTNER_B_EXTERNAL_ID": "ext-id",
    "PARTNER_C_S3_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "IMAGING_SYNC_WEBHOOK_URL": "https://platform.example/hooks/x?token=abc",
    "IMAGING_SYNC_WEBHOOK_SECRET": "whsec",
}


def _schema_keys() -> set[tuple[str, str]]:
    """(table pattern, key) for every key a config file may set; ``*`` stands for a name (partner, bucket, AE title)."""
    found: set[tuple[str, str]] = set()

    def walk(table: str, kind: inspect.Type) -> None:
        while isinstance(kind, (inspect.Metadata, inspect.UnionType)):
            kind = kind.type if isinstance(kind, inspect.Metadata) else next(t for t in kind.types if not isinstance(t, inspect.NoneType))
        if isinstance(kind, inspect.DictType) and isinstance(_plain(kind.value_type), inspect.StructType):
            walk(f"{table}.*", kind.value_type)
            return
        assert isinstance(kind, inspect.StructType)
        for field in kind.fields:
            if field.name in ("name", "source"):
                continue
            inner = _plain(field.type)
            if isinstance(inner, inspect.StructType) or (isinstance(inner, inspect.DictType) and isinstance(_plain(inner.value_type), inspect.StructType)):
                walk(f"{table}.{field.name}".lstrip("."), field.type)
            elif isinstance(inner, inspect.DictType) and isinstance(_plain(inner.value_type), inspect.DictType):
                found.add((f"{table}.{field.name}.*", "*"))  # [partners.b.vocabulary.sex]: free keys
            else:
                found.add((table, field.name))

    walk("", inspect.type_info(Settings))
    return found


def _plain(kind: inspect.Type) -> inspect.Type:
    while isinstance(kind, (inspect.Metadata, inspect.UnionType)):
        kind = kind.type if isinstance(kind, inspect.Metadata) else next(t for t in kind.types if not isinstance(t, inspect.NoneType))
    return kind


def _example_keys(text: str) -> set[tuple[str, str]]:
    """(table, key) of every key line, set (``key = v``) or shown commented (``# key = v``)."""
    table, found = "", set()
    for line in text.splitlines():
        header = re.fullmatch(r"\[(.+)\]", line)
        if header:
            table = header.group(1)
            continue
        key = re.match(r"(?:# )?([A-Za-z0-9_\"][^ =]*) = ", line)
        if key:
            found.add((table, key.group(1).strip('"')))
    return found


def test_the_committed_example_is_what_the_schema_generates() -> None:
    assert EXAMPLE.read_text(encoding="utf-8") == render_example(), "regenerate it: imaging-sync config example > docs/imaging-sync.example.toml"


def test_every_key_the_schema_accepts_is_in_the_example() -> None:
    shown = _example_keys(EXAMPLE.read_text(encoding="utf-8"))
    missing = []
    for pattern, key in sorted(_schema_keys()):
        if not any(fnmatch.fnmatchcase(table, pattern) and (key == "*" or key == shown_key) for table, shown_key in shown):
            missing.append(f"[{pattern}] {key}")
    assert not missing, f"keys the schema accepts but the example lacks: {missing}"
    assert ("storage", "embedded") in shown and ("dicom", "max_associations") in shown and ("outbox", "lease_seconds") in shown


def test_the_example_names_every_missing_secret_in_one_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(EXAMPLE, {})
    keys = {problem.key for problem in caught.value.problems}
    assert keys == {
        "partners.b.api_key_env", "partners.c.api_key_file",
        "storage.buckets.partner-b-dicom.external_id_env", "storage.buckets.partner-b-archive.external_id_env",
        "storage.buckets.partner-c-images.access_key_id_env", "storage.buckets.partner-c-images.secret_access_key_file",
        "outbox.webhook.url_env", "outbox.webhook.secret_env",
    }
    assert str(caught.value).startswith("8 config errors:")


def test_the_example_loads_once_its_secrets_exist(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace("/run/secrets/", f"{tmp_path}/")
    for name in ("partner-c-api-key", "partner-c-s3-secret-access-key"):
        (tmp_path / name).write_text(f"{name}-value\n")
    path = tmp_path / "imaging-sync.toml"
    path.write_text(text, encoding="utf-8")
    settings = load_settings(path, EXAMPLE_ENV)
    assert set(settings.partners) == {"b", "c"}
    assert settings.partner("b").buckets == {"partner-b-dicom", "partner-b-archive"}
    assert settings.partner("b").vocabulary["modality"]["MRI"] == "MR"
    assert settings.dicom.destinations["HOSPITAL_PACS"].port == 104
    assert settings.outbox.webhook is not None and webhook_url(settings.outbox.webhook, EXAMPLE_ENV).reveal().endswith("token=abc")
    assert {s.key for s in secret_sources(settings)} >= {"partners.c.api_key", "storage.buckets.partner-c-images.secret_access_key"}


def test_a_settings_file_written_by_dumps_loads_back_equal(tmp_path: Path) -> None:
    settings = load_settings(None, {})
    data = msgspec.to_builtins(settings)
    data.pop("source")
    data["api"]["cors_allowed_origins"] = ["http://localhost:5173"]
    data["partners"] = {"b": {"base_url": "http://127.0.0.1:9/x", "api_key_env": "B_KEY", "vocabulary": {"sex": {"male": "M"}}}}
    path = tmp_path / "written.toml"
    path.write_text(dumps(data), encoding="utf-8")
    loaded = load_settings(path, {"B_KEY": "k"})
    assert loaded.api.cors_allowed_origins == ["http://localhost:5173"]
    assert loaded.partner("b").vocabulary == {"sex": {"male": "M"}}
    assert loaded.database == settings.database and loaded.dicom == settings.dicom


@pytest.mark.parametrize("value", ["http://localhost:5173, https://platform.example", '["http://localhost:5173", "https://platform.example"]'])
def test_a_list_key_takes_comma_separated_or_json_values_from_the_environment(value: str) -> None:
    settings = load_settings(None, {"IMAGING_SYNC__API__CORS_ALLOWED_ORIGINS": value, "IMAGING_SYNC__DICOM__PEERS__PACS__OPERATIONS": "find,move"})
    assert settings.api.cors_allowed_origins == ["http://localhost:5173", "https://platform.example"]
    assert settings.dicom.peers["pacs"].operations == ["find", "move"]


def test_a_malformed_json_list_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"IMAGING_SYNC__API__CORS_ALLOWED_ORIGINS": '["http://a.example"'})
    assert caught.value.key == "IMAGING_SYNC__API__CORS_ALLOWED_ORIGINS"


def test_the_webhook_url_may_come_from_a_file_and_only_one_source_is_accepted(tmp_path: Path) -> None:
    url_file = tmp_path / "hook"
    url_file.write_text("https://platform.example/hooks/secret-token\n")
    path = tmp_path / "c.toml"
    path.write_text(f'[outbox.webhook]\nurl_file = "{url_file}"\n', encoding="utf-8")
    settings = load_settings(path, {})
    assert settings.outbox.has_sink and webhook_url(settings.outbox.webhook).reveal() == "https://platform.example/hooks/secret-token"  # type: ignore[arg-type]
    with pytest.raises(msgspec.ValidationError, match="exactly one of url, url_env and url_file"):
        msgspec.convert({"url": "https://a.example", "url_env": "X"}, WebhookConfig)
    path.write_text('[outbox.webhook]\nurl_env = "HOOK_URL"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {"HOOK_URL": "ftp://nope"})
    assert caught.value.key == "outbox.webhook.url_env"


def test_bucket_credentials_may_come_from_files(tmp_path: Path) -> None:
    from storage.registry import BucketRegistry

    (tmp_path / "ak").write_text("AKIAFROMFILE\n")
    (tmp_path / "sk").write_text("secret-from-file\n")
    path = tmp_path / "c.toml"
    path.write_text(f'[storage.buckets.files-bucket]\nauth = "keys"\naccess_key_id_file = "{tmp_path / "ak"}"\nsecret_access_key_file = "{tmp_path / "sk"}"\n', encoding="utf-8")
    settings = load_settings(path, {})
    credentials = BucketRegistry(settings.storage, environ={}).credentials("files-bucket")
    assert (credentials.access_key, credentials.secret_key) == ("AKIAFROMFILE", "secret-from-file")
