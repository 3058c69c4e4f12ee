"""Publishing what Spark writes (lib/lookalike/publish/ through a local SparkSession): a failed
Spark write after another table was staged, a Spark-written directory of an older run migrated,
and the embed job (on the toy model) failing or finding its output locked."""

from __future__ import annotations

import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from lookalike import publish
from lookalike.config import load_config
from lookalike.errors import OutputError, OutputLockedError, TooManyErrorsError
from lookalike.jobs import embed as embed_job
from tests.support.neighbours_versions import ROWS, publish_local, versions_dir
from tests.support.paths import SAMPLE_DIR


def test_a_spark_write_that_fails_after_another_table_was_staged_leaves_both_outputs_intact(spark, tmp_path):
    """Like the embed job: the embeddings table is fully staged, then writing the errors table
    fails in one of its partitions. Both outputs keep the previous version, readable by Spark."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    emb, err = str(tmp_path / "emb"), str(tmp_path / "err")
    targets = {"embeddings": emb, "errors": err}
    with publish.OutputSet(spark, targets, "run-1") as outputs:
        spark.range(0, 40, numPartitions=4).withColumn("v", F.lit(1)).write.parquet(outputs.staging("embeddings"))
        spark.range(0, 4).withColumn("v", F.lit(1)).write.parquet(outputs.staging("errors"))
        outputs.commit({"embeddings": {"run_id": "run-1"}, "errors": {"run_id": "run-1"}})

    def explode(value):
        if value == 37:
            raise ValueError("injected failure in the last partition")
        return value

    boom = F.udf(explode, LongType())
    staged_parts = []
    with pytest.raises(Exception, match="injected failure"):
        with publish.OutputSet(spark, targets, "run-2") as outputs:
            spark.range(0, 80, numPartitions=4).withColumn("v", F.lit(2)).write.parquet(outputs.staging("embeddings"))
            staged_parts = [n for n in os.listdir(outputs.staging("embeddings")) if n.startswith("part-")]
            spark.range(0, 40, numPartitions=4).withColumn("v", boom("id")).write.parquet(outputs.staging("errors"))
            outputs.commit()
    assert len(staged_parts) == 4  # the failure came after a complete table had been written
    for path, rows in ((emb, 40), (err, 4)):
        table = spark.read.parquet(path)
        assert table.count() == rows and {r.v for r in table.select("v").distinct().collect()} == {1}
        assert publish.current_version(path) == "run-1"
        assert os.listdir(versions_dir(path)) == ["run-1"]
        assert not os.path.exists(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock"))


def test_an_older_plain_directory_is_migrated_and_a_foreign_one_refused(spark, tmp_path):
    out = str(tmp_path / "t")
    spark.range(5).write.parquet(out)  # what runs wrote before versioned outputs, with their summary
    with open(os.path.join(out, "_lookalike_summary.json"), "w") as summary:
        summary.write('{"run_id": "old"}')
    assert publish.resolve(out) == out
    publish_local(out, 2)
    assert os.path.islink(out) and pq.read_table(out).column("version").to_pylist() == [2] * ROWS
    kept = sorted(os.listdir(versions_dir(out)))
    assert kept[0].startswith("legacy-") and kept[1] == "run-0002"
    assert spark.read.parquet(os.path.join(versions_dir(out), kept[0])).count() == 5

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"is a directory lookalike did not write \(it holds notes.txt\)"):
        publish_local(str(foreign), 1)
    assert (foreign / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        publish_local(str(tmp_path / "afile"), 1)
    assert not os.path.exists(tmp_path / ".afile.lock") and not os.path.exists(tmp_path / ".home.lock")


# ---------------------------------------------------------------------------------------------
# The embed job, on the toy model: what is tested is publishing, the same whatever the backbone.


def embed_cfg(tmp_path, images, toy_overrides, *extra):
    return load_config(
        None,
        [
            f"input.uri={images}",
            *toy_overrides,
            "model.batch_size=4",
            "input.partition_size=4",
            f"output.embeddings={tmp_path}/emb",
            f"output.errors={tmp_path}/err",
            *extra,
        ],
    )


@pytest.fixture
def eight_images(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    for path in sorted(SAMPLE_DIR.rglob("*.jpg"))[::8]:
        (src / path.name).write_bytes(path.read_bytes())
    return src


def test_embed_job_failing_on_too_many_errors_publishes_nothing(spark, tmp_path, eight_images, toy_overrides):
    first = embed_job.run(spark, embed_cfg(tmp_path, eight_images, toy_overrides))
    before = spark.read.parquet(str(tmp_path / "emb")).toPandas().sort_values("item_id")
    for name in ("a", "b", "c"):
        (eight_images / f"broken-{name}.jpg").write_bytes(b"<html>503 Slow Down</html>")
    with pytest.raises(TooManyErrorsError, match="Nothing was published"):
        embed_job.run(spark, embed_cfg(tmp_path, eight_images, toy_overrides, "input.max_error_fraction=0.1"))
    after = spark.read.parquet(str(tmp_path / "emb")).toPandas().sort_values("item_id")
    assert after["run_id"].unique().tolist() == [first["run_id"]]
    pd.testing.assert_frame_equal(before.reset_index(drop=True), after.reset_index(drop=True))
    for name in ("emb", "err"):
        assert os.listdir(versions_dir(tmp_path / name)) == [first["run_id"]]
        assert publish.read_summary(str(tmp_path / name))["run_id"] == first["run_id"]
    assert not any(n.endswith(".lock") for n in os.listdir(tmp_path))


def test_embed_job_refuses_while_another_run_holds_the_output(spark, tmp_path, eight_images, toy_overrides):
    cfg = embed_cfg(tmp_path, eight_images, toy_overrides, "output.force_unlock=true")
    with publish.OutputSet(None, {"errors": cfg.output.errors}, "other-run"):
        with pytest.raises(OutputLockedError, match=r"output .*/err is locked by run other-run"):
            embed_job.run(spark, cfg)
        assert (tmp_path / ".err.lock").exists()
    assert not (tmp_path / "emb").exists() and not (tmp_path / "err").exists()
    assert not (tmp_path / ".emb.lock").exists()  # the lock it had taken on embeddings was given back
