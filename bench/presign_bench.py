"""Time to presign a whole series (500 GET URLs): our batch SigV4 path against botocore's generate_presigned_url.

Presigning is offline (no request is sent), so this needs no S3 and no
network. Both sides sign the same 500 locations with the same client
configuration, credentials, response overrides (content type + download
name) and lifetime; before timing, the two outputs are checked to be
identical for a pinned signing time. Prints best of N runs for each and the ratio.

    python bench/presign_bench.py [--urls 500] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from unittest import mock
from urllib.parse import parse_qs, urlsplit

from imaging_sync.config import BucketConfig, StorageConfig
from storage import DICOM_CONTENT_TYPE, BucketRegistry, Presigner

BUCKET = "partner-b-dicom"
ENV = {"BENCH_AK": "AKIABENCHEXAMPLE0001", "BENCH_SK": "bench/secret+key=example", "BENCH_TOKEN": "bench-session-token"}


def best_of(runs: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    config = StorageConfig(
        buckets={
            BUCKET: BucketConfig(
                region="eu-west-1",
                auth="keys",
                access_key_id_env="BENCH_AK",
                secret_access_key_env="BENCH_SK",
                session_token_env="BENCH_TOKEN",
            )
        }
    )
    registry = BucketRegistry(config, environ=ENV)
    client = registry.client(BUCKET)
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.1.2"
    locations = [(BUCKET, f"studies/{study}/series/{series}/{i:05d}.dcm", f"{i:05d}.dcm") for i in range(args.urls)]

    def ours(presigner: Presigner) -> list[str]:
        return [u.url for u in presigner.presign_many(locations)]

    def botocores() -> list[str]:
        urls = []
        for bucket, key, filename in locations:
            params = {
                "Bucket": bucket,
                "Key": key,
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
                "ResponseContentType": DICOM_CONTENT_TYPE,
            }
            urls.append(client.generate_presigned_url("get_object", Params=params, ExpiresIn=300))
        return urls

    # Same instant on both sides: the URLs must be identical.
    pinned = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with mock.patch("botocore.auth.get_current_datetime", lambda remove_tzinfo=True: pinned.replace(tzinfo=None)):
        reference = botocores()
    mine = ours(Presigner(registry, clock=lambda: pinned))
    identical = mine == reference
    if not identical:
        bad = next(i for i, (a, b) in enumerate(zip(mine, reference, strict=True)) if a != b)
        print(f"MISMATCH at {bad}:\n  ours     {mine[bad]}\n  botocore {reference[bad]}", file=sys.stderr)
    assert parse_qs(urlsplit(mine[0]).query)["X-Amz-Security-Token"] == [ENV["BENCH_TOKEN"]]

    presigner = Presigner(registry)
    ours(presigner)  # warm: endpoint resolved, signing key derived
    botocores()
    t_ours = best_of(args.runs, lambda: ours(presigner))
    t_boto = best_of(args.runs, botocores)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}")
    print(f"URLs per run: {args.urls}, best of {args.runs} runs; outputs identical to botocore: {'yes' if identical else 'NO'}")
    print(f"  storage.Presigner.presign_many      {t_ours * 1000:8.2f} ms  ({t_ours / args.urls * 1e6:6.1f} µs/URL)")
    print(f"  botocore generate_presigned_url      {t_boto * 1000:8.2f} ms  ({t_boto / args.urls * 1e6:6.1f} µs/URL)")
    print(f"  ratio botocore / ours                {t_boto / t_ours:8.1f}x")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
