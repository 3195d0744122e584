"""The embedded S3: starts on 127.0.0.1, makes the configured buckets, stops cleanly, refuses like S3."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import boto3
import httpx
import pytest

from devtools.ports import free_port
from devtools.storage import embedded_storage
from imaging_sync.config import BucketConfig, StorageConfig
from imaging_sync.errors import StorageError
from storage import EmbeddedS3, ObjectReader, Presigner
from storage.embedded import signed_for


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_port_zero_picks_a_free_port_and_stop_releases_it() -> None:
    server = EmbeddedS3(buckets={"emb-east": "us-east-1", "emb-seoul": "ap-northeast-2"})
    with server:
        port = int(server.endpoint_url.rsplit(":", 1)[1])
        assert server.endpoint_url == f"http://127.0.0.1:{port}" and port != 0
        client = server.admin_client()
        assert client.get_bucket_location(Bucket="emb-seoul")["LocationConstraint"] == "ap-northeast-2"
        assert client.get_bucket_location(Bucket="emb-east")["LocationConstraint"] is None  # us-east-1
    assert refuses_connections(port)
    server.stop()  # twice is harmless
    with pytest.raises(StorageError, match="not running"):
        _ = server.endpoint_url


def test_config_port_buckets_and_endpoints_come_from_the_storage_config() -> None:
    port = free_port()
    config = StorageConfig(
        embedded=True,
        embedded_port=port,
        buckets={
            "cfg-dublin": BucketConfig(region="eu-west-1", auth="keys", access_key_id_env="E_AK", secret_access_key_env="E_SK"),
            "cfg-tokyo": BucketConfig(region="ap-northeast-1", auth="keys", access_key_id_env="E_AK", secret_access_key_env="E_SK"),
        },
    )
    with EmbeddedS3.for_config(config, secrets={"AKIAEMBEDDED": "embedded-secret"}) as server:
        assert server.endpoint_url == f"http://127.0.0.1:{port}"
        local = server.storage_config(config)
        assert {b.endpoint_url for b in local.buckets.values()} == {server.endpoint_url}
        assert {b.addressing_style for b in local.buckets.values()} == {"path"}
        assert local.buckets["cfg-tokyo"].region == "ap-northeast-1"
        server.admin_client("ap-northeast-1").put_object(Bucket="cfg-tokyo", Key="k.dcm", Body=b"tokyo")

        from storage import BucketRegistry

        registry = BucketRegistry(local, environ={"E_AK": "AKIAEMBEDDED", "E_SK": "embedded-secret"})
        assert httpx.get(Presigner(registry).presign_get("cfg-tokyo", "k.dcm").url).content == b"tokyo"
        assert ObjectReader(registry).read_range("cfg-tokyo", "k.dcm", 0, 3) == b"tok"


def test_a_taken_port_fails_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(StorageError, match="cannot listen on 127.0.0.1"):
            EmbeddedS3(port=taken.getsockname()[1]).start()


def test_the_gate_refuses_what_s3_refuses() -> None:
    with embedded_storage(["eu-west-1"]) as s3:
        bucket = s3.buckets[0]
        s3.put(bucket.name, "k.dcm", b"data")
        presigner = Presigner(s3.registry())
        url = presigner.presign_get(bucket.name, "k.dcm").url

        unknown = httpx.get(url.replace(bucket.access_key_id, "AKIANOBODY"))
        assert (unknown.status_code, "<Code>InvalidAccessKeyId</Code>" in unknown.text) == (403, True)
        too_long = httpx.get(url.replace("X-Amz-Expires=300", "X-Amz-Expires=604801"))
        assert (too_long.status_code, "AuthorizationQueryParametersError" in too_long.text) == (400, True)
        malformed = httpx.get(url.replace("X-Amz-Date=", "X-Amz-Date=garbage"))
        assert malformed.status_code == 400
        future = Presigner(s3.registry(), clock=lambda: datetime.now(UTC) + timedelta(hours=1))
        assert httpx.get(future.presign_get(bucket.name, "k.dcm").url).status_code == 403
        other_object = httpx.get(url.replace("/k.dcm?", "/other.dcm?"))
        assert other_object.status_code == 403  # the key is part of what is signed
        assert httpx.get(url).content == b"data"


def test_without_secrets_any_key_is_accepted_but_expiry_still_applies() -> None:
    with embedded_storage(["us-west-2"], check_signatures=False) as s3:
        bucket = s3.buckets[0]
        s3.put(bucket.name, "k.dcm", b"data")
        url = Presigner(s3.registry()).presign_get(bucket.name, "k.dcm").url
        assert httpx.get(url.replace(bucket.access_key_id, "AKIANOBODY")).status_code == 200
        past = Presigner(s3.registry(), clock=lambda: datetime.now(UTC) - timedelta(minutes=10))
        assert httpx.get(past.presign_get(bucket.name, "k.dcm", expires_in=60).url).status_code == 403


@pytest.mark.parametrize(
    ("environ", "service"),
    [
        ({"HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=AKID/20261204/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=ab"}, "s3"),
        ({"HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=AKID/20261204/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=ab"}, "sts"),
        ({"QUERY_STRING": "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261204%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Signature=ab"}, "s3"),
        ({"QUERY_STRING": "X-Amz-Credential=AKID/20261204/eu-west-1/STS/aws4_request"}, "sts"),
        ({"QUERY_STRING": "list-type=2"}, None),
        ({}, None),
    ],
)
def test_the_service_a_request_is_signed_for_is_read_from_its_credential_scope(environ: dict[str, str], service: str | None) -> None:
    assert signed_for(environ) == service


def test_one_connection_serves_an_s3_get_and_an_sts_call() -> None:
    """S3 goes to moto's S3 application directly, STS through its dispatcher: both answer from the one endpoint."""
    with EmbeddedS3(buckets={"routing-bucket": "eu-west-1"}) as server:
        s3 = server.admin_client("eu-west-1")
        s3.put_object(Bucket="routing-bucket", Key="k", Body=b"routed")
        assert s3.get_object(Bucket="routing-bucket", Key="k")["Body"].read() == b"routed"
        sts = boto3.client("sts", region_name="us-east-1", endpoint_url=server.endpoint_url, aws_access_key_id="x", aws_secret_access_key="y")
        assert sts.get_caller_identity()["Account"].isdigit()
