"""Typed configuration, read once at start.

One TOML file (``IMAGING_SYNC_CONFIG``, default ``./imaging-sync.toml``),
overridden by environment variables named ``IMAGING_SYNC__SECTION__KEY``
(double underscores separate the path; ``IMAGING_SYNC__PARTNERS__B__PAGE_SIZE=50``).
With no file at all the service runs on embedded defaults: a SQLite database
under ``./var/`` and no partners.

Secrets (partner API keys, database passwords, cloud credentials) are never
read from the TOML: the config names an environment variable or a file that
holds them, and they are checked at start so a missing key fails before any
work, naming the config key to fix.
"""

from __future__ import annotations

import os
import re
import tomllib
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

import msgspec

from imaging_sync.errors import ConfigError
from imaging_sync.vocabulary import FIELDS as VOCABULARY_FIELDS
from imaging_sync.vocabulary import Vocabulary

CONFIG_ENV = "IMAGING_SYNC_CONFIG"
ENV_PREFIX = "IMAGING_SYNC__"
DEFAULT_CONFIG_PATH = Path("imaging-sync.toml")
DEFAULT_DATABASE_URL = "sqlite:///./var/imaging-sync.db"

# Keys that would put a secret in the file itself.
_SECRET_KEYS = {"api_key", "password", "secret", "secret_access_key", "aws_secret_access_key", "token"}
_PARTNER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


@dataclass(frozen=True)
class Secret:
    """A secret value that never shows itself in repr, str or logs."""

    _value: str

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class RetryPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How a partner call is retried on 5xx, timeouts, connection errors and 429."""

    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=50)] = 6
    initial_backoff: PositiveFloat = 0.5
    max_backoff: PositiveFloat = 30.0
    max_total_seconds: PositiveFloat = 300.0
    # A Retry-After longer than this is not waited out: the run fails instead.
    max_retry_after: PositiveFloat = 120.0


class PartnerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One partner service: where it is, how to authenticate, how to map it."""

    base_url: str
    name: str = ""
    adapter: Literal["reference-v1"] = "reference-v1"
    enabled: bool = True
    api_key_env: str | None = None
    api_key_file: str | None = None
    auth_header: str = "X-API-Key"
    auth_scheme: str | None = None
    default_bucket: str | None = None
    allowed_buckets: list[str] = []
    page_size: Annotated[int, msgspec.Meta(ge=1, le=500)] = 200
    overlap_seconds: Annotated[float, msgspec.Meta(ge=0)] = 600.0
    connect_timeout: PositiveFloat = 5.0
    read_timeout: PositiveFloat = 30.0
    retry: RetryPolicy = RetryPolicy()
    # Higher wins: field values of an entity come from its highest-priority partner.
    priority: int = 0
    # Accept values that already are DICOM defined terms (e.g. "CT") when the
    # vocabulary table has no entry for them.
    passthrough_dicom_terms: bool = True
    # field name -> {partner value -> DICOM value}
    vocabulary: dict[str, dict[str, str]] = {}
    # When the scheduled jobs sync this partner (crontab, in jobs.timezone); None: jobs.default_schedule.
    schedule: str | None = None

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url: must start with http:// or https://")
        if self.schedule is not None:
            _check_crontab("schedule", self.schedule)
        if self.api_key_env and self.api_key_file:
            raise ValueError("api_key_env and api_key_file: set only one")
        for bucket in self.buckets:
            if not _BUCKET_NAME.match(bucket):
                raise ValueError(f"allowed_buckets/default_bucket: {bucket!r} is not a valid S3 bucket name")
        for field in self.vocabulary:
            if field not in VOCABULARY_FIELDS:
                raise ValueError(f"vocabulary.{field}: unknown coded field (known: {', '.join(sorted(VOCABULARY_FIELDS))})")
        Vocabulary(self.vocabulary, passthrough_dicom_terms=self.passthrough_dicom_terms)  # raises naming the bad entry

    @property
    def buckets(self) -> frozenset[str]:
        """Every bucket this partner may point at: its default plus the allowed list."""
        return frozenset([*self.allowed_buckets, *([self.default_bucket] if self.default_bucket else [])])


class DatabaseConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    url: str = DEFAULT_DATABASE_URL
    password_env: str | None = None
    password_file: str | None = None
    # Connections a process may hold at once, kept open once opened (no overflow).
    pool_size: Annotated[int, msgspec.Meta(ge=1, le=200)] = 10
    # Seconds a checkout waits for a free connection before DatabaseError (the API answers 503).
    pool_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 30.0
    echo: bool = False


class LoggingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class SyncConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # How often a page token may expire (410) in one run before the run fails.
    max_token_restarts: Annotated[int, msgspec.Meta(ge=0)] = 5
    # How often a page transaction is retried after a deadlock or serialization failure.
    max_page_attempts: Annotated[int, msgspec.Meta(ge=1)] = 3


class BucketConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One S3 bucket the service may sign or read, and how to reach it.

    Different buckets may live in different accounts and regions; buckets with
    the same settings share one boto3 client.
    """

    region: str = "us-east-1"
    # MinIO, moto or another S3-compatible store; None for AWS itself.
    endpoint_url: str | None = None
    # default: the boto3 credential chain; profile: a named profile;
    # keys: access keys from environment variables; assume_role: STS AssumeRole.
    auth: Literal["default", "profile", "keys", "assume_role"] = "default"
    profile: str | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None
    role_arn: str | None = None
    external_id_env: str | None = None
    role_session_name: str = "imaging-sync"
    addressing_style: Literal["auto", "path", "virtual"] = "auto"

    def __post_init__(self) -> None:
        if self.auth == "profile" and not self.profile:
            raise ValueError("profile: required when auth = \"profile\"")
        if self.auth == "keys" and not (self.access_key_id_env and self.secret_access_key_env):
            raise ValueError("access_key_id_env: auth = \"keys\" needs access_key_id_env and secret_access_key_env")
        if self.auth == "assume_role" and not self.role_arn:
            raise ValueError("role_arn: required when auth = \"assume_role\"")
        if self.endpoint_url is not None and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError("endpoint_url: must start with http:// or https://")


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The bucket registry: only these buckets are ever signed or read."""

    presign_default_seconds: Annotated[int, msgspec.Meta(ge=1)] = 300
    presign_max_seconds: Annotated[int, msgspec.Meta(ge=1, le=7 * 24 * 3600)] = 3600
    # Start an S3 endpoint on 127.0.0.1 (moto's server) for local use and the demo.
    embedded: bool = False
    embedded_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    buckets: dict[str, BucketConfig] = {}

    def __post_init__(self) -> None:
        if self.presign_default_seconds > self.presign_max_seconds:
            raise ValueError("presign_default_seconds: larger than presign_max_seconds")
        for name in self.buckets:
            if not _BUCKET_NAME.match(name):
                raise ValueError(f"buckets: {name!r} is not a valid S3 bucket name")


_ORIGIN = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?")


class ApiConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    default_page_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50
    max_page_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 200
    # Client addresses are taken from X-Forwarded-For only when the peer is one of these.
    trusted_proxies: list[str] = []
    # Web pages on these origins may call the API from the browser (CORS). None by default:
    # a server calling the API needs no CORS, and each origin allowed is a decision.
    cors_allowed_origins: list[str] = []
    # Where POST /partners/{name}/sync does the work: "thread" in the API process (one
    # process, the demo), "queue" on the Celery workers through [jobs] broker.
    sync_launcher: Literal["thread", "queue"] = "thread"

    def __post_init__(self) -> None:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size: larger than max_page_size")
        for origin in self.cors_allowed_origins:
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"cors_allowed_origins: {origin!r} is not an origin as browsers send it (scheme://host[:port] in lower case, no path, no wildcard)")


class WebhookConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where outbox events are POSTed (JSON, HMAC-SHA256 signed when a secret is set)."""

    url: str
    secret_env: str | None = None
    secret_file: str | None = None
    timeout_seconds: PositiveFloat = 10.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url: must start with http:// or https://")
        if self.secret_env and self.secret_file:
            raise ValueError("secret_env and secret_file: set only one")


class OutboxConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    # A claimed event not settled within the lease is claimed again by any relay.
    lease_seconds: PositiveFloat = 60.0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    initial_backoff: PositiveFloat = 2.0
    max_backoff: PositiveFloat = 900.0
    poll_interval: PositiveFloat = 1.0
    # Keep done events this long (the prune task deletes older ones).
    keep_done_days: Annotated[int, msgspec.Meta(ge=1)] = 14
    webhook: WebhookConfig | None = None
    # Also hand each event to this Celery task (in-process consumers); needs the jobs package.
    celery_task: str | None = None


class AlertsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where alerts go and when they fire. Webhook URLs carry their own secret: env or file only."""

    slack_webhook_url_env: str | None = None
    slack_webhook_url_file: str | None = None
    webhook_url_env: str | None = None  # a generic JSON webhook
    webhook_url_file: str | None = None
    timeout_seconds: PositiveFloat = 10.0
    # A run whose rejected items exceed this share of what it fetched raises an alert.
    rejected_share: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05
    outbox_max_age_minutes: PositiveFloat = 30.0
    # A partner not successfully synced for this long (twice-daily default: a missed run and then some).
    partner_stale_hours: PositiveFloat = 26.0

    @property
    def configured(self) -> bool:
        return any((self.slack_webhook_url_env, self.slack_webhook_url_file, self.webhook_url_env, self.webhook_url_file))


class DicomDestination(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A C-MOVE destination: the AE title maps to where we open the C-STORE association."""

    host: str
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]


class DicomConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The DICOM Query/Retrieve node (PS3.4 Annex C)."""

    ae_title: Annotated[str, msgspec.Meta(min_length=1, max_length=16)] = "IMAGING_SYNC"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 11112
    # Empty: any calling AE may associate; otherwise only these.
    allowed_calling_aets: list[str] = []
    # C-MOVE destinations by AE title; an unknown destination is refused (A801).
    destinations: dict[str, DicomDestination] = {}
    max_associations: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    # How many objects are fetched from S3 at once during a C-MOVE/C-GET.
    fetch_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    network_timeout_seconds: PositiveFloat = 60.0
    # Where C-MOVE/C-GET spool each fetched object (at most fetch_concurrency files per retrieve
    # at once, deleted once sent); None: the system temporary directory.
    spool_dir: str | None = None
    # Largest PDU we receive and send (PS3.8 9.3.1; 0 = unlimited). 16 KiB is the common default;
    # larger PDUs mean fewer round trips for big files.
    max_pdu_bytes: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 262_144

    def __post_init__(self) -> None:
        if self.max_pdu_bytes and self.max_pdu_bytes < 4096:
            raise ValueError("max_pdu_bytes: 0 (unlimited) or at least 4096")
        if self.spool_dir is not None and not Path(self.spool_dir).is_dir():
            raise ValueError(f"spool_dir: {self.spool_dir!r} is not a directory")
        for title in [self.ae_title, *self.allowed_calling_aets, *self.destinations]:
            if not title.strip() or len(title) > 16 or "\\" in title or any(ord(c) < 32 for c in title):
                raise ValueError(f"ae_title: {title!r} is not a valid AE title (1-16 characters, no backslash or control characters)")


class JobsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Scheduled jobs (the ``jobs`` package: Celery workers and beat, or the embedded scheduler).

    A broker URL with a password is a secret: name an environment variable in
    ``broker_url_env`` (it overrides ``broker_url``). The result backend
    defaults to the broker (``rpc://`` for an AMQP broker).
    """

    broker_url: str = "redis://127.0.0.1:6379/0"
    broker_url_env: str | None = None
    result_backend: str | None = None
    # IANA zone the crontabs are read in (e.g. "Asia/Seoul").
    timezone: str = "UTC"
    # Each enabled partner's sync, unless [partners.NAME] schedule overrides it: twice a day.
    default_schedule: str = "0 6,18 * * *"
    outbox_relay_seconds: PositiveFloat = 15.0
    alerts_check_seconds: PositiveFloat = 300.0
    # Sync runs (and their rejected items) older than this are pruned daily.
    prune_days: Annotated[int, msgspec.Meta(ge=1)] = 90
    # Redis/SQS: an unacknowledged task (its worker died) is delivered again after this long.
    visibility_timeout: PositiveFloat = 3600.0

    def __post_init__(self) -> None:
        _check_crontab("default_schedule", self.default_schedule)
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: {self.timezone!r} is not an IANA time zone (e.g. \"UTC\", \"Asia/Seoul\")") from None
        for name, url in (("broker_url", self.broker_url), ("result_backend", self.result_backend)):
            if url is not None and "://" not in url:
                raise ValueError(f"{name}: not a URL (e.g. redis://127.0.0.1:6379/0 or amqp://host:5672//)")

    def resolved_broker_url(self, environ: Mapping[str, str] | None = None) -> Secret:
        """The broker URL: from ``broker_url_env`` when set, else ``broker_url``."""
        environ = os.environ if environ is None else environ
        if self.broker_url_env:
            value = environ.get(self.broker_url_env, "").strip()
            if not value:
                raise ConfigError("jobs.broker_url_env", f"environment variable {self.broker_url_env} is not set")
            return Secret(value)
        return Secret(self.broker_url)

    def resolved_result_backend(self, environ: Mapping[str, str] | None = None) -> Secret:
        """The result backend: as configured, else the broker (``rpc://`` for AMQP brokers)."""
        if self.result_backend:
            return Secret(self.result_backend)
        broker = self.resolved_broker_url(environ)
        if broker.reveal().split("://", 1)[0].lower() in ("amqp", "amqps", "pyamqp"):
            return Secret("rpc://")
        return broker


def crontab_fields(expression: str) -> tuple[str, str, str, str, str]:
    """``"m h dom mon dow"`` as Celery's crontab arguments (minute, hour, day_of_week, day_of_month, month_of_year).

    One place for the field order; Celery's own crontab parser validates the fields.
    """
    parts = expression.split()
    if len(parts) != 5:
        raise ValueError(f"{expression!r} is not a crontab: want 5 fields \"minute hour day-of-month month day-of-week\", got {len(parts)}")
    minute, hour, day_of_month, month_of_year, day_of_week = parts
    return minute, hour, day_of_week, day_of_month, month_of_year


def _check_crontab(key: str, expression: str) -> None:
    from celery.schedules import crontab  # local: keep config import light

    try:
        crontab(*crontab_fields(expression))
    except Exception as exc:  # Celery's parser raises ValueError or its ParseException
        raise ValueError(f"{key}: {expression!r} is not a valid crontab: {exc}") from None


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    database: DatabaseConfig = DatabaseConfig()
    logging: LoggingConfig = LoggingConfig()
    sync: SyncConfig = SyncConfig()
    storage: StorageConfig = StorageConfig()
    api: ApiConfig = ApiConfig()
    outbox: OutboxConfig = OutboxConfig()
    alerts: AlertsConfig = AlertsConfig()
    jobs: JobsConfig = JobsConfig()
    dicom: DicomConfig = DicomConfig()
    partners: dict[str, PartnerConfig] = {}
    # Where the settings came from, for `imaging-sync doctor` and error messages.
    source: str = "embedded defaults"

    def partner(self, name: str) -> PartnerConfig:
        try:
            return self.partners[name]
        except KeyError:
            known = ", ".join(sorted(self.partners)) or "none configured"
            raise ConfigError(f"partners.{name}", f"no such partner (known: {known})") from None

    def priorities(self) -> dict[str, int]:
        return {name: p.priority for name, p in self.partners.items()}


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file and environment overrides; raise ConfigError naming the key."""
    environ = os.environ if environ is None else environ
    file_path = Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    explicit = path is not None or CONFIG_ENV in environ
    raw: dict[str, Any] = {}
    source = "embedded defaults"
    if file_path.is_file():
        try:
            raw = tomllib.loads(file_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(file_path), f"not valid TOML: {exc}") from None
        source = str(file_path)
    elif explicit:
        raise ConfigError(CONFIG_ENV, f"config file {file_path} does not exist")
    _refuse_secrets(raw, "")
    env_keys = _apply_env_overrides(raw, environ)
    if env_keys:
        source += f" + environment ({len(env_keys)} overrides)"
    settings = _convert(raw, source)
    _check_database_url(settings, env_keys)
    _check_jobs_urls(settings, env_keys)
    _check_partner_buckets(settings)
    for partner in settings.partners.values():
        resolve_api_key(partner, environ)
    return settings


def read_secret(key: str, env_name: str | None, file_name: str | None, environ: Mapping[str, str] | None = None) -> Secret | None:
    """The one way a secret is read: from the environment variable or the file the config names.

    ``key`` is the config key without its ``_env``/``_file`` suffix, so an
    error names exactly what to fix (``partners.b.api_key_env``). None when
    the config names neither.
    """
    environ = os.environ if environ is None else environ
    if env_name:
        value = environ.get(env_name, "").strip()
        if not value:
            raise ConfigError(f"{key}_env", f"environment variable {env_name} is not set")
        return Secret(value)
    if file_name:
        try:
            value = Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key}_file", f"cannot read {file_name}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{key}_file", f"{file_name} is empty")
        return Secret(value)
    return None


def resolve_api_key(partner: PartnerConfig, environ: Mapping[str, str] | None = None) -> Secret:
    """The partner's key, from its environment variable or file; fails naming the key."""
    secret = read_secret(f"partners.{partner.name}.api_key", partner.api_key_env, partner.api_key_file, environ)
    if secret is None:
        raise ConfigError(f"partners.{partner.name}", "no API key source: set api_key_env or api_key_file")
    return secret


def database_password(config: DatabaseConfig, environ: Mapping[str, str] | None = None) -> Secret | None:
    return read_secret("database.password", config.password_env, config.password_file, environ)


def _refuse_secrets(node: Any, path: str) -> None:
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        where = f"{path}.{key}" if path else key
        if key.lower() in _SECRET_KEYS:
            raise ConfigError(where, "secrets must not be written in the config file; name an environment variable (…_env) or a file (…_file) instead")
        _refuse_secrets(value, where)


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> set[str]:
    """Set ``IMAGING_SYNC__A__B=v`` as raw[a][b] = v, matching existing keys loosely."""
    applied: set[str] = set()
    for env_name, value in sorted(environ.items()):
        if not env_name.startswith(ENV_PREFIX):
            continue
        parts = [p for p in env_name[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        node = raw
        for part in parts[:-1]:
            key = _match_key(node, part)
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(env_name, f"{key} is not a table, cannot set a key below it")
        node[_match_key(node, parts[-1])] = value
        applied.add(".".join(p.lower() for p in parts))
    return applied


def _match_key(node: dict[str, Any], env_part: str) -> str:
    wanted = env_part.lower().replace("-", "_")
    for key in node:
        if key.lower().replace("-", "_") == wanted:
            return key
    return env_part.lower()


def _convert(raw: dict[str, Any], source: str) -> Settings:
    partners_raw = raw.pop("partners", {})
    if not isinstance(partners_raw, dict):
        raise ConfigError("partners", "must be a table of [partners.NAME] sections")
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise _config_error(exc, "") from None
    partners: dict[str, PartnerConfig] = {}
    for name, body in partners_raw.items():
        if not _PARTNER_NAME.match(name):
            raise ConfigError(f"partners.{name}", "partner names are lower-case letters, digits, '-' and '_' (at most 63)")
        if not isinstance(body, dict):
            raise ConfigError(f"partners.{name}", "must be a table")
        try:
            partners[name] = msgspec.convert({**body, "name": name}, PartnerConfig, strict=False)
        except msgspec.ValidationError as exc:
            raise _config_error(exc, f"partners.{name}") from None
    return msgspec.structs.replace(settings, partners=partners, source=source)


def _config_error(exc: msgspec.ValidationError, prefix: str) -> ConfigError:
    """Turn msgspec's "reason - at `$.a.b`" into ConfigError("prefix.a.b", reason)."""
    message = str(exc)
    reason, _, where = message.rpartition(" - at `")
    if not reason:
        reason, where = message, "$`"
    path = where.rstrip("`").removeprefix("$").lstrip(".")
    # A __post_init__ message "field: reason" names the field itself.
    field, sep, rest = reason.partition(": ")
    if sep and re.fullmatch(r"[a-z_./ ]+", field) and " " not in field.strip():
        path, reason = ".".join(p for p in (path, field) if p), rest
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", reason)
    if unknown:
        path, reason = ".".join(p for p in (path, unknown.group(1)) if p), "unknown key"
    return ConfigError(".".join(p for p in (prefix, path) if p) or "(root)", reason)


def _check_partner_buckets(settings: Settings) -> None:
    """With a bucket registry, every bucket a partner may point at must be in it."""
    registry = settings.storage.buckets
    if not registry:
        return
    for partner in settings.partners.values():
        missing = sorted(partner.buckets - set(registry))
        if missing:
            raise ConfigError(f"partners.{partner.name}.allowed_buckets", f"bucket {missing[0]!r} is not in [storage.buckets]")


def _check_database_url(settings: Settings, env_keys: set[str]) -> None:
    from sqlalchemy.engine import make_url  # local: keep config import light
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(settings.database.url)
    except ArgumentError as exc:
        raise ConfigError("database.url", f"not a database URL: {exc}") from None
    if url.password and "database.url" not in env_keys:
        raise ConfigError("database.url", "contains a password; use database.password_env or database.password_file")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError("database.url", f"unsupported database {url.get_backend_name()!r} (sqlite or postgresql)")


def _check_jobs_urls(settings: Settings, env_keys: set[str]) -> None:
    """A broker or result-backend URL carrying a password must not be written in the file."""
    for key in ("broker_url", "result_backend"):
        url = getattr(settings.jobs, key)
        if not url or f"jobs.{key}" in env_keys:
            continue
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            how = ("name an environment variable holding the URL in jobs.broker_url_env" if key == "broker_url"
                   else "leave it unset to use the broker (jobs.broker_url_env), or set IMAGING_SYNC__JOBS__RESULT_BACKEND")
            raise ConfigError(f"jobs.{key}", f"contains a password; {how}")
