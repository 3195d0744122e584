"""The bucket registry: the security boundary, one client per distinct configuration, every auth mode."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.credentials import RefreshableCredentials

from imaging_sync.config import BucketConfig, StorageConfig
from imaging_sync.errors import BucketNotAllowedError, ConfigError, StorageError
from storage import BucketRegistry, EmbeddedS3, ObjectReader, Presigner

ACCOUNT = "123456789012"  # moto's default account: buckets made by the admin client live there


def keys_bucket(region: str = "eu-west-1", *, prefix: str = "P", **overrides: object) -> BucketConfig:
    values: dict[str, object] = {
        "region": region,
        "auth": "keys",
        "access_key_id_env": f"{prefix}_AK",
        "secret_access_key_env": f"{prefix}_SK",
        **overrides,
    }
    return BucketConfig(**values)  # type: ignore[arg-type]


ENV = {"P_AK": "AKIAPARTNERP", "P_SK": "secret-p", "Q_AK": "AKIAPARTNERQ", "Q_SK": "secret-q"}


@pytest.fixture
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No credentials from the developer's machine: empty AWS files, no AWS_* variables, no IMDS."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return tmp_path


def test_buckets_with_identical_settings_share_one_client_and_others_get_their_own() -> None:
    config = StorageConfig(
        buckets={
            "partner-p-a": keys_bucket(),
            "partner-p-b": keys_bucket(),  # same settings as -a
            "partner-p-seoul": keys_bucket("ap-northeast-2"),  # other region
            "partner-q-a": keys_bucket(prefix="Q"),  # other account
        }
    )
    registry = BucketRegistry(config, environ=ENV)
    shared = registry.client("partner-p-a")
    assert registry.client("partner-p-b") is shared
    assert registry.client("partner-p-a") is shared  # created once, reused
    others = {id(registry.client("partner-p-seoul")), id(registry.client("partner-q-a"))}
    assert id(shared) not in others and len(others) == 2
    assert registry.client("partner-p-seoul").meta.region_name == "ap-northeast-2"
    assert registry.credentials("partner-q-a").access_key == "AKIAPARTNERQ"
    assert registry.credentials("partner-p-b").access_key == "AKIAPARTNERP"


def test_connect_all_builds_each_distinct_client_once_and_first_use_reuses_it() -> None:
    config = StorageConfig(buckets={"p-a": keys_bucket(), "p-b": keys_bucket(), "q-a": keys_bucket(prefix="Q")})
    registry = BucketRegistry(config, environ=ENV)
    assert registry.connect_all() == 2
    built = registry.client("p-a")
    assert registry.connect_all() == 2  # idempotent: nothing rebuilt
    assert registry.client("p-b") is built and registry.client("q-a") is not built


def test_first_use_from_many_threads_builds_one_client() -> None:
    registry = BucketRegistry(StorageConfig(buckets={"b-one": keys_bucket(), "b-two": keys_bucket()}), environ=ENV)
    barrier, seen = threading.Barrier(8), []

    def use(bucket: str) -> None:
        barrier.wait()
        seen.append(registry.client(bucket))

    threads = [threading.Thread(target=use, args=("b-one" if i % 2 else "b-two",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in seen}) == 1


def test_an_unregistered_bucket_gets_no_client_no_credentials_no_endpoint() -> None:
    registry = BucketRegistry(StorageConfig(buckets={"allowed-bucket": keys_bucket()}), environ=ENV)
    assert "allowed-bucket" in registry and "other-bucket" not in registry
    for call in (registry.client, registry.credentials, registry.endpoint, registry.bucket_config):
        with pytest.raises(BucketNotAllowedError, match="'other-bucket' is not in the storage registry"):
            call("other-bucket")


@pytest.mark.parametrize(
    ("config", "environ", "key"),
    [
        (keys_bucket(), {"P_AK": "a"}, "storage.buckets.b-x.secret_access_key_env"),
        (keys_bucket(), {"P_SK": "s"}, "storage.buckets.b-x.access_key_id_env"),
        (keys_bucket(session_token_env="P_TOKEN"), {"P_AK": "a", "P_SK": "s"}, "storage.buckets.b-x.session_token_env"),
        (
            BucketConfig(auth="assume_role", role_arn=f"arn:aws:iam::{ACCOUNT}:role/r", external_id_env="P_EXT"),
            {},
            "storage.buckets.b-x.external_id_env",
        ),
    ],
)
def test_missing_secret_fails_at_start_naming_the_key(config: BucketConfig, environ: Mapping[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        BucketRegistry(StorageConfig(buckets={"b-x": config}), environ=environ)
    assert caught.value.key == key
    assert "is not set" in caught.value.reason


def test_unknown_profile_fails_at_start(no_ambient_aws: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        BucketRegistry(StorageConfig(buckets={"b-x": BucketConfig(auth="profile", profile="nope")}))
    assert caught.value.key == "storage.buckets.b-x.profile"


def test_profile_auth_reads_the_named_profile(no_ambient_aws: Path) -> None:
    (no_ambient_aws / "credentials").write_text(
        "[partner-c]\naws_access_key_id = AKIAPROFILEC\naws_secret_access_key = from-profile\n", encoding="utf-8"
    )
    registry = BucketRegistry(StorageConfig(buckets={"c-bucket": BucketConfig(auth="profile", profile="partner-c")}))
    assert registry.credentials("c-bucket").access_key == "AKIAPROFILEC"
    url = Presigner(registry).presign_get("c-bucket", "k").url
    assert parse_qs(urlsplit(url).query)["X-Amz-Credential"][0].startswith("AKIAPROFILEC/")


def test_default_auth_uses_the_boto3_chain_and_says_so_when_it_is_empty(
    no_ambient_aws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = BucketRegistry(StorageConfig(buckets={"d-bucket": BucketConfig()}))
    with pytest.raises(StorageError, match="no credentials found \\(auth = 'default'\\)"):
        Presigner(empty).presign_get("d-bucket", "k")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    assert BucketRegistry(StorageConfig(buckets={"d-bucket": BucketConfig()})).credentials("d-bucket").access_key == "AKIAFROMENV"


@pytest.mark.parametrize(
    ("region", "addressing", "endpoint_url", "base_url", "host"),
    [
        # botocore signs presigned "auto" URLs for the global endpoint (S3 routes by DNS).
        ("us-east-1", "auto", None, "https://bkt-a.s3.amazonaws.com", "bkt-a.s3.amazonaws.com"),
        ("eu-west-1", "virtual", None, "https://bkt-a.s3.eu-west-1.amazonaws.com", "bkt-a.s3.eu-west-1.amazonaws.com"),
        ("eu-central-1", "path", None, "https://s3.eu-central-1.amazonaws.com/bkt-a", "s3.eu-central-1.amazonaws.com"),
        ("us-east-1", "auto", "http://127.0.0.1:9000", "http://127.0.0.1:9000/bkt-a", "127.0.0.1:9000"),
        ("us-east-1", "virtual", "https://minio.example.test:443", "https://bkt-a.minio.example.test:443", "bkt-a.minio.example.test"),
    ],
)
def test_endpoint_is_resolved_like_botocore(region: str, addressing: str, endpoint_url: str | None, base_url: str, host: str) -> None:
    config = keys_bucket(region, addressing_style=addressing, endpoint_url=endpoint_url)
    endpoint = BucketRegistry(StorageConfig(buckets={"bkt-a": config}), environ=ENV).endpoint("bkt-a")
    assert (endpoint.base_url, endpoint.host, endpoint.region, endpoint.service) == (base_url, host, region, "s3")


class _MotoStsSecrets(Mapping[str, str]):
    """Access key id -> secret for keys moto's STS issued: lets the gate check temporary-credential signatures."""

    def _role(self, access_key_id: str) -> object | None:
        from moto.sts.models import sts_backends

        return sts_backends[ACCOUNT]["aws"].get_assumed_role_from_access_key(access_key_id)

    def __getitem__(self, access_key_id: str) -> str:
        role = self._role(access_key_id)
        if role is None:
            raise KeyError(access_key_id)
        return role.secret_access_key  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@pytest.fixture(scope="module")
def sts_s3() -> Iterator[EmbeddedS3]:
    with EmbeddedS3(buckets={"assumed-role-bucket": "eu-west-1"}, secrets=_MotoStsSecrets()) as server:
        server.admin_client("eu-west-1").put_object(Bucket="assumed-role-bucket", Key="a/1.dcm", Body=b"via-role")
        yield server


ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/imaging-sync-reader"


@pytest.fixture
def role_source(sts_s3: EmbeddedS3, no_ambient_aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's own identity in the default chain, and STS at the embedded server."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASOURCEIDENTITY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "source-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts_s3.endpoint_url)  # botocore's per-service endpoint variable
    monkeypatch.setenv("PARTNER_R_EXTERNAL_ID", "partner-r-external-id")


def assumed_role_storage(sts_s3: EmbeddedS3, **storage: object) -> StorageConfig:
    bucket = BucketConfig(
        region="eu-west-1",
        endpoint_url=sts_s3.endpoint_url,
        auth="assume_role",
        role_arn=ROLE_ARN,
        external_id_env="PARTNER_R_EXTERNAL_ID",
        role_session_name="imaging-sync-test",
    )
    return StorageConfig(buckets={"assumed-role-bucket": bucket}, **storage)  # type: ignore[arg-type]


def test_assume_role_signs_with_refreshable_temporary_credentials_and_the_url_works(sts_s3: EmbeddedS3, role_source: None) -> None:
    registry = BucketRegistry(assumed_role_storage(sts_s3))
    credentials = registry.credentials("assumed-role-bucket")
    assert credentials.access_key != "AKIASOURCEIDENTITY" and credentials.token
    assert registry.credentials("assumed-role-bucket").access_key == credentials.access_key  # cached until near expiry

    from moto.sts.models import sts_backends

    assumed = sts_backends[ACCOUNT]["aws"].get_assumed_role_from_access_key(credentials.access_key)
    assert assumed is not None
    assert (assumed.role_arn, assumed.session_name, assumed.external_id) == (ROLE_ARN, "imaging-sync-test", "partner-r-external-id")
    assert isinstance(registry._connection("assumed-role-bucket").credentials, RefreshableCredentials)

    url = Presigner(registry).presign_get("assumed-role-bucket", "a/1.dcm").url
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Security-Token"] == [credentials.token]
    assert query["X-Amz-Credential"][0].startswith(credentials.access_key + "/")
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    assert response.content == b"via-role"
    assert ObjectReader(registry).read_range("assumed-role-bucket", "a/1.dcm", 4, 8) == b"role"
    with ObjectReader(registry).open_object("assumed-role-bucket", "a/1.dcm") as stream:  # storage.fetch: the token in a signed header
        assert b"".join(stream) == b"via-role"


def test_a_url_signed_with_an_assumed_role_ends_when_the_roles_session_does(sts_s3: EmbeddedS3, role_source: None) -> None:
    registry = BucketRegistry(assumed_role_storage(sts_s3, presign_default_seconds=300, presign_max_seconds=4 * 3600))
    presigner = Presigner(registry)

    long = presigner.presign_get("assumed-role-bucket", "a/1.dcm", expires_in=4 * 3600)

    from moto.sts.models import sts_backends

    credentials = registry.credentials("assumed-role-bucket")
    session = sts_backends[ACCOUNT]["aws"].get_assumed_role_from_access_key(credentials.access_key)
    session_end = session.expiration.replace(tzinfo=UTC)  # type: ignore[attr-defined]
    assert abs((registry.expiry(credentials) - session_end).total_seconds()) < 1  # type: ignore[operator]
    assert long.expires_at <= session_end and (session_end - long.expires_at).total_seconds() < 5, "ends with the session, as it says"
    signed = parse_qs(urlsplit(long.url).query)
    signed_at = datetime.strptime(signed["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert signed_at + timedelta(seconds=int(signed["X-Amz-Expires"][0])) == long.expires_at, "the URL itself says the same"
    assert httpx.get(long.url).content == b"via-role"

    short = presigner.presign_get("assumed-role-bucket", "a/1.dcm", expires_in=600)
    assert parse_qs(urlsplit(short.url).query)["X-Amz-Expires"] == ["600"], "a lifetime within the session is kept"


def test_long_lived_keys_have_no_known_end() -> None:
    registry = BucketRegistry(StorageConfig(buckets={"partner-p-a": keys_bucket()}), environ=ENV)

    assert registry.expiry(registry.credentials("partner-p-a")) is None
