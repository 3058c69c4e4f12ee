"""S3 faults: a fault-injecting proxy (tests/support/faultproxy.py) between the jobs and the moto server.

Transient faults (503 SlowDown, 500, dropped connections, bodies cut off half way) are retried
with backoff (s3.retry_mode, s3.max_attempts) and lose nothing; a key that always fails is one
fetch_error row after exactly s3.max_attempts tries; a listing that never succeeds fails the job
before anything is written. The proxy's counters prove that the requests went through the faults.

Here storage.fetch and listing without Spark; the embed job through the faults:
tests/spark/embed/test_embed_s3_faults.py.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lookalike.config import InputConfig, S3Config
from lookalike.embed import listing
from lookalike.io import storage
from tests.support.faultproxy import FAULT_KINDS, FaultProxy
from tests.support.paths import SAMPLE_DIR


@pytest.fixture(autouse=True)
def backoff_waits(monkeypatch) -> list:
    """The retries' back-off waits, recorded instead of slept. botocore's (from 1 s for throttling)
    and lookalike's own for broken bodies both wait with time.sleep; the tests count attempts, and
    sleeping through the waits took most of this file's 35 s. Nothing else here sleeps: moto runs
    in its own process and the proxy's threads never wait."""
    waits: list = []
    monkeypatch.setattr(time, "sleep", waits.append)
    return waits


def put_blobs(s3, bucket: str, n: int) -> dict[str, bytes]:
    blobs = {f"blobs/{i:03d} x.jpg": bytes([i % 251]) * (3000 + 17 * i) for i in range(n)}
    for key, data in blobs.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    return blobs


def fetch_all(proxy: FaultProxy, bucket: str, keys, **s3_settings) -> dict[str, bytes]:
    """Fetch concurrently, as decoding threads do: the proxy's decisions must not depend on order."""
    cfg = S3Config(endpoint_url=proxy.url, **{"max_attempts": 4, **s3_settings})
    keys = list(keys)
    with ThreadPoolExecutor(max_workers=8) as pool:
        data = pool.map(lambda key: storage.fetch(f"s3://{bucket}/{key}", cfg, 1 << 20), keys)
        return dict(zip(keys, data, strict=False))


def test_every_fault_kind_is_retried_and_the_proxy_is_deterministic_for_a_seed(s3, bucket, s3_endpoint, backoff_waits):
    blobs = put_blobs(s3, bucket, 40)
    seen = []
    for seed in (1, 1, 2):
        with FaultProxy(s3_endpoint, seed=seed, rates={"get": 0.3}, kinds=FAULT_KINDS) as proxy:
            assert fetch_all(proxy, bucket, blobs) == blobs  # every byte, despite the faults
            stats = proxy.stats
            # Each injected fault cost exactly one more request, and nothing else did.
            assert stats.requests["get"] == len(blobs) + stats.faults_for("get")
            for key in blobs:
                resource = ("get", f"{bucket}/{key}")
                assert stats.attempts[resource] == 1 + stats.failed[resource]
            assert {kind for (_, kind) in stats.faults} == set(FAULT_KINDS)
            seen.append(dict(stats.failed))
    assert seen[0] == seen[1] and seen[0] != seen[2]
    assert backoff_waits and all(0 <= wait <= 20 for wait in backoff_waits)  # retried after a back-off


@pytest.mark.parametrize("mode", ["standard", "adaptive", "legacy"])
def test_a_key_that_always_fails_is_tried_exactly_max_attempts_times(s3, bucket, s3_endpoint, mode):
    s3.put_object(Bucket=bucket, Key="bad.jpg", Body=b"x" * 1000)
    for seed in range(4):  # different mixes of request faults and bodies cut off half way
        with FaultProxy(s3_endpoint, seed=seed, always_fail={"bad.jpg"}, kinds=FAULT_KINDS) as proxy:
            with pytest.raises(storage.StorageError) as failed:
                fetch_all(proxy, bucket, ["bad.jpg"], max_attempts=3, retry_mode=mode)
            assert failed.value.kind == "fetch_error" and failed.value.transient  # a later run may succeed
            assert "gave up after 3 attempts (s3.max_attempts=3" in failed.value.message
            # botocore's retries and ours (for broken bodies) share one budget per object.
            assert proxy.stats.attempts[("get", f"{bucket}/bad.jpg")] == 3
    with FaultProxy(s3_endpoint, always_fail={"bad.jpg"}) as proxy:
        with pytest.raises(storage.StorageError):
            fetch_all(proxy, bucket, ["bad.jpg"], max_attempts=1, retry_mode=mode)
        assert proxy.stats.attempts[("get", f"{bucket}/bad.jpg")] == 1  # 1 = no retries


def test_a_body_cut_off_every_time_is_a_fetch_error_not_a_truncated_image(s3, bucket, s3_endpoint):
    s3.put_object(Bucket=bucket, Key="cut.jpg", Body=(SAMPLE_DIR / "dress").glob("*.jpg").__next__().read_bytes())
    with FaultProxy(s3_endpoint, always_fail={"cut.jpg"}, kinds=("truncate",)) as proxy:
        with pytest.raises(storage.StorageError) as failed:
            fetch_all(proxy, bucket, ["cut.jpg"], max_attempts=3)
        assert failed.value.kind == "fetch_error" and "connection dropped" in failed.value.message
        assert failed.value.transient
        assert proxy.stats.faults[("get", "truncate")] == 3


def test_listing_retries_transient_faults(s3, bucket, s3_endpoint):
    blobs = put_blobs(s3, bucket, 5)
    with FaultProxy(s3_endpoint, rates={"list": 1.0}, max_consecutive=2) as proxy:
        listed = listing.list_images(
            InputConfig(uri=f"s3://{bucket}/blobs", pattern="*"), S3Config(endpoint_url=proxy.url, max_attempts=4)
        )
        assert sorted(o.key for _, o in listed) == sorted(k.split("/", 1)[1] for k in blobs)
        assert proxy.stats.requests["list"] == 3 and proxy.stats.faults_for("list") == 2
