"""Our SigV4 presigner produces, byte for byte, the URL botocore's generate_presigned_url does.

No server needed: presigning is offline. botocore's clock is pinned to the
same instant as ours, so signatures must match exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import botocore.auth
import pytest

from imaging_sync.config import BucketConfig, StorageConfig
from storage import BucketRegistry, Presigner
from storage.sigv4 import GetUrlSigner, SigningScope

SIGNED_AT = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
ENV = {"AK": "AKIAPARITYEXAMPLE01", "SK": "parity/secret+key=example", "TOKEN": "FQoGZXIvYXdzE//token+with/odd=chars"}
KEYS = [
    "plain.dcm",
    "studies/1.2.840.113619/series 1/instance 01.dcm",  # nested path with spaces
    "환자/영상 검사/1.dcm",  # Korean
    "a+b=c/x+y==.dcm",  # '+' and '=' must be %2B / %3D in the path
    "deep/nested/path/to/an/object",
    "~tilde/(parens)/'quote'/!bang*star;semi:colon@at,comma$dollar&amp",
    "trailing/slash/",
    "percent%20literal",
    "/leading//double-slash",  # S3 keys are not paths: nothing is normalised
    "./dot/../segments",
]


def bucket(region: str, *, endpoint_url: str | None = None, addressing: str = "auto", token: bool = False) -> BucketConfig:
    return BucketConfig(
        region=region,
        endpoint_url=endpoint_url,
        auth="keys",
        access_key_id_env="AK",
        secret_access_key_env="SK",
        session_token_env="TOKEN" if token else None,
        addressing_style=addressing,  # type: ignore[arg-type]
    )


CASES = {
    "aws-us-east-1-auto": ("dicom-east", bucket("us-east-1")),
    "aws-eu-west-1-auto": ("dicom-eu", bucket("eu-west-1")),
    "aws-ap-northeast-2-virtual": ("dicom-seoul", bucket("ap-northeast-2", addressing="virtual")),
    "aws-eu-central-1-path": ("dicom-frankfurt", bucket("eu-central-1", addressing="path")),
    "aws-dotted-name-auto": ("dicom.with.dots", bucket("us-west-2")),
    "minio-path": ("minio-bucket", bucket("us-east-1", endpoint_url="http://127.0.0.1:9000", addressing="path")),
    "minio-virtual-https": ("minio-bucket", bucket("eu-west-1", endpoint_url="https://s3.minio.example.test", addressing="virtual")),
    "explicit-default-port": ("minio-bucket", bucket("us-east-1", endpoint_url="https://minio.example.test:443", addressing="virtual")),
    "custom-port-and-prefix": ("pfx-bucket", bucket("us-east-1", endpoint_url="https://gw.example.test:8443/s3", addressing="path")),
    "temporary-credentials": ("dicom-sts", bucket("eu-west-1", token=True)),
}


@pytest.fixture(autouse=True)
def pinned_botocore_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: SIGNED_AT.replace(tzinfo=None))


_registries: dict[str, BucketRegistry] = {}


def registry_for(name: str, config: BucketConfig) -> BucketRegistry:
    """One registry per case for the module: a client costs ~0.1 s to build, the comparison microseconds."""
    key = f"{name}:{config!r}"
    if key not in _registries:
        _registries[key] = BucketRegistry(StorageConfig(presign_max_seconds=7 * 24 * 3600, buckets={name: config}), environ=ENV)
    return _registries[key]


def botocore_url(registry: BucketRegistry, name: str, key: str, expires: int, **extra: str) -> str:
    params = {"Bucket": name, "Key": key, **extra}
    return registry.client(name).generate_presigned_url("get_object", Params=params, ExpiresIn=expires)


def assert_same_url(ours: str, theirs: str) -> None:
    a, b = urlsplit(ours), urlsplit(theirs)
    assert (a.scheme, a.netloc, a.path) == (b.scheme, b.netloc, b.path)
    assert parse_qs(a.query) == parse_qs(b.query)  # same params, same values, same signature
    assert ours == theirs  # and the same order and encoding


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("key", KEYS)
def test_url_equals_botocore_generate_presigned_url(case: str, key: str) -> None:
    name, config = CASES[case]
    registry = registry_for(name, config)
    ours = Presigner(registry, clock=lambda: SIGNED_AT).presign_get(name, key, expires_in=900, content_type=None)
    assert_same_url(ours.url, botocore_url(registry, name, key, 900))


@pytest.mark.parametrize("case", ["aws-eu-west-1-auto", "minio-path", "temporary-credentials"])
def test_response_overrides_are_signed_exactly_like_botocore(case: str) -> None:
    name, config = CASES[case]
    registry = registry_for(name, config)
    presigner = Presigner(registry, clock=lambda: SIGNED_AT)
    ours = presigner.presign_get(name, "환자/1.dcm", expires_in=3600, filename='영상 "CT" 1.dcm')
    disposition = parse_qs(urlsplit(ours.url).query)["response-content-disposition"][0]
    theirs = botocore_url(
        registry, name, "환자/1.dcm", 3600, ResponseContentDisposition=disposition, ResponseContentType="application/dicom"
    )
    assert_same_url(ours.url, theirs)


def test_batch_urls_equal_single_urls_and_botocore() -> None:
    name, config = CASES["temporary-credentials"]
    registry = registry_for(name, config)
    presigner = Presigner(registry, clock=lambda: SIGNED_AT)
    batch = presigner.presign_many([(name, key, None) for key in KEYS], content_type=None)
    assert [u.url for u in batch] == [presigner.presign_get(name, key, content_type=None).url for key in KEYS]
    for key, url in zip(KEYS, batch, strict=True):
        assert_same_url(url.url, botocore_url(registry, name, key, 300))
    assert "X-Amz-Security-Token" in parse_qs(urlsplit(batch[0].url).query)


def test_aws_documented_example_signature() -> None:
    """Amazon S3 API Reference, sigv4-query-string-auth, "An example": the published signature."""
    scope = SigningScope(
        base_url="https://examplebucket.s3.amazonaws.com",
        host="examplebucket.s3.amazonaws.com",
        region="us-east-1",
        service="s3",
        access_key="AKIAIOSFODNN7EXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        session_token=None,
    )
    signer = GetUrlSigner(scope, signed_at=datetime(2013, 5, 24, tzinfo=UTC), expires_in=86400)
    url = signer.sign("test.txt")
    assert url.startswith("https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&")
    assert url.endswith("&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")


def test_signer_refuses_lifetimes_sigv4_does_not_allow() -> None:
    with pytest.raises(ValueError, match="between 1 and 604800"):
        GetUrlSigner(
            SigningScope(base_url="https://b.s3.amazonaws.com", host="b.s3.amazonaws.com", region="us-east-1", service="s3",
                         access_key="a", secret_key="s", session_token=None),
            signed_at=SIGNED_AT, expires_in=604801,
        )
