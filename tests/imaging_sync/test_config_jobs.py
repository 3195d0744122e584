"""The [jobs] section and the per-partner schedule: typed, validated at start, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from imaging_sync.config import JobsConfig, Settings, crontab_fields, load_settings
from imaging_sync.errors import ConfigError

PARTNER = """
[partners.b]
base_url = "https://b.example.org/export"
api_key_env = "B_KEY"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "imaging-sync.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, **env: str) -> Settings:
    return load_settings(write(tmp_path, text), {"B_KEY": "k", **env})


def test_defaults_are_a_local_redis_utc_and_twice_a_day() -> None:
    jobs = Settings().jobs
    assert jobs.broker_url == "redis://127.0.0.1:6379/0" and jobs.broker_url_env is None
    assert jobs.resolved_result_backend({}).reveal() == jobs.broker_url  # the backend follows the broker
    assert (jobs.timezone, jobs.default_schedule) == ("UTC", "0 6,18 * * *")
    assert jobs.outbox_relay_seconds > 0 and jobs.alerts_check_seconds > 0 and jobs.prune_days >= 1


def test_the_jobs_section_and_a_partner_schedule_are_read(tmp_path: Path) -> None:
    settings = load(tmp_path, PARTNER + 'schedule = "15  */4 * * 1-5"\n' + """
[jobs]
broker_url = "amqp://rabbit.internal:5672//"
timezone = "Asia/Seoul"
default_schedule = "0 7 * * *"
outbox_relay_seconds = 5
alerts_check_seconds = 60
prune_days = 30
""")
    jobs = settings.jobs
    assert (jobs.timezone, jobs.default_schedule, jobs.outbox_relay_seconds, jobs.alerts_check_seconds, jobs.prune_days) == ("Asia/Seoul", "0 7 * * *", 5, 60, 30)
    assert jobs.resolved_result_backend({}).reveal() == "rpc://"  # an AMQP broker answers over rpc://
    assert settings.partner("b").schedule == "15  */4 * * 1-5"
    assert crontab_fields(settings.partner("b").schedule) == ("15", "*/4", "1-5", "*", "*")  # Celery's argument order


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[jobs]\ntimezone = "Mars/Olympus_Mons"\n', "jobs.timezone", "not an IANA time zone"),
        ('[jobs]\ndefault_schedule = "0 25 * * *"\n', "jobs.default_schedule", "25 > 23"),
        ('[jobs]\ndefault_schedule = "0 6,18 * *"\n', "jobs.default_schedule", "want 5 fields"),
        ('[jobs]\noutbox_relay_seconds = 0\n', "jobs.outbox_relay_seconds", "> 0"),
        ('[jobs]\nprune_days = 0\n', "jobs.prune_days", ">= 1"),
        ('[jobs]\nbroker = "redis://x"\n', "jobs.broker", "unknown key"),
        (PARTNER + 'schedule = "61 * * * *"\n', "partners.b.schedule", "not a valid crontab"),
    ],
)
def test_bad_jobs_config_names_the_key_and_the_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.key == key
    assert reason in caught.value.reason


@pytest.mark.parametrize("key", ["broker_url", "result_backend"])
def test_a_url_with_a_password_in_the_file_is_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f'[jobs]\n{key} = "redis://:hunter2@cache.internal:6379/0"\n')
    assert caught.value.key == f"jobs.{key}"
    assert "hunter2" not in str(caught.value)


def test_a_password_url_comes_from_the_named_environment_variable(tmp_path: Path) -> None:
    settings = load(tmp_path, '[jobs]\nbroker_url_env = "BROKER_URL"\n', BROKER_URL="amqp://app:pw@rabbit:5672//")
    secret = settings.jobs.resolved_broker_url({"BROKER_URL": "amqp://app:pw@rabbit:5672//"})
    assert secret.reveal() == "amqp://app:pw@rabbit:5672//" and "pw" not in repr(secret)
    with pytest.raises(ConfigError) as caught:
        settings.jobs.resolved_broker_url({})
    assert caught.value.key == "jobs.broker_url_env"
    with pytest.raises(ConfigError) as at_start:  # a named variable that is missing fails at start, like every secret
        load(tmp_path, '[jobs]\nbroker_url_env = "BROKER_URL"\n')
    assert at_start.value.key == "jobs.broker_url_env"
    # The environment override of the key itself is the other sanctioned way in, as for database.url.
    overridden = load(tmp_path, "", IMAGING_SYNC__JOBS__BROKER_URL="redis://:pw@cache:6379/1")
    assert overridden.jobs.broker_url == "redis://:pw@cache:6379/1"


def test_jobs_config_built_in_code_is_validated_too() -> None:
    with pytest.raises(ValueError, match="default_schedule"):
        JobsConfig(default_schedule="every day")


def test_a_broker_url_with_a_password_may_come_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "broker-url"
    secret_file.write_text("amqp://app:pw@rabbit:5672//\n")
    settings = load(tmp_path, f'[jobs]\nbroker_url_file = "{secret_file}"\n')
    assert settings.jobs.resolved_broker_url().reveal() == "amqp://app:pw@rabbit:5672//"
    assert settings.jobs.broker_url_key == "jobs.broker_url_file"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f'[jobs]\nbroker_url_file = "{tmp_path / "missing"}"\n')
    assert caught.value.key == "jobs.broker_url_file"
