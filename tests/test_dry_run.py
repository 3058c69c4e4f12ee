"""--dry-run: list and plan, print what a run would do, and touch nothing else: no image fetched
(requests counted at a real S3 server), no model loaded, no lock taken, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest

from lookalike import publish
from lookalike.config import load_config
from lookalike.jobs import embed as embed_job

from tests.support.paths import ROOT, SAMPLE_DIR
from tests.support.procs import run_script
from tests.support.s3 import upload_dir
from tests.support.faultproxy import FaultProxy


def cfg_for(endpoint, uri, out, *extra):
    return load_config(None, [
        f"input.uri={uri}", f"s3.endpoint_url={endpoint}", "model.weights=none", "model.seed=3",
        "model.batch_size=4", "model.precision=float32", "model.runtime=keras", "input.partition_size=4",
        "input.incremental=true", f"output.embeddings={out}/emb", f"output.errors={out}/err", *extra])


def snapshot(root) -> dict:
    """Every file and link under ``root`` with its size and mtime."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_a_dry_run_counts_what_a_run_would_do_and_fetches_and_writes_nothing_random_init_weights(
        spark, s3, bucket, s3_endpoint, tmp_path):
    images = tmp_path / "images"
    for path in sorted(SAMPLE_DIR.rglob("*.jpg"))[:8]:
        images.mkdir(exist_ok=True)
        shutil.copy(path, images / path.name)
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    upload_dir(s3, bucket, images, "catalogue/")
    out = tmp_path / "out"  # Spark here has no s3a: tables are local, images on S3
    first = embed_job.run(spark, cfg_for(s3_endpoint, f"s3://{bucket}/catalogue/", out, "input.max_error_fraction=0.5"))
    assert (first["embedded"], first["errors"]) == (8, 1)

    # Since then: two new images, one replaced, one deleted.
    names = sorted(p.name for p in images.iterdir() if p.name != "broken.jpg")
    s3.delete_object(Bucket=bucket, Key=f"catalogue/{names[0]}")
    s3.copy_object(Bucket=bucket, Key=f"catalogue/{names[1]}", CopySource={"Bucket": bucket, "Key": f"catalogue/{names[2]}"})
    extra = sorted(SAMPLE_DIR.rglob("*.jpg"))[-2:]
    for path in extra:
        s3.upload_file(str(path), bucket, f"catalogue/{path.name}")
    before = snapshot(out)

    with FaultProxy(s3_endpoint) as proxy:
        summary = embed_job.run(spark, cfg_for(proxy.url, f"s3://{bucket}/catalogue/", out), dry_run=True)
    assert summary["dry_run"] is True and summary["published"] is False
    assert {k: summary[k] for k in ("listed", "attempted", "new", "changed", "retried", "reused", "deleted")} == \
        {"listed": 10, "attempted": 4, "new": 2, "changed": 1, "retried": 1, "reused": 6, "deleted": 1}
    assert summary["previous_version"] == first["run_id"] and summary["embedded"] == 0
    # The bucket was listed; no image was fetched, nothing was written anywhere (no lock either).
    assert dict(proxy.stats.requests) == {"list": proxy.stats.requests["list"]} and proxy.stats.requests["list"] >= 1
    assert snapshot(out) == before
    assert publish.current_version(str(out / "emb")) == first["run_id"]

    # What the dry run said is what the run does.
    real = embed_job.run(spark, cfg_for(s3_endpoint, f"s3://{bucket}/catalogue/", out, "input.max_error_fraction=0.5"))
    assert {k: real[k] for k in ("listed", "attempted", "new", "changed", "retried", "reused", "deleted")} == \
        {k: summary[k] for k in ("listed", "attempted", "new", "changed", "retried", "reused", "deleted")}


@pytest.mark.slow  # a spark-submit application of its own
def test_spark_submit_dry_run_prints_the_summary_line_and_creates_no_output(tmp_path):
    result = run_script(["./spark-submit.sh", "embed", "--dry-run", "--config", str(ROOT / "conf" / "local.yaml"),
                         "--set", f"input.uri={SAMPLE_DIR}", "--set", f"output.embeddings={tmp_path}/out/emb",
                         "--set", f"output.errors={tmp_path}/out/err"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    listed = len(list(SAMPLE_DIR.rglob("*.jpg")))
    assert summary["dry_run"] is True and summary["listed"] == summary["new"] == summary["attempted"] == listed
    assert summary["reused"] == summary["changed"] == summary["deleted"] == summary["retried"] == 0
    assert not (tmp_path / "out").exists()
    output = result.stdout + result.stderr  # spark-submit merges the driver's stderr into stdout
    assert "would embed" in output and "model loads" not in output
