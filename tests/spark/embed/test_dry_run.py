"""--dry-run: list and plan, print what a run would do, and touch nothing else: no image fetched
(requests counted at a real S3 server), no model loaded, no lock taken, nothing written. In the
tests' session with the toy model; tests/e2e/test_embed_submit.py runs one through ./spark-submit.sh."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from lookalike.config import load_config
from lookalike.io.current import current
from lookalike.jobs import embed as embed_job
from tests.support.faultproxy import FaultProxy
from tests.support.outputs import published_run
from tests.support.paths import ROOT, SAMPLE_DIR
from tests.support.s3 import upload_dir


@pytest.fixture
def cfg_for(toy_overrides):
    def make(endpoint, uri, out, *extra):
        return load_config(
            None,
            [
                f"input.uri={uri}",
                f"s3.endpoint_url={endpoint}",
                *toy_overrides,
                "model.seed=3",
                "model.batch_size=4",
                "input.partition_size=4",
                "input.incremental=true",
                f"output.embeddings={out}/emb",
                f"output.errors={out}/err",
                *extra,
            ],
        )

    return make


def snapshot(root) -> dict:
    """Every file and link under ``root`` with its size and mtime."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_a_dry_run_counts_what_a_run_would_do_and_fetches_and_writes_nothing(
    spark, s3, bucket, s3_endpoint, tmp_path, cfg_for
):
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
    s3.copy_object(
        Bucket=bucket, Key=f"catalogue/{names[1]}", CopySource={"Bucket": bucket, "Key": f"catalogue/{names[2]}"}
    )
    extra = sorted(SAMPLE_DIR.rglob("*.jpg"))[-2:]
    for path in extra:
        s3.upload_file(str(path), bucket, f"catalogue/{path.name}")
    before = snapshot(out)

    with FaultProxy(s3_endpoint) as proxy:
        summary = embed_job.run(spark, cfg_for(proxy.url, f"s3://{bucket}/catalogue/", out), dry_run=True)
    assert summary["dry_run"] is True and summary["published"] is False
    assert {k: summary[k] for k in ("listed", "attempted", "new", "changed", "retried", "reused", "deleted")} == {
        "listed": 10,
        "attempted": 4,
        "new": 2,
        "changed": 1,
        "retried": 1,
        "reused": 6,
        "deleted": 1,
    }
    assert summary["previous_version"] == str(current(str(out / "emb")).snapshot_id) and summary["embedded"] == 0
    # The bucket was listed; no image was fetched, nothing was written anywhere (no lock either).
    assert dict(proxy.stats.requests) == {"list": proxy.stats.requests["list"]} and proxy.stats.requests["list"] >= 1
    assert snapshot(out) == before
    assert published_run(str(out / "emb")) == first["run_id"]

    # What the dry run said is what the run does.
    real = embed_job.run(spark, cfg_for(s3_endpoint, f"s3://{bucket}/catalogue/", out, "input.max_error_fraction=0.5"))
    assert {k: real[k] for k in ("listed", "attempted", "new", "changed", "retried", "reused", "deleted")} == {
        k: summary[k] for k in ("listed", "attempted", "new", "changed", "retried", "reused", "deleted")
    }


def test_main_dry_run_prints_the_summary_line_and_creates_no_output(spark, tmp_path, toy_overrides, capsys, caplog):
    """`embed --dry-run` through main, in the session (the wrapper's own pass-through of --dry-run:
    tests/e2e/test_embed_submit.py)."""
    caplog.set_level(logging.INFO, logger="lookalike")
    overrides = [
        f"input.uri={SAMPLE_DIR}",
        *toy_overrides,
        f"output.embeddings={tmp_path}/out/emb",
        f"output.errors={tmp_path}/out/err",
    ]
    status = embed_job.main(
        ["--dry-run", "--config", str(ROOT / "conf" / "local.yaml"), *(a for s in overrides for a in ("--set", s))],
        spark=spark,
    )
    assert status == 0, caplog.text[-3000:]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    listed = len(list(SAMPLE_DIR.rglob("*.jpg")))
    assert summary["dry_run"] is True and summary["listed"] == summary["new"] == summary["attempted"] == listed
    assert summary["reused"] == summary["changed"] == summary["deleted"] == summary["retried"] == 0
    assert not (tmp_path / "out").exists()
    assert "would embed" in caplog.text and "model loads" not in caplog.text
