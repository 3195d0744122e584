"""The bucket registry: the only buckets the service ever signs or reads, and how to reach each.

This is the storage security boundary. Every storage call starts with
:meth:`BucketRegistry.bucket_config`, which raises ``BucketNotAllowedError``
for a bucket not in ``[storage.buckets]``, before any client, credential or
signature exists for it.

Buckets may live in different accounts and regions. Each *distinct*
``BucketConfig`` gets one botocore session (its credentials) and one boto3
S3 client, created lazily under a lock on first use and then shared by every
thread (boto3 clients are thread-safe; each holds a connection pool and
costs tens of milliseconds to build, so never one per request). Buckets
with identical settings share the client.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import boto3.session
import botocore.session
from botocore.config import Config
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    Credentials,
    DeferredRefreshableCredentials,
    ReadOnlyCredentials,
)
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound

from imaging_sync.config import BucketConfig, StorageConfig, read_secret
from imaging_sync.errors import BucketNotAllowedError, ConfigError, StorageError
from storage.boto_errors import storage_error
from storage.sigv4 import ALGORITHM, SigningScope

if TYPE_CHECKING:  # boto3-stubs may be absent; the client is a botocore BaseClient at runtime
    from botocore.client import BaseClient as S3Client
else:
    S3Client = Any

# Retries: botocore's "standard" mode (throttling, 5xx, connection errors,
# with backoff and a retry quota), 3 attempts in all (botocore's "max_attempts" would
# count retries only); S3 GETs and HEADs are idempotent.
MAX_ATTEMPTS = 3
RETRIES = {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 60.0
# Concurrent streams per client (C-MOVE sub-operations, API workers); botocore's default is 10.
MAX_POOL_CONNECTIONS = 32
_PROBE_KEY = "imaging-sync-endpoint-probe"


@dataclass(frozen=True, slots=True)
class BucketEndpoint:
    """Where a bucket's objects live and how requests to them are scoped, as botocore resolves it.

    ``base_url`` is everything before ``/<key>`` (``https://b.s3.amazonaws.com``
    or ``http://127.0.0.1:9000/b``); ``host`` is the Host header a client
    sends; ``region`` and ``service`` form the SigV4 credential scope.
    """

    bucket: str
    base_url: str
    host: str
    region: str
    service: str


@dataclass(slots=True)
class _Connection:
    """One per distinct BucketConfig: the client, the very credentials object it signs with, its CA bundle."""

    client: S3Client
    credentials: Credentials | None
    ca_bundle: str | None = None


class _GivenCredentials(CredentialProvider):  # type: ignore[misc]  # botocore ships no type information
    """Hands botocore a credentials object we built (static keys or auto-refreshing AssumeRole)."""

    METHOD = "imaging-sync-registry"
    CANONICAL_NAME = "custom-imaging-sync-registry"

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> Credentials:
        return self._credentials


@dataclass(frozen=True, slots=True)
class _Secrets:
    """What a config's ``*_env`` or ``*_file`` sources hold, read once at start."""

    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    external_id: str | None = None


class BucketRegistry:
    """Built once per process from ``StorageConfig``; the one place that says yes or no to a bucket."""

    def __init__(self, config: StorageConfig, *, environ: Mapping[str, str] | None = None) -> None:
        """Check every bucket's credential sources now, so a missing variable fails at start naming the key.

        Clients are not created here but on first use of a bucket, or all at once by :meth:`connect_all`.
        """
        environ = os.environ if environ is None else environ
        self._config = config
        self._secrets = {cfg: _read_secrets(name, cfg, environ) for name, cfg in config.buckets.items()}
        self._lock = threading.Lock()
        self._connections: dict[BucketConfig, _Connection] = {}
        self._endpoints: dict[str, BucketEndpoint] = {}
        self._expiries: dict[str, datetime] = {}  # temporary access key id -> when STS said it ends
        self._expiry_lock = threading.Lock()  # not _lock: botocore may refresh while _lock is held (endpoint probe)

    @property
    def storage_config(self) -> StorageConfig:
        return self._config

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._config.buckets)

    def __contains__(self, bucket: object) -> bool:
        return isinstance(bucket, str) and bucket in self._config.buckets

    def bucket_config(self, bucket: str) -> BucketConfig:
        """The bucket's settings, or ``BucketNotAllowedError``: the security boundary."""
        try:
            return self._config.buckets[bucket]
        except (KeyError, TypeError):
            raise BucketNotAllowedError(str(bucket)) from None

    def connect_all(self) -> int:
        """Build every bucket's client now and return how many distinct clients there are.

        A long-lived server calls this at start: building a boto3 client costs
        hundreds of milliseconds (botocore loads its service model), which
        would otherwise land on the first request that reads a file, and a
        bucket whose client cannot be built fails the start, naming it.
        """
        for bucket in self._config.buckets:
            self._connection(bucket)
        return len(self._connections)

    def client(self, bucket: str) -> S3Client:
        """The shared boto3 S3 client for this bucket's configuration."""
        return self._connection(bucket).client

    def credentials(self, bucket: str) -> ReadOnlyCredentials:
        """The bucket's current credentials, refreshed first if they are temporary and about to expire.

        Same object the client signs with (``get_frozen_credentials`` is
        botocore's public, thread-safe way to read a consistent key/secret/token
        triple from refreshable credentials).
        """
        connection = self._connection(bucket)
        if connection.credentials is None:
            auth = self.bucket_config(bucket).auth
            raise StorageError(f"sign for bucket {bucket!r}: no credentials found (auth = {auth!r})")
        try:
            return connection.credentials.get_frozen_credentials()
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, action="get credentials for", bucket=bucket) from exc

    def expiry(self, credentials: ReadOnlyCredentials) -> datetime | None:
        """When ``credentials`` (from :meth:`credentials`) stop working, if known: assumed roles only.

        A URL signed with them dies then too, whatever its own lifetime says.
        Looked up by access key id, which STS issues anew each session, so a
        refresh between reading the credentials and asking this cannot pair a
        key with another session's end. None for long-lived keys, and for
        temporary ones the registry did not fetch itself (a session token in
        the environment, the default chain's instance or container role).
        """
        return self._expiries.get(credentials.access_key)

    def signing_scope(self, bucket: str, credentials: ReadOnlyCredentials) -> SigningScope:
        """What our signers need for this bucket: its endpoint (:meth:`endpoint`) and ``credentials`` (from :meth:`credentials`)."""
        endpoint = self.endpoint(bucket)
        return SigningScope(
            base_url=endpoint.base_url, host=endpoint.host, region=endpoint.region, service=endpoint.service,
            access_key=credentials.access_key, secret_key=credentials.secret_key, session_token=credentials.token,
        )

    def ca_bundle(self, bucket: str) -> str | None:
        """The CA bundle the bucket's client verifies TLS with, if configured (``AWS_CA_BUNDLE``, a profile's ``ca_bundle``).

        For our own HTTP client (``storage.fetch``), so it trusts exactly what
        the botocore client trusts. None: botocore's default (then
        ``REQUESTS_CA_BUNDLE``, else its bundled certificates).
        """
        return self._connection(bucket).ca_bundle

    def endpoint(self, bucket: str) -> BucketEndpoint:
        """Scheme, host, path prefix and signing scope for this bucket, resolved once by botocore.

        Why ask botocore: S3 endpoint rules are many (partitions, us-east-1's
        global endpoint for presigned URLs, DNS-compatible names, dots under
        https, IP endpoints forcing path style). One botocore presign per
        bucket tells us exactly what it would produce; our signer reuses that
        for every URL after.
        """
        found = self._endpoints.get(bucket)
        if found is not None:
            return found
        client = self.client(bucket)  # also checks the bucket is registered
        with self._lock:
            found = self._endpoints.get(bucket)
            if found is None:
                found = self._endpoints[bucket] = _probe_endpoint(client, bucket)
        return found

    def _connection(self, bucket: str) -> _Connection:
        cfg = self.bucket_config(bucket)
        connection = self._connections.get(cfg)
        if connection is not None:
            return connection
        with self._lock:
            connection = self._connections.get(cfg)
            if connection is None:
                try:
                    connection = self._connections[cfg] = self._connect(cfg)
                except (BotoCoreError, ClientError) as exc:
                    raise storage_error(exc, action="connect to", bucket=bucket) from exc
        return connection

    def _connect(self, cfg: BucketConfig) -> _Connection:
        secrets = self._secrets[cfg]
        session = new_botocore_session(cfg.profile if cfg.auth == "profile" else None)
        given: Credentials | None = None
        if cfg.auth == "keys":
            given = Credentials(secrets.access_key_id, secrets.secret_access_key, secrets.session_token)
        elif cfg.auth == "assume_role":
            given = self._assume_role_credentials(cfg, secrets)
        if given is not None:
            session.register_component("credential_provider", CredentialResolver([_GivenCredentials(given)]))
        config = Config(
            region_name=cfg.region,
            signature_version="s3v4",
            s3={"addressing_style": cfg.addressing_style},
            retries=RETRIES,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            max_pool_connections=MAX_POOL_CONNECTIONS,
        )
        client = boto3.session.Session(botocore_session=session).client(
            "s3", region_name=cfg.region, endpoint_url=cfg.endpoint_url, config=config
        )
        # The same object the client holds: refreshes seen by one are seen by the other.
        ca_bundle = session.get_config_variable("ca_bundle")  # what botocore's create_client verifies with
        return _Connection(client=client, credentials=session.get_credentials(), ca_bundle=str(ca_bundle) if ca_bundle else None)

    def _assume_role_credentials(self, cfg: BucketConfig, secrets: _Secrets) -> Credentials:
        """STS AssumeRole from the default chain (or ``profile``), refreshed by botocore before expiry.

        DeferredRefreshableCredentials calls AssumeRole on first use and again
        when less than 15 minutes remain (botocore's advisory window), under
        its own lock. The STS client is regional; ``AWS_ENDPOINT_URL_STS``
        (botocore's service-specific endpoint variable) points it elsewhere,
        e.g. at MinIO or moto.
        """
        source = new_botocore_session(cfg.profile)
        source_credentials = source.get_credentials()
        if source_credentials is None:
            raise StorageError(f"assume role {cfg.role_arn}: no source credentials in the default chain or profile")
        extra: dict[str, str] = {"RoleSessionName": cfg.role_session_name}
        if secrets.external_id:
            extra["ExternalId"] = secrets.external_id
        fetcher = AssumeRoleCredentialFetcher(
            client_creator=functools.partial(source.create_client, region_name=cfg.region),
            source_credentials=source_credentials,
            role_arn=cfg.role_arn,
            extra_args=extra,
        )

        def fetch() -> dict[str, Any]:
            fetched: dict[str, Any] = fetcher.fetch_credentials()
            self._note_expiry(fetched["access_key"], fetched.get("expiry_time"))
            return fetched

        return DeferredRefreshableCredentials(refresh_using=fetch, method="assume-role")

    def _note_expiry(self, access_key: str, expiry_time: str | None) -> None:
        try:
            ends = datetime.fromisoformat(str(expiry_time).replace("Z", "+00:00"))
        except ValueError:
            return  # no usable expiry: URLs keep their asked-for lifetime, as before
        if ends.tzinfo is None:
            ends = ends.replace(tzinfo=UTC)
        now = datetime.now(UTC)
        with self._expiry_lock:
            self._expiries = {k: v for k, v in self._expiries.items() if v > now}  # one entry per live session
            self._expiries[access_key] = ends


@functools.lru_cache(maxsize=1)
def _shared_loader() -> Any:
    """botocore's data loader, shared by every session in the process.

    It holds parsed, read-only JSON (the S3 model, endpoint rules and
    partitions, ~0.2 s to parse); without sharing, each session parses it
    again. Data, not a client: nothing here is tied to a bucket or account.
    """
    return botocore.session.Session().get_component("data_loader")


def new_botocore_session(profile: str | None = None) -> botocore.session.Session:
    """A botocore session (its own credentials) reading models through the shared loader."""
    session = botocore.session.Session(profile=profile)
    session.register_component("data_loader", _shared_loader())
    return session


def _read_secrets(name: str, cfg: BucketConfig, environ: Mapping[str, str]) -> _Secrets:
    """The bucket's credentials from the environment variables or files its config names (``config.read_secret``)."""
    where = f"storage.buckets.{name}"

    def read(field: str) -> str | None:
        secret = read_secret(f"{where}.{field}", getattr(cfg, f"{field}_env"), getattr(cfg, f"{field}_file"), environ)
        return None if secret is None else secret.reveal()

    if cfg.auth in ("profile", "assume_role") and cfg.profile:
        try:
            botocore.session.Session(profile=cfg.profile).get_scoped_config()
        except ProfileNotFound:
            raise ConfigError(f"{where}.profile", f"AWS profile {cfg.profile!r} not found") from None
    if cfg.auth == "keys":  # BucketConfig requires both sources
        return _Secrets(access_key_id=read("access_key_id"), secret_access_key=read("secret_access_key"), session_token=read("session_token"))
    if cfg.auth == "assume_role":
        return _Secrets(external_id=read("external_id"))
    return _Secrets()


def _probe_endpoint(client: S3Client, bucket: str) -> BucketEndpoint:
    try:
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}, ExpiresIn=60)
    except (BotoCoreError, ClientError) as exc:
        raise storage_error(exc, action="resolve the endpoint of", bucket=bucket) from exc
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    suffix = "/" + _PROBE_KEY
    if (
        not parts.path.endswith(suffix)
        or query.get("X-Amz-Algorithm") != ALGORITHM
        or query.get("X-Amz-SignedHeaders") != "host"
    ):
        # e.g. S3 Express directory buckets (session auth): not for this signer.
        raise StorageError(f"bucket {bucket!r}: its endpoint needs a signing scheme the presigner does not implement")
    _, _, region, service, _ = query["X-Amz-Credential"].split("/")
    base_url = f"{parts.scheme}://{parts.netloc}{parts.path[: -len(suffix)]}"
    return BucketEndpoint(bucket=bucket, base_url=base_url, host=_host_header(parts.scheme, parts.netloc), region=region, service=service)


def _host_header(scheme: str, netloc: str) -> str:
    """The Host value a client sends: the netloc without a port that is the scheme's default."""
    host = netloc.rsplit("@", 1)[-1].lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and host.endswith(default):
        host = host[: -len(default)]
    return host
