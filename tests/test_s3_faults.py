"""S3 faults: a fault-injecting proxy (tests/faultproxy.py) between the jobs and the moto server.

Transient faults (503 SlowDown, 500, dropped connections, bodies cut off half way) are retried
with backoff (s3.retry_mode, s3.max_attempts) and lose nothing; a key that always fails is one
fetch_error row after exactly s3.max_attempts tries; a listing that never succeeds fails the job
before anything is written. The proxy's counters prove that the requests went through the faults.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.support.paths import SAMPLE_DIR
from tests.support.faultproxy import FAULT_KINDS, FaultProxy
from lookalike import publish
from lookalike.embed import images, listing, model
from lookalike.io import storage
from lookalike.config import InputConfig, ModelConfig, S3Config, load_config
from lookalike.errors import InputError
from lookalike.jobs import embed as embed_job

SEED = 6  # model.seed (random-init weights: no download in tests)


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
        return dict(zip(keys, data))


def test_every_fault_kind_is_retried_and_the_proxy_is_deterministic_for_a_seed(s3, bucket, s3_endpoint):
    blobs = put_blobs(s3, bucket, 40)
    seen = []
    for seed in (1, 1, 2):
        with FaultProxy(s3_endpoint, seed=seed, rates={"get": 0.3}, kinds=FAULT_KINDS) as proxy:
            assert fetch_all(proxy, bucket, blobs) == blobs  # every byte, despite the faults
            stats = proxy.stats
            # Each injected fault cost exactly one more request, and nothing else did.
            assert stats.requests["get"] == len(blobs) + stats.faults_for("get")
            for key in blobs:
                resource = (("get", f"{bucket}/{key}"))
                assert stats.attempts[resource] == 1 + stats.failed[resource]
            assert {kind for (_, kind) in stats.faults} == set(FAULT_KINDS)
            seen.append(dict(stats.failed))
    assert seen[0] == seen[1] and seen[0] != seen[2]


@pytest.mark.parametrize("mode", ["standard", "adaptive", "legacy"])
def test_a_key_that_always_fails_is_tried_exactly_max_attempts_times(s3, bucket, s3_endpoint, mode):
    s3.put_object(Bucket=bucket, Key="bad.jpg", Body=b"x" * 1000)
    for seed in range(4):  # different mixes of request faults and bodies cut off half way
        with FaultProxy(s3_endpoint, seed=seed, always_fail={"bad.jpg"}, kinds=FAULT_KINDS) as proxy:
            with pytest.raises(storage.StorageError) as failed:
                fetch_all(proxy, bucket, ["bad.jpg"], max_attempts=3, retry_mode=mode)
            assert failed.value.kind == "fetch_error"
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
        assert proxy.stats.faults[("get", "truncate")] == 3


def test_listing_retries_transient_faults(s3, bucket, s3_endpoint):
    blobs = put_blobs(s3, bucket, 5)
    with FaultProxy(s3_endpoint, rates={"list": 1.0}, max_consecutive=2) as proxy:
        listed = listing.list_images(InputConfig(uri=f"s3://{bucket}/blobs", pattern="*"),
                                     S3Config(endpoint_url=proxy.url, max_attempts=4))
        assert sorted(o.key for _, o in listed) == sorted(k.split("/", 1)[1] for k in blobs)
        assert proxy.stats.requests["list"] == 3 and proxy.stats.faults_for("list") == 2


# --- through the embed job on Spark ------------------------------------------------------------

def job_config(tmp_path, uri: str, endpoint: str, *extra: str):
    return load_config(None, [
        f"input.uri={uri}", f"s3.endpoint_url={endpoint}", "s3.max_attempts=4", "model.weights=none",
        f"model.seed={SEED}", "model.batch_size=4", "input.partition_size=5", "input.max_error_fraction=0.2",
        f"output.embeddings={tmp_path}/out/emb", f"output.errors={tmp_path}/out/err", *extra,
    ])


def test_embed_job_with_20pct_of_gets_failing_loses_nothing_random_init_weights(spark, s3, bucket, s3_endpoint, tmp_path):
    photos = sorted(SAMPLE_DIR.rglob("*.jpg"))[::3]  # 20 images over all labels
    keys = {f"shop/{p.parent.name}/{p.name}": p for p in photos}
    for key, path in keys.items():
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    s3.put_object(Bucket=bucket, Key="shop/broken/always-503.jpg", Body=photos[0].read_bytes())

    with FaultProxy(s3_endpoint, seed=3, rates={"get": 0.2, "list": 1.0}, max_consecutive=2,
                    kinds=FAULT_KINDS, always_fail={"shop/broken/always-503.jpg"}) as proxy:
        summary = embed_job.run(spark, job_config(tmp_path, f"s3://{bucket}/shop", proxy.url))
        stats = proxy.stats

    # Listing: two failures in a row, then the page: retried, not fatal.
    assert stats.faults_for("list") == 2 and stats.requests["list"] == 3
    # Every image embedded; the always-failing key is one error row after exactly 4 attempts.
    assert summary["listed"] == len(keys) + 1
    assert summary["embedded"] == len(keys) and summary["errors_by_kind"] == {"fetch_error": 1}
    assert stats.attempts[("get", f"{bucket}/shop/broken/always-503.jpg")] == 4
    transient = {k: stats.failed[("get", f"{bucket}/{k}")] for k in keys}
    # The path really went through faults (seed 3 picks 6, of all four kinds, for these keys)...
    assert sum(transient.values()) == 6
    assert {kind for (op, kind) in stats.faults if op == "get"} == set(FAULT_KINDS)
    for key in keys:  # ...and each one cost exactly one retry: no task was retried by Spark
        assert stats.attempts[("get", f"{bucket}/{key}")] == 1 + transient[key]

    emb = pq.read_table(publish.resolve(str(tmp_path / "out" / "emb"))).to_pandas().set_index("item_id")
    err = pq.read_table(publish.resolve(str(tmp_path / "out" / "err"))).to_pandas()
    assert err[["item_id", "error"]].values.tolist() == [["broken/always-503", "fetch_error"]]
    assert "gave up after 4 attempts" in err.loc[0, "message"]
    # The bytes that arrived are the bytes that were stored: same embeddings as the model on the files.
    ids = [k[len("shop/"):].rsplit(".", 1)[0] for k in keys]
    direct = model.Embedder(ModelConfig(weights="none", seed=SEED), threads=2)
    expected = direct.embed(np.stack([images.decode(p.read_bytes())[0] for p in keys.values()]))
    np.testing.assert_allclose(np.stack(emb.loc[ids, "embedding"].to_numpy()), expected, rtol=1e-4, atol=1e-4)
    kinds = Counter({kind: n for (op, kind), n in stats.faults.items() if op == "get"})
    print(f"\nS3 FAULTS: {len(keys) + 1} objects, {sum(transient.values())} transient GET faults + 4 on "
          f"always-503 (by kind, all GETs: {dict(kinds)}), "
          f"list faults {stats.faults_for('list')}, embedded {summary['embedded']}, rows lost "
          f"{summary['listed'] - summary['embedded'] - summary['errors']}")


def test_a_listing_that_keeps_failing_fails_the_job_before_anything_is_written(spark, s3, bucket, s3_endpoint, tmp_path):
    s3.put_object(Bucket=bucket, Key="shop/a.jpg", Body=b"x")
    with FaultProxy(s3_endpoint, always_fail={"list"}, kinds=("slowdown", "internal", "drop")) as proxy:
        with pytest.raises(InputError) as failed:
            embed_job.run(spark, job_config(tmp_path, f"s3://{bucket}/shop", proxy.url, "s3.max_attempts=3"))
        assert proxy.stats.requests["list"] == 3 and proxy.stats.requests["get"] == 0
    message = str(failed.value)
    assert message.startswith(f"cannot list s3://{bucket}/shop") and "Nothing was written" in message
    assert "gave up after 3 attempts (s3.max_attempts=3" in message and failed.value.exit_code == 2
    # No table, no version, no lock left behind (the run may have made the empty parent directory).
    assert [p for p in (tmp_path / "out").rglob("*") if not p.is_dir()] == []
    assert publish.current_version(str(tmp_path / "out" / "emb")) is None
