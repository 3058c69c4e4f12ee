"""The embed job on the tests' session through S3 faults: a fault-injecting proxy
(tests/support/faultproxy.py) between the job and the moto server; the toy model embeds. Transient
faults are retried and lose nothing; a key that always fails is one fetch_error row after exactly
s3.max_attempts tries; a listing that never succeeds fails the job before anything is written.
storage.fetch and listing alone: tests/unit/io/test_s3_faults.py.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from lookalike.config import load_config
from lookalike.embed import images, model
from lookalike.errors import InputError
from lookalike.jobs import embed as embed_job
from tests.support.faultproxy import FAULT_KINDS, FaultProxy
from tests.support.outputs import published_run, read_output
from tests.support.paths import SAMPLE_DIR

SEED = 6  # model.seed


def _clients_made_for(endpoint: str):
    """A mapInPandas function (the embed stage's kind of Python worker): this worker's pid and the
    S3 clients it has made for ``endpoint``."""

    def probe(frames):
        import os

        import pandas as pd

        from lookalike.io.s3client import clients_made

        for _ in frames:
            yield pd.DataFrame({"pid": [os.getpid()], "made": [clients_made(endpoint)]})

    return probe


@pytest.fixture
def job_config(toy_overrides):
    def make(tmp_path, uri: str, endpoint: str, *extra: str):
        return load_config(
            None,
            [
                f"input.uri={uri}",
                f"s3.endpoint_url={endpoint}",
                "s3.max_attempts=4",
                *toy_overrides,
                f"model.seed={SEED}",
                "model.batch_size=4",
                "input.partition_size=5",
                "input.max_error_fraction=0.2",
                f"output.embeddings={tmp_path}/out/emb",
                f"output.errors={tmp_path}/out/err",
                *extra,
            ],
        )

    return make


def test_embed_job_with_20pct_of_gets_failing_loses_nothing(
    spark, s3, bucket, s3_endpoint, tmp_path, job_config, toy_overrides
):
    photos = sorted(SAMPLE_DIR.rglob("*.jpg"))[::3]  # 20 images over all labels
    keys = {f"shop/{p.parent.name}/{p.name}": p for p in photos}
    for key, path in keys.items():
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    s3.put_object(Bucket=bucket, Key="shop/broken/always-503.jpg", Body=photos[0].read_bytes())

    with FaultProxy(
        s3_endpoint,
        seed=3,
        rates={"get": 0.2, "list": 1.0},
        max_consecutive=2,
        kinds=FAULT_KINDS,
        always_fail={"shop/broken/always-503.jpg"},
    ) as proxy:
        summary = embed_job.run(spark, job_config(tmp_path, f"s3://{bucket}/shop", proxy.url))
        stats = proxy.stats
        # Issue 24: one S3 client per worker process, not one per task and decode thread (each
        # resolved credentials again and opened its own pool). 5 tasks x 2 threads ran here.
        probe = spark.range(8, numPartitions=8).mapInPandas(_clients_made_for(proxy.url), "pid long, made long")
        made = [(row.pid, row.made) for row in probe.collect()]
        assert max(count for _, count in made) == 1, made

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

    emb = read_output(str(tmp_path / "out" / "emb")).to_pandas().set_index("item_id")
    err = read_output(str(tmp_path / "out" / "err")).to_pandas()
    assert err[["item_id", "error"]].values.tolist() == [["broken/always-503", "fetch_error"]]
    assert "gave up after 4 attempts" in err.loc[0, "message"]
    # The bytes that arrived are the bytes that were stored: same embeddings as the model on the files.
    ids = [k[len("shop/") :].rsplit(".", 1)[0] for k in keys]
    direct = model.Embedder(load_config(None, [*toy_overrides, f"model.seed={SEED}"]).model, threads=2)
    expected = direct.embed(np.stack([images.decode(p.read_bytes(), 0, direct.input_size)[0] for p in keys.values()]))
    np.testing.assert_allclose(np.stack(emb.loc[ids, "embedding"].to_numpy()), expected, rtol=1e-4, atol=1e-4)
    kinds = Counter({kind: n for (op, kind), n in stats.faults.items() if op == "get"})
    print(
        f"\nS3 FAULTS: {len(keys) + 1} objects, {sum(transient.values())} transient GET faults + 4 on "
        f"always-503 (by kind, all GETs: {dict(kinds)}), "
        f"list faults {stats.faults_for('list')}, embedded {summary['embedded']}, rows lost "
        f"{summary['listed'] - summary['embedded'] - summary['errors']}"
    )


def test_a_listing_that_keeps_failing_fails_the_job_before_anything_is_written(
    spark, s3, bucket, s3_endpoint, tmp_path, job_config
):
    s3.put_object(Bucket=bucket, Key="shop/a.jpg", Body=b"x")
    with FaultProxy(s3_endpoint, always_fail={"list"}, kinds=("slowdown", "internal", "drop")) as proxy:
        with pytest.raises(InputError) as failed:
            embed_job.run(spark, job_config(tmp_path, f"s3://{bucket}/shop", proxy.url, "s3.max_attempts=3"))
        assert proxy.stats.requests["list"] == 3 and proxy.stats.requests["get"] == 0
    message = str(failed.value)
    assert message.startswith(f"cannot list s3://{bucket}/shop") and "Nothing was written" in message
    # A service that keeps failing may recover: the scheduler retries (75), unlike a user mistake (2).
    assert "gave up after 3 attempts (s3.max_attempts=3" in message and failed.value.exit_code == 75
    # No table, no version, no lock left behind (the run may have made the empty parent directory).
    assert [p for p in (tmp_path / "out").rglob("*") if not p.is_dir()] == []
    assert published_run(str(tmp_path / "out" / "emb")) is None
