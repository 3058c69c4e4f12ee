"""Incremental embed runs (input.incremental=true): only new, changed and previously failed images
are embedded; the table equals a full recompute; a model change recomputes everything."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lookalike import publish, schemas
from lookalike.config import OutputConfig, load_config
from lookalike.embed import plan as incremental
from lookalike.embed.stage import ITEMS
from lookalike.errors import TooManyErrorsError
from lookalike.io.current import current
from lookalike.jobs import embed as embed_job
from lookalike.publish import lineage
from lookalike.schemas import names, spark_schema
from tests.support import plan_oracle as oracle
from tests.support.embed_rows import assert_embeddings_agree
from tests.support.outputs import published_run, read_output
from tests.support.paths import SAMPLE_DIR

FP, WEIGHTS = "fp1", "random-init:seed=3"


# ---------------------------------------------------------------------------------------------
# The plan: Spark joins, checked against the pandas plan it replaced (tests/support/plan_oracle.py).


def items(*specs):
    """specs: (item_id, version) -> ITEMS rows."""
    return pd.DataFrame(
        {
            "item_id": [i for i, _ in specs],
            "uri": [f"file:///x/{i}.jpg" for i, _ in specs],
            "source_version": [v for _, v in specs],
            "source_bytes": pd.array([1] * len(specs), dtype="Int64"),
        },
        columns=names(ITEMS),
    )


def previous(*specs, fp=FP, weights=WEIGHTS):
    return pd.DataFrame(
        {
            "item_id": [i for i, _ in specs],
            "uri": [f"file:///x/{i}.jpg" for i, _ in specs],
            "source_version": [v for _, v in specs],
            "model_fingerprint": fp,
            "weights": weights,
        },
        columns=incremental.KEY_COLUMNS,
    )


def planned(spark, listed, rows, failed=None, fp=FP, weights=WEIGHTS):
    """The Spark plan of ``listed`` against ``rows`` (None: no previous table) and ``failed`` ids
    (None: no errors table), after asserting that it equals the oracle's."""
    from pyspark.sql.types import StringType, StructField, StructType

    frame = (
        spark.createDataFrame(listed, schema=spark_schema(ITEMS))
        if len(listed)
        else spark.createDataFrame([], spark_schema(ITEMS))
    )
    prev = None
    if rows is not None:
        keys = StructType([StructField(c, StringType(), True) for c in incremental.KEY_COLUMNS])
        errors = None if failed is None else spark.createDataFrame([(f,) for f in failed], "item_id string")
        prev = incremental.Previous(
            "/prev",
            "v1",
            spark.createDataFrame(rows.astype(object).where(rows.notna(), None).values.tolist(), keys),
            errors,
        )
    plan = incremental.plan(frame, prev, fp, weights)
    try:
        want = oracle.plan(listed, rows, failed, fp, weights)
        got = {
            "to_embed": sorted(r["item_id"] for r in plan.to_embed.collect()),
            "reused": sorted(r["item_id"] for r in plan.reused_ids.collect()),
            "counts": plan.counts,
            "carry_over": plan.carry_over,
            "changed_model": plan.reason.startswith("full recompute: model settings changed"),
        }
        assert got == want
        assert plan.to_embed.columns == names(ITEMS) and plan.attempted == len(want["to_embed"])
        assert plan.listed == len(listed)
        rows_to_embed = {r["item_id"]: r.asDict() for r in plan.to_embed.collect()}
        assert rows_to_embed == {
            r["item_id"]: {**r, "source_bytes": int(r["source_bytes"])}
            for r in listed.astype(object).where(listed.notna(), None).to_dict("records")
            if r["item_id"] in rows_to_embed
        }
    finally:
        plan.release()
    return plan


def test_plan_embeds_new_changed_and_failed_items_and_drops_deleted_ones(spark):
    listed = items(("a", "1"), ("b", "2"), ("c", "9"), ("d", "1"), ("f", "1"), ("g", None))
    prev = previous(("a", "1"), ("b", "1"), ("c", "9"), ("e", "1"), ("g", None))
    plan = planned(spark, listed, prev, failed=["f"])
    # b changed, e deleted, g has no version to compare: neither is carried over.
    assert plan.counts == {"new": 1, "changed": 2, "retried": 1, "reused": 2, "deleted": 1, "stale_errors": 0}
    assert plan.carry_over and not plan.unchanged


@pytest.mark.version_independent
def test_plan_with_nothing_changed_is_unchanged_and_a_moved_key_is_re_embedded(spark):
    prev = previous(("a", "1"), ("b", "1"))
    assert planned(spark, items(("a", "1"), ("b", "1")), prev, failed=[]).unchanged
    assert planned(spark, items(("a", "1"), ("b", "1")), prev, failed=None).unchanged
    moved = items(("a", "1"), ("b", "1"))
    moved.loc[1, "uri"] = "file:///elsewhere/b.jpg"
    assert planned(spark, moved, prev).counts["changed"] == 1
    # An error row for an image that is gone must disappear too: that is a change to publish.
    gone = planned(spark, items(("a", "1"), ("b", "1")), prev, failed=["z"])
    assert gone.counts["stale_errors"] == 1 and not gone.unchanged


@pytest.mark.version_independent
@pytest.mark.parametrize("fp,weights", [("fp2", WEIGHTS), (FP, "file:w.h5@md5:abc")])
def test_plan_recomputes_everything_when_the_model_or_weights_changed(spark, fp, weights):
    plan = planned(spark, items(("a", "1"), ("b", "1")), previous(("a", "1"), ("b", "1")), fp=fp, weights=weights)
    assert not plan.carry_over and plan.reason.startswith("full recompute: model settings changed")
    assert f"-> {fp}" in plan.reason


@pytest.mark.version_independent
def test_plan_recomputes_ids_that_appear_twice_in_the_previous_table_and_rows_of_another_model(spark):
    plan = planned(spark, items(("a", "1"), ("b", "1")), previous(("a", "1"), ("a", "1"), ("b", "1")))
    assert plan.counts["changed"] == 1 and plan.counts["reused"] == 1
    mixed = pd.concat([previous(("a", "1")), previous(("b", "1"), fp="old")], ignore_index=True)
    assert planned(spark, items(("a", "1"), ("b", "1")), mixed).counts["changed"] == 1


@pytest.mark.version_independent
def test_without_a_previous_table_the_plan_is_a_full_run(spark):
    plan = planned(spark, items(("a", "1")), None)
    assert not plan.carry_over and "no previous" in plan.reason
    assert planned(spark, items(), None).listed == 0


def test_the_spark_plan_equals_the_pandas_plan_on_random_catalogues(spark):
    """Random listings against random previous tables and error lists, across partitions: every
    outcome, every id, every count equal to the pandas plan's."""
    rng = np.random.default_rng(7)
    for case in range(6):
        ids = [f"item-{i:04d}" for i in range(300)]
        listed_ids = sorted(str(i) for i in rng.choice(ids, size=200, replace=False))
        listed = items(*[(i, str(rng.integers(3)) if rng.random() > 0.05 else None) for i in listed_ids])
        moved = rng.random(len(listed)) < 0.05
        listed.loc[moved, "uri"] = "s3://elsewhere/" + listed.loc[moved, "item_id"]
        # Plain str: numpy strings do not pickle into Spark 3.5's JVM (make test-compat).
        previous_ids = [str(i) for i in [*rng.choice(ids, size=180, replace=False), *rng.choice(ids, size=3)]]
        rows = previous(*[(i, str(rng.integers(3)) if rng.random() > 0.05 else None) for i in previous_ids])
        if case % 3 == 1:
            rows.loc[rng.random(len(rows)) < 0.1, "model_fingerprint"] = "old"
        failed = [str(i) for i in rng.choice(ids, size=20)] if case % 2 else None
        planned(spark, listed, rows.sample(frac=1, random_state=case).reset_index(drop=True), failed)


# ---------------------------------------------------------------------------------------------
# The embed job on a real SparkSession, with the toy model.


@pytest.fixture
def cfg_for(toy_overrides):
    """The job's config, embedding with the toy model (tests/support/toy_model.py)."""

    def make(tmp_path, images, out="out", *extra):
        return load_config(
            None,
            [
                f"input.uri={images}",
                *toy_overrides,
                "model.seed=3",
                "model.batch_size=4",
                "input.partition_size=4",
                "input.incremental=true",
                "input.max_error_fraction=0.5",
                f"output.embeddings={tmp_path}/{out}/emb",
                f"output.errors={tmp_path}/{out}/err",
                *extra,
            ],
        )

    return make


def table(spark, path) -> pd.DataFrame:
    return read_output(path).to_pandas().sort_values("item_id").reset_index(drop=True)


def test_incremental_runs_embed_only_what_changed_and_equal_a_full_recompute(spark, tmp_path, cfg_for):
    samples = sorted(SAMPLE_DIR.rglob("*.jpg"))
    images = tmp_path / "images"
    images.mkdir()
    for path in samples[:12]:
        shutil.copy(path, images / path.name)
    emb = tmp_path / "out" / "emb"

    first = embed_job.run(spark, cfg_for(tmp_path, images))
    assert (first["attempted"], first["embedded"], first["reused"]) == (12, 12, 0)
    assert first["plan"] == "full run: no previous embeddings table"
    one = table(spark, emb)

    second = embed_job.run(spark, cfg_for(tmp_path, images))
    assert (second["attempted"], second["embedded"], second["reused"], second["published"]) == (0, 0, 12, False)
    assert published_run(str(emb)) == first["run_id"]
    first_snapshot = str(current(str(emb)).snapshot_id)
    pd.testing.assert_frame_equal(table(spark, emb), one)

    for path in samples[12:17]:  # add 5
        shutil.copy(path, images / path.name)
    changed = [images / samples[0].name, images / samples[1].name]
    for target, source in zip(changed, samples[20:22], strict=False):  # change 2: other pictures under the same keys
        shutil.copy(source, target)
    deleted = images / samples[5].name
    deleted.unlink()  # delete 1
    third = embed_job.run(spark, cfg_for(tmp_path, images))
    assert (third["attempted"], third["embedded"], third["errors"]) == (7, 7, 0)
    assert (third["new"], third["changed"], third["reused"], third["deleted"]) == (5, 2, 9, 1)
    assert third["previous_version"] == first_snapshot

    full = embed_job.run(spark, cfg_for(tmp_path, images, "full", "input.incremental=false"))
    assert full["embedded"] == 16
    got, want = table(spark, emb), table(spark, tmp_path / "full" / "emb")
    assert deleted.stem not in set(got["item_id"])
    same = [
        "item_id",
        "uri",
        "source_version",
        "source_bytes",
        "width",
        "height",
        "model",
        "weights",
        "pooling",
        "dim",
        "model_fingerprint",
    ]
    pd.testing.assert_frame_equal(got[same], want[same])
    assert_embeddings_agree(got["embedding"], want["embedding"])
    assert third["embeddings_content"] == full["embeddings_content"]

    # Carried-over rows are the previous rows, bit for bit, with the run that computed them.
    kept = got[got["run_id"] == first["run_id"]]
    assert len(kept) == 9 and set(got.loc[got["run_id"] != first["run_id"], "run_id"]) == {third["run_id"]}
    before = one.set_index("item_id").loc[kept["item_id"]]
    assert (before["embedded_at"].to_numpy() == kept["embedded_at"].to_numpy()).all()
    assert all(np.array_equal(a, b) for a, b in zip(before["embedding"], kept["embedding"], strict=False))
    assert set(got.loc[got["run_id"] == third["run_id"], "item_id"]) == {p.stem for p in samples[12:17]} | {
        p.stem for p in changed
    }

    # A model change (pooling) recomputes everything.
    fourth = embed_job.run(spark, cfg_for(tmp_path, images, "out", "model.pooling=max"))
    assert (fourth["attempted"], fourth["reused"]) == (16, 0)
    assert fourth["plan"].startswith("full recompute: model settings changed")
    assert set(table(spark, emb)["pooling"]) == {"max"}


@pytest.mark.version_independent
def test_failed_images_are_retried_every_run_and_downstream_sees_no_change(spark, tmp_path, cfg_for):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(SAMPLE_DIR.rglob("*.jpg"))[::10]:
        shutil.copy(path, images / path.name)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    first = embed_job.run(spark, cfg_for(tmp_path, images))
    assert (first["embedded"], first["errors"]) == (6, 1)
    identity = lineage.embeddings_identity(str(tmp_path / "out" / "emb"))
    assert identity == first["embeddings_content"]

    # What a downstream job (neighbours) does: record its inputs, and skip when they are the same.
    inputs = {"embeddings": identity, "settings": "k=10"}
    downstream = str(tmp_path / "out" / "neighbours")
    output = OutputConfig(embeddings=str(tmp_path / "out" / "emb"), neighbours=downstream)
    with publish.OutputSet(spark, output, ["neighbours"], "n-run-1") as outputs:
        empty = schemas.arrow_schema(schemas.NEIGHBOURS).empty_table()
        pq.write_table(empty, f"{outputs.staging('neighbours')}/part-00000.parquet")
        outputs.commit({"neighbours": {"run_id": "n-run-1", "inputs": inputs}})
    assert lineage.unchanged_since(downstream, inputs)["run_id"] == "n-run-1"
    assert lineage.unchanged_since(downstream, {**inputs, "settings": "k=20"}) is None

    second = embed_job.run(spark, cfg_for(tmp_path, images))  # the broken image is tried again
    assert (second["attempted"], second["retried"], second["embedded"], second["errors"]) == (1, 1, 0, 1)
    assert second["published"] and published_run(str(tmp_path / "out" / "err")) == second["run_id"]
    errors = table(spark, tmp_path / "out" / "err")
    assert list(errors["item_id"]) == ["broken"] and list(errors["run_id"]) == [second["run_id"]]
    # A new version with the same embeddings: the downstream job has nothing to do.
    assert lineage.embeddings_identity(str(tmp_path / "out" / "emb")) == identity
    assert lineage.unchanged_since(downstream, inputs) is not None

    shutil.copy(next(SAMPLE_DIR.rglob("*.jpg")), images / "broken.jpg")  # fixed upstream
    third = embed_job.run(spark, cfg_for(tmp_path, images))
    assert (third["attempted"], third["embedded"], third["errors"], third["reused"]) == (1, 1, 0, 6)
    assert len(table(spark, tmp_path / "out" / "err")) == 0
    new_identity = lineage.embeddings_identity(str(tmp_path / "out" / "emb"))
    assert new_identity != identity
    assert lineage.unchanged_since(downstream, {**inputs, "embeddings": new_identity}) is None
    assert current(str(tmp_path / "out" / "emb")).format == "iceberg"


def sample_images(tmp_path, count: int):
    """A folder of the first ``count`` sample photos."""
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(SAMPLE_DIR.rglob("*.jpg"))[:count]:
        shutil.copy(path, images / path.name)
    return images


@pytest.mark.version_independent
def test_max_error_fraction_counts_the_images_a_run_tried_not_the_ones_it_reused(spark, tmp_path, cfg_for):
    # Issue 24: a new prefix whose every image fails was hidden by the reused ones (3 of 9 < 50%).
    images = sample_images(tmp_path, 6)
    first = embed_job.run(spark, cfg_for(tmp_path, images))
    assert first["embedded"] == 6 and first["error_fraction"] == 0.0
    for name in ("a", "b", "c"):
        (images / f"new-{name}.jpg").write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(TooManyErrorsError) as refused:
        embed_job.run(spark, cfg_for(tmp_path, images))
    message = str(refused.value)
    assert message.startswith("3 of 3 new or changed images failed (100.0%; 9 listed, 6 reused, 0 retried)")
    assert "Nothing was published" in message
    assert publish.read_summary(str(tmp_path / "out" / "emb"))["run_id"] == first["run_id"]
    # The failing images are named: beside the outputs, not published as a table.
    report = next((tmp_path / "out").glob("err.failed-*.csv"))
    assert f"listed in {report}." in message
    rows = report.read_text().splitlines()
    assert rows[0] == "item_id,uri,error,message" and len(rows) == 4
    assert sorted(r.split(",")[0] for r in rows[1:]) == ["new-a", "new-b", "new-c"]
    assert all(r.split(",")[2] == "decode_error" for r in rows[1:])


def as_earlier_release(table_dir, version: str, summary: dict) -> None:
    """Rewrite an output into the layout earlier releases published: its rows in a version folder
    beside it with the summary file, and a symbolic link at the output's path."""
    versions = table_dir.parent / f".{table_dir.name}.versions" / version
    versions.mkdir(parents=True)
    for i, uri in enumerate(current(str(table_dir)).files):
        shutil.copy(uri[len("file://") :], versions / f"part-{i:05d}.parquet")
    (versions / "_lookalike_summary.json").write_text(json.dumps(summary))
    shutil.rmtree(table_dir)
    os.symlink(os.path.join(f".{table_dir.name}.versions", version), table_dir)


def test_an_earlier_releases_tables_are_carried_over_without_embedding_anything_again(spark, tmp_path, cfg_for):
    images = sample_images(tmp_path, 8)
    first = embed_job.run(spark, cfg_for(tmp_path, images))
    before = table(spark, tmp_path / "out" / "emb")
    out = tmp_path / "out"
    for name in ("emb", "err"):
        as_earlier_release(out / name, "20260101T000000Z-0ldrun00", {"run_id": "20260101T000000Z-0ldrun00"})
    (out / "catalog.db").unlink()  # earlier releases had no catalog
    assert current(str(out / "emb")).format == "lookalike-versions"

    again = embed_job.run(spark, cfg_for(tmp_path, images))
    # Nothing changed, nothing embedded again, nothing lost: the tables are committed as Iceberg.
    assert (again["attempted"], again["reused"], again["embedded"]) == (0, first["embedded"], 0)
    assert again["published"] and current(str(out / "emb")).format == current(str(out / "err")).format == "iceberg"
    pd.testing.assert_frame_equal(table(spark, out / "emb"), before)
    assert len(read_output(out / "err")) == 0
    # The earlier version stays where it was until the user deletes it; its pointer is gone.
    assert (out / ".emb.versions" / "20260101T000000Z-0ldrun00" / "part-00000.parquet").exists()
    assert not os.path.lexists(out / ".emb.legacy") and not os.path.islink(out / "emb")
