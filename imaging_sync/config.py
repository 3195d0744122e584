"""Typed configuration, read once at start.

One TOML file (``IMAGING_SYNC_CONFIG``, default ``./imaging-sync.toml``),
overridden by environment variables named ``IMAGING_SYNC__SECTION__KEY``
(double underscores separate the path; ``IMAGING_SYNC__PARTNERS__B__PAGE_SIZE=50``;
a list key takes a JSON array or comma-separated values). With no file at all
the service runs on embedded defaults: a SQLite database under ``./var/`` and
no partners.

Every key is declared once, here, with its description (``doc``): the
commented example config (``docs/imaging-sync.example.toml``) is generated
from these declarations (:mod:`imaging_sync.config_example`), so it cannot
miss a key.

Secrets (partner API keys, database passwords, cloud credentials, webhook
URLs) are never read from the TOML: the config names an environment variable
(``…_env``) or a file (``…_file``) that holds them, and every one of them is
read at start, so all missing secrets fail together before any work, each
named by its config key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
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
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def doc(description: str, *, example: Any = None, **constraints: Any) -> msgspec.Meta:
    """A config key's description (and an example value), shown in the generated example config."""
    return msgspec.Meta(description=description, examples=[example] if example is not None else None, **constraints)


EnvName = str | None  # the name of an environment variable holding a secret
FileName = str | None  # the path of a file holding a secret


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

    max_attempts: Annotated[int, doc("Attempts per request, the first included.", ge=1, le=50)] = 6
    initial_backoff: Annotated[float, doc("Seconds before the first retry; doubled each time, with jitter.", gt=0)] = 0.5
    max_backoff: Annotated[float, doc("Longest wait between two attempts, in seconds.", gt=0)] = 30.0
    max_total_seconds: Annotated[float, doc("Give up on a request after this many seconds of retrying.", gt=0)] = 300.0
    max_retry_after: Annotated[float, doc("A Retry-After longer than this many seconds is not waited out: the run fails instead.", gt=0)] = 120.0


class PartnerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One partner service ([partners.NAME]): where it is, how to authenticate, how to map its vocabulary."""

    base_url: Annotated[str, doc("The partner's export API; requests go to {base_url}/v1/...", example="https://export.partner-b.example/api")]
    name: Annotated[str, doc("Set from the section name [partners.NAME]; not written in the file.")] = ""
    adapter: Annotated[Literal["reference-v1"], doc("Which export contract the partner serves (docs/partner-api.md).")] = "reference-v1"
    enabled: Annotated[bool, doc("A disabled partner is kept (its data stays) but never synced.")] = True
    api_key_env: Annotated[EnvName, doc("Environment variable holding the partner's API key (or api_key_file).", example="PARTNER_B_API_KEY")] = None
    api_key_file: Annotated[FileName, doc("File holding the partner's API key (or api_key_env).", example="/run/secrets/partner-b-api-key")] = None
    auth_header: Annotated[str, doc("Header the key is sent in, e.g. \"Authorization\" with auth_scheme = \"Bearer\".")] = "X-API-Key"
    auth_scheme: Annotated[str | None, doc("Written before the key in auth_header (\"Bearer\" sends \"Bearer <key>\").", example="Bearer")] = None
    default_bucket: Annotated[str | None, doc("Bucket of locations the partner gives as a bare key (no s3:// bucket).", example="partner-b-dicom")] = None
    allowed_buckets: Annotated[list[str], doc("Other buckets this partner's locations may name; any other bucket is rejected.", example=["partner-b-archive"])] = []
    page_size: Annotated[int, doc("Studies asked for per listing page.", ge=1, le=500)] = 200
    overlap_seconds: Annotated[float, doc("Re-read this many seconds before the bookmark, for the partner's late commits.", ge=0)] = 600.0
    connect_timeout: Annotated[float, doc("Seconds to open a connection to the partner.", gt=0)] = 5.0
    read_timeout: Annotated[float, doc("Seconds to wait for a response from the partner.", gt=0)] = 30.0
    retry: Annotated[RetryPolicy, doc("How the partner's calls are retried.")] = RetryPolicy()
    priority: Annotated[int, doc("Higher wins: an entity several partners have shows its highest-priority partner's values, and its files are read from that partner first.")] = 0
    passthrough_dicom_terms: Annotated[bool, doc("Accept values that already are DICOM defined terms (\"CT\", \"M\") when the vocabulary table has no entry for them.")] = True
    vocabulary: Annotated[
        dict[str, dict[str, str]],
        doc("Per coded field (sex, modality, body_part_examined): the partner's value -> the DICOM value.",
            example={"sex": {"male": "M", "female": "F", "other": "O"}, "modality": {"Computed Tomography": "CT", "MRI": "MR"}}),
    ] = {}
    schedule: Annotated[str | None, doc("When the scheduled jobs sync this partner (crontab, in jobs.timezone); unset: jobs.default_schedule.", example="30 2 * * *")] = None

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
    """The index database: SQLite for one machine, PostgreSQL for production."""

    url: Annotated[str, doc("SQLAlchemy URL, without a password: sqlite:///path/to/file.db or postgresql+psycopg://user@host:5432/db.",
                            example="postgresql+psycopg://imaging_sync@db.internal:5432/imaging_sync")] = DEFAULT_DATABASE_URL
    password_env: Annotated[EnvName, doc("Environment variable holding the database password (or password_file).", example="IMAGING_SYNC_DB_PASSWORD")] = None
    password_file: Annotated[FileName, doc("File holding the database password (or password_env).", example="/run/secrets/db-password")] = None
    runtime_role: Annotated[
        str | None,
        doc("PostgreSQL: the role the services connect as (API, DICOM node, workers, beat, every command but `db upgrade`), on database.url's "
            "host and database; database.url then names the owning role, which only `db upgrade` uses, and `db upgrade` creates or checks "
            "this role and grants it only what the services use (imaging_sync/db/grants.py: INSERT and SELECT on the audit log). "
            "Unset (or empty): every process connects as database.url's role, which owns the tables and could rewrite the audit log.",
            example="imaging_sync_app"),
    ] = None
    runtime_password_env: Annotated[EnvName, doc("Environment variable holding runtime_role's password (or runtime_password_file); with runtime_role "
                                                 "set, password_env/password_file is the owner's, read only by `db upgrade`.",
                                                 example="IMAGING_SYNC_DB_RUNTIME_PASSWORD")] = None
    runtime_password_file: Annotated[FileName, doc("File holding runtime_role's password (or runtime_password_env).", example="/run/secrets/db-runtime-password")] = None
    pool_size: Annotated[int, doc("Connections a process may hold at once, kept open once opened (no overflow).", ge=1, le=200)] = 10
    pool_timeout: Annotated[float, doc("Seconds a request waits for a free connection before failing (the API answers 503).", gt=0, le=300)] = 30.0
    echo: Annotated[bool, doc("Log every SQL statement (debugging only: statements carry patient data).")] = False

    def __post_init__(self) -> None:
        for name in ("password", "runtime_password"):
            if getattr(self, f"{name}_env") and getattr(self, f"{name}_file"):
                raise ValueError(f"{name}_env and {name}_file: set only one")
        if not self.runtime_role:  # unset, or emptied by IMAGING_SYNC__DATABASE__RUNTIME_ROLE=""
            if self.runtime_password_env or self.runtime_password_file:
                raise ValueError("runtime_role: runtime_password_env/runtime_password_file is set, but no runtime_role")
            return
        if not _ROLE_NAME.match(self.runtime_role):
            raise ValueError("runtime_role: a role name is lower-case letters, digits and '_', starting with a letter or '_' (at most 63)")
        if self.url.startswith("sqlite"):
            raise ValueError("runtime_role: only for PostgreSQL (an SQLite file has no roles)")
        owner = urlsplit(self.url).username if "://" in self.url else None
        if owner == self.runtime_role:
            raise ValueError("runtime_role: must differ from the owning role named in database.url")


class LoggingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Logs go to stderr; they never carry patient names or IDs."""

    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], doc("DEBUG, INFO, WARNING or ERROR.")] = "INFO"
    format: Annotated[Literal["text", "json"], doc("text, or json: JSON lines with the run id and partner on every line of a run.")] = "text"


class SyncConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The sync engine."""

    max_token_restarts: Annotated[int, doc("How often a page token may expire (410 Gone) in one run before the run fails.", ge=0)] = 5
    max_page_attempts: Annotated[int, doc("How often a page transaction is retried after a deadlock or serialization failure.", ge=1)] = 3


class BucketConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One S3 bucket the service may sign or read ([storage.buckets.NAME]), and how to reach it.

    Different buckets may live in different accounts and regions; buckets with
    the same settings share one boto3 client.
    """

    region: Annotated[str, doc("The bucket's AWS region.", example="ap-northeast-2")] = "us-east-1"
    endpoint_url: Annotated[str | None, doc("MinIO, moto or another S3-compatible store; unset for AWS itself.", example="https://minio.partner-c.example")] = None
    auth: Annotated[
        Literal["default", "profile", "keys", "assume_role"],
        doc("default: the boto3 credential chain; profile: a named profile; keys: access keys from …_env/…_file; assume_role: STS AssumeRole of role_arn."),
    ] = "default"
    profile: Annotated[str | None, doc("The AWS profile (auth = \"profile\", or the source credentials of assume_role).", example="partner-b")] = None
    access_key_id_env: Annotated[EnvName, doc("auth = \"keys\": environment variable holding the access key id (or access_key_id_file).", example="PARTNER_B_S3_ACCESS_KEY_ID")] = None
    access_key_id_file: Annotated[FileName, doc("auth = \"keys\": file holding the access key id.", example="/run/secrets/partner-b-s3-access-key-id")] = None
    secret_access_key_env: Annotated[EnvName, doc("auth = \"keys\": environment variable holding the secret access key (or secret_access_key_file).", example="PARTNER_B_S3_SECRET_ACCESS_KEY")] = None
    secret_access_key_file: Annotated[FileName, doc("auth = \"keys\": file holding the secret access key.", example="/run/secrets/partner-b-s3-secret-access-key")] = None
    session_token_env: Annotated[EnvName, doc("auth = \"keys\": environment variable holding a session token, for temporary keys.", example="PARTNER_B_S3_SESSION_TOKEN")] = None
    session_token_file: Annotated[FileName, doc("auth = \"keys\": file holding a session token.", example="/run/secrets/partner-b-s3-session-token")] = None
    role_arn: Annotated[str | None, doc("auth = \"assume_role\": the role to assume.", example="arn:aws:iam::111122223333:role/imaging-sync-read")] = None
    external_id_env: Annotated[EnvName, doc("auth = \"assume_role\": environment variable holding the external id the role requires.", example="PARTNER_B_EXTERNAL_ID")] = None
    external_id_file: Annotated[FileName, doc("auth = \"assume_role\": file holding the external id.", example="/run/secrets/partner-b-external-id")] = None
    role_session_name: Annotated[str, doc("auth = \"assume_role\": the session name (shows in the partner's CloudTrail).")] = "imaging-sync"
    addressing_style: Annotated[Literal["auto", "path", "virtual"], doc("auto, path (most S3-compatible stores) or virtual (host-style).")] = "auto"

    def __post_init__(self) -> None:
        for name in ("access_key_id", "secret_access_key", "session_token", "external_id"):
            if getattr(self, f"{name}_env") and getattr(self, f"{name}_file"):
                raise ValueError(f"{name}_env and {name}_file: set only one")
        if self.auth == "profile" and not self.profile:
            raise ValueError("profile: required when auth = \"profile\"")
        if self.auth == "keys" and not ((self.access_key_id_env or self.access_key_id_file) and (self.secret_access_key_env or self.secret_access_key_file)):
            raise ValueError("access_key_id_env: auth = \"keys\" needs access_key_id_env (or _file) and secret_access_key_env (or _file)")
        if self.auth == "assume_role" and not self.role_arn:
            raise ValueError("role_arn: required when auth = \"assume_role\"")
        if self.endpoint_url is not None and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError("endpoint_url: must start with http:// or https://")


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The bucket registry: only these buckets are ever signed or read."""

    presign_default_seconds: Annotated[int, doc("Lifetime of a presigned URL when the client asks for none.", ge=1)] = 300
    presign_max_seconds: Annotated[int, doc("Longest lifetime a client may ask for (an assume_role bucket's URLs end with the role's session if sooner).", ge=1, le=7 * 24 * 3600)] = 3600
    embedded: Annotated[bool, doc("Start an S3 endpoint on 127.0.0.1 (moto's server) for local use: [storage.buckets] are created in it.")] = False
    embedded_port: Annotated[int, doc("The embedded S3's port (0: any free port).", ge=0, le=65535)] = 0
    buckets: Annotated[
        dict[str, BucketConfig],
        doc("The buckets, by name.", example={
            "partner-b-dicom": {"region": "ap-northeast-2", "auth": "assume_role", "role_arn": "arn:aws:iam::111122223333:role/imaging-sync-read", "external_id_env": "PARTNER_B_EXTERNAL_ID"},
            "partner-b-archive": {"region": "ap-northeast-2", "auth": "assume_role", "role_arn": "arn:aws:iam::111122223333:role/imaging-sync-read", "external_id_env": "PARTNER_B_EXTERNAL_ID"},
            "partner-c-images": {"region": "eu-west-1", "endpoint_url": "https://minio.partner-c.example", "auth": "keys",
                                 "access_key_id_env": "PARTNER_C_S3_ACCESS_KEY_ID", "secret_access_key_file": "/run/secrets/partner-c-s3-secret-access-key", "addressing_style": "path"},
        }),
    ] = {}

    def __post_init__(self) -> None:
        if self.presign_default_seconds > self.presign_max_seconds:
            raise ValueError("presign_default_seconds: larger than presign_max_seconds")
        for name in self.buckets:
            if not _BUCKET_NAME.match(name):
                raise ValueError(f"buckets: {name!r} is not a valid S3 bucket name")


_ORIGIN = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?")


class ApiConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The REST API (`imaging-sync serve api`)."""

    host: Annotated[str, doc("Address to listen on (0.0.0.0: every interface).", example="0.0.0.0")] = "127.0.0.1"
    port: Annotated[int, doc("Port to listen on.", ge=0, le=65535)] = 8080
    workers: Annotated[int, doc("uvicorn worker processes (about two per core).", ge=1, le=64)] = 1
    keep_alive_seconds: Annotated[
        float,
        doc("Seconds an idle HTTP connection stays open for the client's next request. Longer than the idle timeout of a load balancer or "
            "proxy in front (60 s on AWS's): a server that closes an idle connection first may close it just as the proxy sends the next "
            "request on it, which then fails (a 502). uvicorn's own default, 5 s, does that to busy clients too.",
            ge=1, le=3600),
    ] = 75.0
    default_page_size: Annotated[int, doc("Items per page when a client asks for no limit.", ge=1, le=1000)] = 50
    max_page_size: Annotated[int, doc("Most items per page; a larger limit gets pages of this size.", ge=1, le=1000)] = 200
    trusted_proxies: Annotated[list[str], doc("Client addresses are taken from X-Forwarded-For only when the peer is one of these (addresses or networks).", example=["10.0.0.10"])] = []
    cors_allowed_origins: Annotated[
        list[str],
        doc("Web pages on these origins may call the API from the browser (CORS): scheme://host[:port], as browsers send them. None by default: "
            "a server calling the API needs no CORS, and each origin allowed is a decision.", example=["https://platform.example", "http://localhost:5173"]),
    ] = []
    sync_launcher: Annotated[
        Literal["thread", "queue"],
        doc("Where POST /partners/{name}/sync does the work: \"thread\" in the API process (one process, the demo), \"queue\" on the Celery workers through [jobs] broker."),
    ] = "thread"

    def __post_init__(self) -> None:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size: larger than max_page_size")
        for origin in self.cors_allowed_origins:
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"cors_allowed_origins: {origin!r} is not an origin as browsers send it (scheme://host[:port] in lower case, no path, no wildcard)")


class DicomwebConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """DICOMweb (PS3.18) under /dicomweb on the REST API's address, for web viewers (OHIF): QIDO-RS, WADO-RS, WADO-URI."""

    max_results: Annotated[int, doc("Most matches one QIDO-RS answer carries, whatever its limit asks; a cut answer says so in its Warning header "
                                     "and the client pages on with offset.", ge=1, le=10000)] = 1000
    read_headers_after_sync: Annotated[bool, doc("After each sync of a partner, read the headers of its new instances in the background (ranged GETs, "
                                                 "kept in the database), so a viewer's first request for them costs no S3 read.")] = True
    header_read_concurrency: Annotated[int, doc("Headers read at once, by the background reader and by one metadata request.", ge=1, le=64)] = 8
    viewer_dir: Annotated[str | None, doc("An OHIF Viewer installed by `imaging-sync viewer install` (default ./var/ohif), served at /viewer/ on the API's "
                                          "address with its DICOMweb data source pointed at this server. None: no viewer served.", example="var/ohif")] = None
    viewer_key_env: Annotated[EnvName, doc("Environment variable holding an API key (viewer role) that the served viewer sends with its requests "
                                           "(or viewer_key_file). Anyone who can open /viewer/ then reads with it: for a demo on 127.0.0.1, not for a "
                                           "shared server (there, sign users in with OHIF's OpenID Connect, or a proxy adding the header).",
                                           example="IMAGING_SYNC_VIEWER_KEY")] = None
    viewer_key_file: Annotated[FileName, doc("File holding that API key.", example="/run/secrets/viewer-key")] = None
    redirect_objects: Annotated[bool, doc("WADO-URI answers with a 307 to a short-lived presigned URL of the partner's bucket instead of streaming the "
                                          "file through this server. The bucket must then allow the viewer's origin (S3 CORS): docs/dicomweb.md.")] = False


class WebhookConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where outbox events are POSTed: JSON, HMAC-SHA256 signed when a secret is set (docs/webhooks.md)."""

    url: Annotated[str | None, doc("The receiver's URL, when it carries no secret (one with a token in it goes in url_env or url_file).",
                                   example="https://platform.internal/hooks/imaging-sync")] = None
    url_env: Annotated[EnvName, doc("Environment variable holding the receiver's URL (or url, url_file).", example="IMAGING_SYNC_WEBHOOK_URL")] = None
    url_file: Annotated[FileName, doc("File holding the receiver's URL.", example="/run/secrets/webhook-url")] = None
    secret_env: Annotated[EnvName, doc("Environment variable holding the HMAC-SHA256 signing secret (or secret_file).", example="IMAGING_SYNC_WEBHOOK_SECRET")] = None
    secret_file: Annotated[FileName, doc("File holding the signing secret.", example="/run/secrets/webhook-secret")] = None
    timeout_seconds: Annotated[float, doc("Seconds to wait for the receiver's answer.", gt=0)] = 10.0

    def __post_init__(self) -> None:
        given = [name for name in ("url", "url_env", "url_file") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("url: set exactly one of url, url_env and url_file")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("url: must start with http:// or https://")
        if self.secret_env and self.secret_file:
            raise ValueError("secret_env and secret_file: set only one")


class OutboxConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The transactional outbox: change events relayed downstream, at least once.

    With no sink (no [outbox.webhook] and no celery_task) the sync writes no
    events: there is nobody to tell. A receiver added later loads the current
    state through the REST API, then follows the events.
    """

    batch_size: Annotated[int, doc("Events a relay claims and delivers at once.", ge=1, le=1000)] = 100
    lease_seconds: Annotated[float, doc("A claimed event not settled within this many seconds is claimed again by any relay.", gt=0)] = 60.0
    max_attempts: Annotated[int, doc("Deliveries tried before an event is marked failed (`imaging-sync outbox retry-failed` re-queues it).", ge=1, le=100)] = 10
    initial_backoff: Annotated[float, doc("Seconds before the first redelivery; doubled each time, with jitter.", gt=0)] = 2.0
    max_backoff: Annotated[float, doc("Longest wait between two deliveries of an event, in seconds.", gt=0)] = 900.0
    poll_interval: Annotated[float, doc("Seconds a continuously running relay sleeps when nothing is open.", gt=0)] = 1.0
    keep_done_days: Annotated[int, doc("Delivered events are kept this many days (the prune task deletes older ones).", ge=1)] = 14
    webhook: Annotated[WebhookConfig | None, doc("Deliver to this HTTP receiver.", example={"url_env": "IMAGING_SYNC_WEBHOOK_URL", "secret_env": "IMAGING_SYNC_WEBHOOK_SECRET"})] = None
    celery_task: Annotated[str | None, doc("Also hand each event to this Celery task (in-process consumers); needs the broker.", example="platform.tasks.study_changed")] = None

    @property
    def has_sink(self) -> bool:
        """Whether anybody is told about changes; without a sink the sync writes no events."""
        return self.webhook is not None or bool(self.celery_task)


class AlertsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where alerts go and when they fire. Webhook URLs carry their own secret: env or file only."""

    slack_webhook_url_env: Annotated[EnvName, doc("Environment variable holding a Slack-compatible incoming-webhook URL (or …_file).", example="IMAGING_SYNC_SLACK_WEBHOOK")] = None
    slack_webhook_url_file: Annotated[FileName, doc("File holding the Slack-compatible webhook URL.", example="/run/secrets/slack-webhook")] = None
    webhook_url_env: Annotated[EnvName, doc("Environment variable holding a generic JSON webhook URL (or …_file).", example="IMAGING_SYNC_ALERT_WEBHOOK")] = None
    webhook_url_file: Annotated[FileName, doc("File holding the generic JSON webhook URL.", example="/run/secrets/alert-webhook")] = None
    timeout_seconds: Annotated[float, doc("Seconds to wait for an alert webhook's answer.", gt=0)] = 10.0
    rejected_share: Annotated[float, doc("A run whose rejected items exceed this share of what it fetched raises an alert.", ge=0, le=1)] = 0.05
    outbox_max_age_minutes: Annotated[float, doc("An undelivered outbox event older than this raises an alert (only with an outbox sink).", gt=0)] = 30.0
    partner_stale_hours: Annotated[float, doc("A partner not synced successfully for this long raises an alert (twice-daily default: a missed run and then some).", gt=0)] = 26.0

    @property
    def configured(self) -> bool:
        return any((self.slack_webhook_url_env, self.slack_webhook_url_file, self.webhook_url_env, self.webhook_url_file))


class DicomDestination(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A C-MOVE destination ([dicom.destinations.AE_TITLE]): where we open the C-STORE association."""

    host: Annotated[str, doc("The destination's address.", example="pacs.hospital.example")]
    port: Annotated[int, doc("The destination's port.", example=104, ge=1, le=65535)]


DicomOperation = Literal["echo", "find", "move", "get"]
DICOM_OPERATIONS: tuple[DicomOperation, ...] = ("echo", "find", "move", "get")


def ae_title_key(title: str) -> str:
    """How calling and destination AE titles are compared: without padding, ignoring case.

    Orthanc's default (``StrictAetComparison = false``), and what lets an
    environment override name a peer (``IMAGING_SYNC__DICOM__PEERS__PACS__…``
    creates the key ``pacs``). An AE title is no credential: the addresses a
    peer may come from are what tie it to its hosts.
    """
    return title.strip().upper()


class DicomPeer(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A calling AE the node serves ([dicom.peers.AE_TITLE]): the operations it may use and where it may come from.

    No other calling AE is served: its association is rejected (A-ASSOCIATE-RJ,
    calling AE title not recognised) and the refusal audited.
    """

    operations: Annotated[
        list[DicomOperation],
        doc("What this AE may ask: echo (C-ECHO), find (C-FIND), move (C-MOVE, to [dicom.destinations] only), get (C-GET: files go "
            "to the caller itself, so grant it only to AEs that may hold the images). Any other request is refused (0124, not authorised) and audited.",
            example=["echo", "find", "move"]),
    ]
    addresses: Annotated[
        list[str],
        doc("IP addresses or networks (CIDR) this AE may associate from; empty: any address. From anywhere else it is rejected like an "
            "unknown AE. Host names are not accepted (an ACL must not depend on DNS).", example=["10.1.2.3", "10.9.0.0/16"]),
    ] = []

    def __post_init__(self) -> None:
        if not self.operations:
            raise ValueError("operations: list at least one of " + ", ".join(DICOM_OPERATIONS))
        for address in self.addresses:
            try:
                ipaddress.ip_network(address.strip(), strict=False)
            except ValueError:
                raise ValueError(f"addresses: {address!r} is not an IP address or network (such as 10.1.2.3 or 10.9.0.0/16)") from None


class DicomConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The DICOM Query/Retrieve node (PS3.4 Annex C), `imaging-sync serve dicom`.

    Deny by default: only the calling AEs listed in ``[dicom.peers]`` are
    served, each with its own operations and addresses; the limits below bound
    what any one peer, listed or not, can make the node hold.
    """

    ae_title: Annotated[str, doc("The node's own AE title.", min_length=1, max_length=16)] = "IMAGING_SYNC"
    host: Annotated[str, doc("Address to listen on (0.0.0.0: every interface).", example="0.0.0.0")] = "127.0.0.1"
    port: Annotated[int, doc("Port to listen on.", ge=0, le=65535)] = 11112
    peers: Annotated[
        dict[str, DicomPeer],
        doc("The calling AEs served, by AE title (compared ignoring case); every other caller is rejected at association and audited. "
            "Empty: the node serves nobody.",
            example={"HOSPITAL_PACS": {"operations": ["echo", "find", "move"], "addresses": ["10.1.2.3"]},
                     "RESEARCH_WS": {"operations": ["echo", "find", "get"], "addresses": ["10.9.0.0/16"]},
                     "ISYNC_DOCTOR": {"operations": ["echo"], "addresses": ["127.0.0.1"]}}),
    ] = {}
    destinations: Annotated[
        dict[str, DicomDestination],
        doc("C-MOVE destinations by AE title (compared ignoring case); any other destination is refused (A801).",
            example={"HOSPITAL_PACS": {"host": "pacs.hospital.example", "port": 104}}),
    ] = {}
    max_associations: Annotated[int, doc("Associations served at once, all peers together; one more is rejected (A-ASSOCIATE-RJ, local limit exceeded).", ge=1, le=1000)] = 32
    max_associations_per_peer: Annotated[
        int, doc("Associations one calling AE may hold at once; one more is rejected like the total limit, so one peer cannot lock the others out.", ge=1, le=1000)
    ] = 8
    idle_timeout_seconds: Annotated[
        float,
        doc("An association on which the peer sends nothing for this long between requests is aborted; it is also the longest a request "
            "may take to arrive in full (command and identifier), and a new connection's wait for its A-ASSOCIATE-RQ.", gt=0),
    ] = 20.0
    network_timeout_seconds: Annotated[
        float, doc("Seconds we wait for a peer's answer while we are the one asking: a C-STORE response during C-MOVE/C-GET, a destination accepting our association.", gt=0)
    ] = 60.0
    max_identifier_bytes: Annotated[
        int, doc("Largest request data set (identifier) accepted; a larger one is not kept in memory and the request is refused (A700/A701, out of resources).",
                 ge=4096, le=2**31 - 1)
    ] = 1_048_576
    max_values_per_key: Annotated[
        int, doc("Most values one matching key may list (a UID list, say); more are refused (A700/A701, out of resources) and audited.", ge=1, le=30_000)
    ] = 4096
    fetch_concurrency: Annotated[int, doc("Objects fetched from S3 at once during a C-MOVE or C-GET.", ge=1, le=64)] = 8
    pending_interval_seconds: Annotated[
        float,
        doc("A C-MOVE or C-GET reports its sub-operation counts in a pending response at most this often: the first at once, the final "
            "response always. Pending responses are optional (PS3.4 C.4.2.3.1) and each costs a message per file; 0: one after every file.",
            ge=0, le=60),
    ] = 1.0
    in_memory_object_bytes: Annotated[
        int,
        doc("A fetched object up to this size is held in memory until sent; a larger one is spooled to a file (spool_dir). "
            "At most fetch_concurrency objects per retrieve are held at once. 0: spool every object.", ge=0, le=67_108_864),
    ] = 1_048_576
    spool_dir: Annotated[
        str | None,
        doc("Where C-MOVE/C-GET spool each fetched object larger than in_memory_object_bytes, in a folder of the node's own (imaging-sync-dicom-PORT), at most fetch_concurrency files "
            "per retrieve at once, each deleted once sent or when the transfer ends; what a killed node left is swept at its next start. "
            "Unset: the system temporary directory.",
            example="/var/lib/imaging-sync/spool"),
    ] = None
    max_pdu_bytes: Annotated[
        int, doc("Largest PDU received and sent (PS3.8 9.3.1; 0 = unlimited). 16 KiB is the common default; larger PDUs mean fewer round trips for big files. "
                 "A peer sending a longer one is aborted.", ge=0, le=2**32 - 1)
    ] = 262_144

    def __post_init__(self) -> None:
        if self.max_pdu_bytes and self.max_pdu_bytes < 4096:
            raise ValueError("max_pdu_bytes: 0 (unlimited) or at least 4096")
        if self.spool_dir is not None and not Path(self.spool_dir).is_dir():
            raise ValueError(f"spool_dir: {self.spool_dir!r} is not a directory")
        for key, titles in (("ae_title", [self.ae_title]), ("peers", list(self.peers)), ("destinations", list(self.destinations))):
            seen: dict[str, str] = {}
            for title in titles:
                if not title.strip() or len(title) > 16 or "\\" in title or any(ord(c) < 32 for c in title):
                    raise ValueError(f"{key}: {title!r} is not a valid AE title (1-16 characters, no backslash or control characters)")
                if ae_title_key(title) in seen:
                    raise ValueError(f"{key}: {seen[ae_title_key(title)]!r} and {title!r} are the same AE title (AE titles are compared ignoring case)")
                seen[ae_title_key(title)] = title

    def peer(self, calling_ae: str) -> DicomPeer | None:
        """The ``[dicom.peers]`` entry of a calling AE title, or None: it is not served."""
        return _by_ae_title(self.peers, calling_ae)

    def destination(self, ae_title: str) -> DicomDestination | None:
        """The ``[dicom.destinations]`` entry of a C-MOVE destination, or None: refused (A801)."""
        return _by_ae_title(self.destinations, ae_title)

    def with_local_peers(self, operations: Mapping[str, Sequence[DicomOperation]]) -> DicomConfig:
        """These settings plus peers that may only come from this machine (loopback), for the demo and tests.

        ``{"FINDSCU": ["echo", "find"], "ISYNC_DOCTOR": ["echo"]}`` lets DCMTK's
        findscu (its default calling AE) and ``imaging-sync doctor`` in from
        127.0.0.1 and ::1. An AE the settings already list keeps its entry.
        """
        added = {title: DicomPeer(operations=list(ops), addresses=list(LOOPBACK)) for title, ops in operations.items() if self.peer(title) is None}
        return msgspec.structs.replace(self, peers={**self.peers, **added})


LOOPBACK = ("127.0.0.1", "::1")
_T = TypeVar("_T")


def _by_ae_title(entries: Mapping[str, _T], title: str) -> _T | None:
    wanted = ae_title_key(title)
    return next((value for key, value in entries.items() if ae_title_key(key) == wanted), None)


class JobsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Scheduled jobs: Celery workers and beat through a broker, or the in-process scheduler of `imaging-sync serve`.

    A broker URL with a password is a secret: name an environment variable in
    ``broker_url_env`` or a file in ``broker_url_file`` (either overrides
    ``broker_url``). The result backend defaults to the broker (``rpc://`` for
    an AMQP broker).
    """

    scheduler: Annotated[
        Literal["celery", "embedded"],
        doc("Who runs the schedules: \"celery\" (`imaging-sync beat` and workers, through the broker) or \"embedded\" (only the in-process scheduler of "
            "`imaging-sync serve`: one machine, no broker; `worker` and `beat` refuse to start). `imaging-sync serve` runs its in-process scheduler either way."),
    ] = "celery"
    broker_url: Annotated[str, doc("The Celery broker (Redis or RabbitMQ), when its URL carries no password (else broker_url_env).", example="amqp://rabbitmq.internal:5672//")] = "redis://127.0.0.1:6379/0"
    broker_url_env: Annotated[EnvName, doc("Environment variable holding the broker URL (overrides broker_url; or broker_url_file).", example="IMAGING_SYNC_BROKER_URL")] = None
    broker_url_file: Annotated[FileName, doc("File holding the broker URL (overrides broker_url).", example="/run/secrets/broker-url")] = None
    result_backend: Annotated[str | None, doc("Celery's result backend; unset: the broker (rpc:// for an AMQP broker).", example="redis://127.0.0.1:6379/1")] = None
    timezone: Annotated[str, doc("IANA time zone the crontabs are read in.", example="Asia/Seoul")] = "UTC"
    default_schedule: Annotated[str, doc("Each enabled partner's sync, unless [partners.NAME] schedule overrides it (crontab): twice a day.")] = "0 6,18 * * *"
    outbox_relay_seconds: Annotated[float, doc("How often the outbox relay runs (only with an outbox sink).", gt=0)] = 15.0
    alerts_check_seconds: Annotated[float, doc("How often the periodic alert checks run (outbox backlog, stale partners).", gt=0)] = 300.0
    prune_days: Annotated[int, doc("Sync runs (and their rejected items) older than this are pruned daily.", ge=1)] = 90
    visibility_timeout: Annotated[float, doc("Redis/SQS: an unacknowledged task (its worker died) is delivered again after this many seconds.", gt=0)] = 3600.0

    def __post_init__(self) -> None:
        _check_crontab("default_schedule", self.default_schedule)
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: {self.timezone!r} is not an IANA time zone (e.g. \"UTC\", \"Asia/Seoul\")") from None
        for name, url in (("broker_url", self.broker_url), ("result_backend", self.result_backend)):
            if url is not None and "://" not in url:
                raise ValueError(f"{name}: not a URL (e.g. redis://127.0.0.1:6379/0 or amqp://host:5672//)")
        if self.broker_url_env and self.broker_url_file:
            raise ValueError("broker_url_env and broker_url_file: set only one")

    def resolved_broker_url(self, environ: Mapping[str, str] | None = None) -> Secret:
        """The broker URL: from ``broker_url_env`` or ``broker_url_file`` when set, else ``broker_url``."""
        secret = read_secret("jobs.broker_url", self.broker_url_env, self.broker_url_file, environ)
        return secret if secret is not None else Secret(self.broker_url)

    @property
    def broker_url_key(self) -> str:
        """The config key the broker URL comes from, for messages about an unreachable broker."""
        return "jobs.broker_url_env" if self.broker_url_env else "jobs.broker_url_file" if self.broker_url_file else "jobs.broker_url"

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


class AtnaConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """[audit.atna]: send every audit entry as a DICOM audit message (PS3.15 A.5, IHE ATNA) to an Audit Record Repository over syslog.

    The relay (:mod:`imaging_sync.atna.relay`) follows the seals, so nothing
    is sent before it is final and nothing is lost while the repository is
    down; delivery is at least once. TLS material comes from files only.
    """

    host: Annotated[str, doc("The Audit Record Repository's (syslog receiver's) host name or address.", example="arr.hospital.internal")]
    port: Annotated[int | None, doc("Its port (1-65535); unset: 6514 for tls (RFC 5425), 514 for udp (RFC 5426), 601 for tcp.", example=6514)] = None
    transport: Annotated[Literal["udp", "tcp", "tls"], doc("\"tls\" (RFC 5425; the IHE ATNA profile's), \"tcp\" (RFC 6587 octet counting, a trusted network only) "
                                                           "or \"udp\" (RFC 5426: lossy by nature, a lost datagram is never sent again).")] = "tls"
    ca_file: Annotated[FileName, doc("PEM file of the CA(s) that signed the repository's certificate (tls); unset: the system's CAs.",
                                     example="/etc/imaging-sync/arr-ca.pem")] = None
    cert_file: Annotated[FileName, doc("PEM file of this node's client certificate, for repositories that authenticate nodes (tls; with key_file).",
                                       example="/run/secrets/atna-client.pem")] = None
    key_file: Annotated[FileName, doc("PEM file of the client certificate's private key (tls; with cert_file).", example="/run/secrets/atna-client.key")] = None
    server_name: Annotated[str | None, doc("The name the repository's certificate must carry (tls); unset: host.", example="arr.hospital.internal")] = None
    app_name: Annotated[str, doc("The syslog APP-NAME and the audit message's AuditSourceID and application UserID.", min_length=1, max_length=48)] = "imaging-sync"
    enterprise_site_id: Annotated[str | None, doc("AuditEnterpriseSiteID: the hospital or site the messages come from.", example="SEOUL-GENERAL")] = None
    interval_seconds: Annotated[float, doc("How often the relay runs (the beat task, the embedded scheduler).", gt=0)] = 30.0
    batch_size: Annotated[int, doc("Seals sent per delivery; the relay's position advances after each delivery is accepted.", ge=1, le=10_000)] = 50
    max_objects_per_message: Annotated[int, doc("Patients and studies one message carries; an entry that disclosed more is sent as several messages "
                                                "(receivers cap a message's size: rsyslog at 8 KiB unless $MaxMessageSize is raised).", ge=1, le=1000)] = 20
    timeout_seconds: Annotated[float, doc("Seconds to connect, send and have the receiver confirm a delivery.", gt=0)] = 10.0
    abandon_after_seconds: Annotated[float, doc("A streaming operation (C-FIND, C-MOVE, C-GET) with no recorded end after this long is sent as a serious "
                                                "failure (outcome 8): its process died.", gt=0)] = 3600.0
    initial_backoff: Annotated[float, doc("Seconds the relay waits after a failed delivery before it tries again; doubled each time.", gt=0)] = 5.0
    max_backoff: Annotated[float, doc("Longest wait between two tries, in seconds.", gt=0)] = 300.0

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise ValueError("host: must not be empty")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError("port: must be between 1 and 65535")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file: set both or neither")
        if self.transport != "tls" and (self.ca_file or self.cert_file or self.server_name):
            raise ValueError(f"ca_file, cert_file, key_file, server_name: only for transport = \"tls\" (it is {self.transport!r})")
        if not all(33 <= ord(c) <= 126 for c in self.app_name):
            raise ValueError("app_name: printable ASCII without spaces (RFC 5424 APP-NAME)")

    @property
    def effective_port(self) -> int:
        """The port: as configured, else the transport's registered one."""
        return self.port if self.port is not None else {"tls": 6514, "udp": 514, "tcp": 601}[self.transport]


class AuditConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """[audit]: sealing the audit log (tamper evidence), where the seals and archived months go, how long they are kept."""

    seal_interval_seconds: Annotated[float, doc("How often new audit rows are sealed (the beat task, the embedded scheduler).", gt=0)] = 60.0
    seal_bucket: Annotated[str | None, doc("A registered bucket that receives every seal as an object, out of the database owner's reach "
                                           "(with object lock where the store has it); unset: seals stay in the database only.",
                                           example="hospital-audit-seals")] = None
    seal_prefix: Annotated[str, doc("Key prefix of the seal objects in seal_bucket.")] = "imaging-sync/audit-seals/"
    archive_bucket: Annotated[str | None, doc("A registered bucket that receives archived months (`imaging-sync audit archive`).",
                                              example="hospital-audit-archive")] = None
    archive_prefix: Annotated[str, doc("Key prefix of archived months in archive_bucket.")] = "imaging-sync/audit-archive/"
    retention_years: Annotated[int, doc("Years an archived month and each seal object are kept (object lock retain-until, where the store has it).",
                                        ge=1, le=100)] = 5
    online_months: Annotated[int, doc("Months kept in the database; `audit archive` refuses a month younger than this.", ge=1, le=120)] = 13
    atna: Annotated[AtnaConfig | None, doc("Send every entry as a DICOM audit message (IHE ATNA) to an Audit Record Repository over syslog.",
                                           example={"host": "arr.hospital.internal", "transport": "tls", "ca_file": "/etc/imaging-sync/arr-ca.pem"})] = None


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Every section of the configuration; ``source`` says where it came from (not a key of the file)."""

    database: DatabaseConfig = DatabaseConfig()
    logging: LoggingConfig = LoggingConfig()
    sync: SyncConfig = SyncConfig()
    storage: StorageConfig = StorageConfig()
    api: ApiConfig = ApiConfig()
    dicomweb: DicomwebConfig = DicomwebConfig()
    outbox: OutboxConfig = OutboxConfig()
    alerts: AlertsConfig = AlertsConfig()
    jobs: JobsConfig = JobsConfig()
    dicom: DicomConfig = DicomConfig()
    audit: AuditConfig = AuditConfig()
    partners: Annotated[dict[str, PartnerConfig], doc("The partners, by name (lower-case letters, digits, '-' and '_').", example={
        "b": {"base_url": "https://export.partner-b.example/api", "api_key_env": "PARTNER_B_API_KEY", "default_bucket": "partner-b-dicom",
              "allowed_buckets": ["partner-b-archive"], "priority": 10,
              "vocabulary": {"sex": {"male": "M", "female": "F", "other": "O"}, "modality": {"Computed Tomography": "CT", "MRI": "MR"}}},
        "c": {"base_url": "https://pacs-export.partner-c.example", "api_key_file": "/run/secrets/partner-c-api-key", "default_bucket": "partner-c-images", "priority": 5},
    })] = {}
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

    def enabled_partners(self) -> list[PartnerConfig]:
        """The enabled partners, highest priority first, ties by name: the one order of every "all partners" action.

        Syncing every partner, queueing their syncs, scheduling them: each
        takes this list, so the partner whose values win a shared entity is
        the one synced first everywhere.
        """
        return sorted((p for p in self.partners.values() if p.enabled), key=lambda p: (-p.priority, p.name))

    def broker_users(self) -> list[str]:
        """The keys that make this deployment use the Celery broker (none: it needs no broker)."""
        users = []
        if self.jobs.scheduler == "celery":
            users.append('jobs.scheduler = "celery"')
        if self.api.sync_launcher == "queue":
            users.append('api.sync_launcher = "queue"')
        if self.outbox.celery_task:
            users.append("outbox.celery_task")
        return users


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None, *, path_key: str = CONFIG_ENV
) -> Settings:
    """Read the TOML file and environment overrides; raise ConfigError naming the key.

    ``path_key`` names where an explicit ``path`` came from in errors (the CLI
    passes ``--config``). Every secret the settings name is read here, and all
    that are missing are reported in one error.
    """
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
        raise ConfigError(path_key if path is not None else CONFIG_ENV, f"config file {file_path} does not exist")
    _refuse_secrets(raw, "")
    env_keys = _apply_env_overrides(raw, environ)
    if env_keys:
        source += f" + environment ({len(env_keys)} overrides)"
    _check_retired_keys(raw)
    _check_ae_title_tables(raw)
    settings = _convert(raw, source)
    _check_database_url(settings, env_keys)
    _check_jobs_urls(settings, env_keys)
    _check_partner_buckets(settings)
    check_secrets(settings, environ)
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


@dataclass(frozen=True)
class SecretSource:
    """A secret the settings name: its config key (without ``_env``/``_file``) and where it is read from."""

    key: str
    env: str | None
    file: str | None

    def read(self, environ: Mapping[str, str] | None = None) -> Secret | None:
        return read_secret(self.key, self.env, self.file, environ)


_BUCKET_SECRETS = {"keys": ("access_key_id", "secret_access_key", "session_token"), "assume_role": ("external_id",)}


def secret_sources(settings: Settings) -> list[SecretSource]:
    """Every secret these settings name, and only those: the one list start-up checks and doctor masks."""
    outbox, alerts = settings.outbox, settings.alerts
    database = settings.database
    sources = [SecretSource("database.password", database.password_env, database.password_file),
               SecretSource("database.runtime_password", database.runtime_password_env, database.runtime_password_file)]
    sources += [SecretSource(f"partners.{name}.api_key", p.api_key_env, p.api_key_file) for name, p in sorted(settings.partners.items())]
    for name, bucket in sorted(settings.storage.buckets.items()):
        for field in _BUCKET_SECRETS.get(bucket.auth, ()):
            sources.append(SecretSource(f"storage.buckets.{name}.{field}", getattr(bucket, f"{field}_env"), getattr(bucket, f"{field}_file")))
    if outbox.webhook is not None:
        sources.append(SecretSource("outbox.webhook.url", outbox.webhook.url_env, outbox.webhook.url_file))
        sources.append(SecretSource("outbox.webhook.secret", outbox.webhook.secret_env, outbox.webhook.secret_file))
    sources.append(SecretSource("alerts.slack_webhook_url", alerts.slack_webhook_url_env, alerts.slack_webhook_url_file))
    sources.append(SecretSource("alerts.webhook_url", alerts.webhook_url_env, alerts.webhook_url_file))
    sources.append(SecretSource("jobs.broker_url", settings.jobs.broker_url_env, settings.jobs.broker_url_file))
    sources.append(SecretSource("dicomweb.viewer_key", settings.dicomweb.viewer_key_env, settings.dicomweb.viewer_key_file))
    return [s for s in sources if s.env or s.file]


def check_secrets(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """Read every secret the settings name; one ConfigError listing each that is missing or unreadable.

    One exception: with ``database.runtime_role`` set, ``database.password`` is
    the owning role's, which only ``db upgrade`` connects as (and reads then,
    failing with the same message): the services are not given it, so their
    start must not ask for it.
    """
    problems = [ConfigError(f"partners.{name}", "no API key source: set api_key_env or api_key_file")
                for name, p in sorted(settings.partners.items()) if not (p.api_key_env or p.api_key_file)]
    owner_only = {"database.password"} if settings.database.runtime_role else set()
    for source in secret_sources(settings):
        if source.key in owner_only:
            continue
        try:
            source.read(environ)
        except ConfigError as exc:
            problems.append(exc)
    webhook = settings.outbox.webhook
    if webhook is not None and not any(p.key.startswith("outbox.webhook.url") for p in problems):
        try:
            webhook_url(webhook, environ)  # a URL read from the environment or a file is checked like one in the file
        except ConfigError as exc:
            problems.append(exc)
    if problems:
        raise ConfigError.of(problems)


def resolve_api_key(partner: PartnerConfig, environ: Mapping[str, str] | None = None) -> Secret:
    """The partner's key, from its environment variable or file; fails naming the key."""
    secret = read_secret(f"partners.{partner.name}.api_key", partner.api_key_env, partner.api_key_file, environ)
    if secret is None:
        raise ConfigError(f"partners.{partner.name}", "no API key source: set api_key_env or api_key_file")
    return secret


def database_password(config: DatabaseConfig, environ: Mapping[str, str] | None = None) -> Secret | None:
    """The password of database.url's role (with ``runtime_role`` set: the owner's, for ``db upgrade``)."""
    return read_secret("database.password", config.password_env, config.password_file, environ)


def runtime_password(config: DatabaseConfig, environ: Mapping[str, str] | None = None) -> Secret | None:
    """The password of ``database.runtime_role``, the services' own role (None: none configured, e.g. certificate or trust auth)."""
    return read_secret("database.runtime_password", config.runtime_password_env, config.runtime_password_file, environ)


def webhook_url(config: WebhookConfig, environ: Mapping[str, str] | None = None) -> Secret:
    """The outbox receiver's URL: written in the file, or from ``url_env``/``url_file``."""
    if config.url is not None:
        return Secret(config.url)
    secret = read_secret("outbox.webhook.url", config.url_env, config.url_file, environ)
    assert secret is not None  # WebhookConfig requires exactly one source
    if not secret.reveal().startswith(("http://", "https://")):
        raise ConfigError(f"outbox.webhook.url_{'env' if config.url_env else 'file'}", "the URL must start with http:// or https://")
    return secret


def _refuse_secrets(node: Any, path: str) -> None:
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        where = f"{path}.{key}" if path else key
        if key.lower() in _SECRET_KEYS:
            raise ConfigError(where, "secrets must not be written in the config file; name an environment variable (…_env) or a file (…_file) instead")
        _refuse_secrets(value, where)


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> set[str]:
    """Set ``IMAGING_SYNC__A__B=v`` as raw[a][b] = v, matching existing keys loosely.

    A list key (``IMAGING_SYNC__API__CORS_ALLOWED_ORIGINS``) takes a JSON array
    or comma-separated values; every other value is converted by the schema.
    """
    applied: set[str] = set()
    for env_name, value in sorted(environ.items()):
        if not env_name.startswith(ENV_PREFIX):
            continue
        parts = [p for p in env_name[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        node = raw
        path: list[str] = []
        for part in parts[:-1]:
            key = _match_key(node, part)
            path.append(key)
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(env_name, f"{key} is not a table, cannot set a key below it")
        key = _match_key(node, parts[-1])
        node[key] = _env_value(env_name, value, _key_type([*path, key]))
        applied.add(".".join(p.lower() for p in parts))
    return applied


def _key_type(path: list[str]) -> msgspec.inspect.Type | None:
    """The schema's type of the key at ``path`` (``["partners", "b", "page_size"]``); None if there is none."""
    kind: msgspec.inspect.Type | None = msgspec.inspect.type_info(Settings)
    for part in path:
        kind = _unwrap(kind)
        if isinstance(kind, msgspec.inspect.StructType):
            kind = next((f.type for f in kind.fields if f.name == part), None)
        elif isinstance(kind, msgspec.inspect.DictType):
            kind = kind.value_type
        else:
            return None
    return _unwrap(kind)


def _unwrap(kind: msgspec.inspect.Type | None) -> msgspec.inspect.Type | None:
    """The type inside ``Annotated`` metadata and ``X | None``."""
    while True:
        if isinstance(kind, msgspec.inspect.Metadata):
            kind = kind.type
        elif isinstance(kind, msgspec.inspect.UnionType):
            others = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
            if len(others) != 1:
                return kind
            kind = others[0]
        else:
            return kind


def _env_value(env_name: str, value: str, kind: msgspec.inspect.Type | None) -> Any:
    if not isinstance(kind, msgspec.inspect.ListType):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(env_name, f"not a JSON array: {exc.msg}") from None
    return [item.strip() for item in text.split(",") if item.strip()]


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


def _check_retired_keys(raw: Mapping[str, Any]) -> None:
    """Keys whose meaning changed so much that a config still using them must not start: each error says what to write instead."""
    dicom = raw.get("dicom")
    if not isinstance(dicom, Mapping) or "allowed_calling_aets" not in dicom:
        return
    old = dicom["allowed_calling_aets"]
    titles = [t.strip() for t in (old.split(",") if isinstance(old, str) else old if isinstance(old, list) else []) if isinstance(t, str) and t.strip()]
    was = (f"it listed {', '.join(titles)}" if titles else "it was empty, which let any calling AE in")
    sections = " ".join(f'[dicom.peers.{t}] operations = ["echo", "find", "move"]' for t in titles[:8]) or '[dicom.peers.HOSPITAL_PACS] operations = ["echo", "find", "move"]'
    raise ConfigError(
        "dicom.allowed_calling_aets",
        f"no longer exists ({was}): no calling AE is served unless it has its own [dicom.peers.AE_TITLE] section naming the operations "
        f"it may use (echo, find, move, get) and, optionally, the addresses it may come from. Write instead: {sections} "
        '(add "get" only for AEs that may retrieve with C-GET, and addresses = ["10.1.2.3"] to tie a title to its hosts; '
        "from the environment: IMAGING_SYNC__DICOM__PEERS__AE_TITLE__OPERATIONS=echo,find,move)",
    )


def _check_ae_title_tables(raw: Mapping[str, Any]) -> None:
    """Each [dicom.peers.X] and [dicom.destinations.X] on its own first, so an error names the AE title (msgspec says ``[...]``)."""
    dicom = raw.get("dicom")
    if not isinstance(dicom, Mapping):
        return
    for table, kind in (("peers", DicomPeer), ("destinations", DicomDestination)):
        entries = dicom.get(table)
        if not isinstance(entries, Mapping):
            continue
        for title, body in entries.items():
            try:
                msgspec.convert(body, kind, strict=False)
            except msgspec.ValidationError as exc:
                raise _config_error(exc, f"dicom.{table}.{title}") from None


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
            how = ("name an environment variable or a file holding the URL in jobs.broker_url_env or jobs.broker_url_file" if key == "broker_url"
                   else "leave it unset to use the broker (jobs.broker_url_env), or set IMAGING_SYNC__JOBS__RESULT_BACKEND")
            raise ConfigError(f"jobs.{key}", f"contains a password; {how}")
