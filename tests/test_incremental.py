"""Incremental embed runs (input.incremental=true): only new, changed and previously failed images
are embedded; the table equals a full recompute; a model change recomputes everything."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from lookalike.embed import plan as incremental
from lookalike import publish
from lookalike.publish import lineage
from lookalike.config import load_config
from lookalike.embed.stage import ITEMS
from lookalike.jobs import embed as embed_job
from lookalike.schemas import names

from conftest import SAMPLE_DIR

FP, WEIGHTS = "fp1", "random-init:seed=3"


# ---------------------------------------------------------------------------------------------
# The plan, on plain DataFrames.

def items(*specs):
    """specs: (item_id, version) -> ITEMS rows."""
    return pd.DataFrame({
        "item_id": [i for i, _ in specs], "uri": [f"file:///x/{i}.jpg" for i, _ in specs],
        "source_version": [v for _, v in specs], "source_bytes": pd.array([1] * len(specs), dtype="Int64"),
    }, columns=names(ITEMS))


def previous(*specs, failed=(), fp=FP, weights=WEIGHTS):
    rows = pd.DataFrame({
        "item_id": [i for i, _ in specs], "uri": [f"file:///x/{i}.jpg" for i, _ in specs],
        "source_version": [v for _, v in specs], "model_fingerprint": fp, "weights": weights,
    }, columns=incremental.KEY_COLUMNS)
    return incremental.Previous("/prev", "v1", rows, frozenset(failed))


def test_plan_embeds_new_changed_and_failed_items_and_drops_deleted_ones():
    listed = items(("a", "1"), ("b", "2"), ("c", "9"), ("d", "1"), ("f", "1"), ("g", None))
    prev = previous(("a", "1"), ("b", "1"), ("c", "9"), ("e", "1"), ("g", None), failed=["f"])
    plan = incremental.plan(listed, prev, FP, WEIGHTS)
    assert sorted(plan.to_embed["item_id"]) == ["b", "d", "f", "g"]
    assert list(plan.to_embed.columns) == names(ITEMS)
    # b changed, e deleted, g has no version to compare: neither is carried over.
    assert plan.drop_ids == ["b", "e", "g"] and plan.carry_over
    assert plan.counts == {"new": 1, "changed": 2, "retried": 1, "reused": 2, "deleted": 1, "stale_errors": 0}
    assert not plan.unchanged


def test_plan_with_nothing_changed_is_unchanged_and_a_moved_key_is_re_embedded():
    prev = previous(("a", "1"), ("b", "1"))
    assert incremental.plan(items(("a", "1"), ("b", "1")), prev, FP, WEIGHTS).unchanged
    moved = items(("a", "1"), ("b", "1"))
    moved.loc[1, "uri"] = "file:///elsewhere/b.jpg"
    plan = incremental.plan(moved, prev, FP, WEIGHTS)
    assert list(plan.to_embed["item_id"]) == ["b"] and plan.counts["changed"] == 1
    # An error row for an image that is gone must disappear too: that is a change to publish.
    gone = incremental.plan(items(("a", "1"), ("b", "1")), previous(("a", "1"), ("b", "1"), failed=["z"]), FP, WEIGHTS)
    assert gone.counts["stale_errors"] == 1 and not gone.unchanged


@pytest.mark.parametrize("fp,weights", [("fp2", WEIGHTS), (FP, "file:w.h5@md5:abc")])
def test_plan_recomputes_everything_when_the_model_or_weights_changed(fp, weights):
    listed = items(("a", "1"), ("b", "1"))
    plan = incremental.plan(listed, previous(("a", "1"), ("b", "1")), fp, weights)
    assert sorted(plan.to_embed["item_id"]) == ["a", "b"] and not plan.carry_over
    assert plan.reason.startswith("full recompute: model settings changed")


def test_plan_recomputes_ids_that_appear_twice_in_the_previous_table():
    plan = incremental.plan(items(("a", "1"), ("b", "1")), previous(("a", "1"), ("a", "1"), ("b", "1")), FP, WEIGHTS)
    assert list(plan.to_embed["item_id"]) == ["a"] and plan.drop_ids == ["a"]


def test_without_a_previous_table_the_plan_is_a_full_run():
    plan = incremental.plan(items(("a", "1")), None, FP, WEIGHTS)
    assert len(plan.to_embed) == 1 and not plan.carry_over and "no previous" in plan.reason


# ---------------------------------------------------------------------------------------------
# The embed job on a real SparkSession.

def cfg_for(tmp_path, images, out="out", *extra):
    return load_config(None, [
        f"input.uri={images}", "model.weights=none", "model.seed=3", "model.batch_size=4",
        "input.partition_size=4", "input.incremental=true", "input.max_error_fraction=0.5",
        f"output.embeddings={tmp_path}/{out}/emb", f"output.errors={tmp_path}/{out}/err", *extra])


def table(spark, path) -> pd.DataFrame:
    return spark.read.parquet(str(path)).toPandas().sort_values("item_id").reset_index(drop=True)


def test_incremental_runs_embed_only_what_changed_and_equal_a_full_recompute_random_init_weights(spark, tmp_path):
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
    assert publish.current_version(str(emb)) == first["run_id"]
    pd.testing.assert_frame_equal(table(spark, emb), one)

    for path in samples[12:17]:  # add 5
        shutil.copy(path, images / path.name)
    changed = [images / samples[0].name, images / samples[1].name]
    for target, source in zip(changed, samples[20:22]):  # change 2: other pictures under the same keys
        shutil.copy(source, target)
    deleted = images / samples[5].name
    deleted.unlink()  # delete 1
    third = embed_job.run(spark, cfg_for(tmp_path, images))
    assert (third["attempted"], third["embedded"], third["errors"]) == (7, 7, 0)
    assert (third["new"], third["changed"], third["reused"], third["deleted"]) == (5, 2, 9, 1)
    assert third["previous_version"] == first["run_id"]

    full = embed_job.run(spark, cfg_for(tmp_path, images, "full", "input.incremental=false"))
    assert full["embedded"] == 16
    got, want = table(spark, emb), table(spark, tmp_path / "full" / "emb")
    assert deleted.stem not in set(got["item_id"])
    same = ["item_id", "uri", "source_version", "source_bytes", "width", "height", "model", "weights",
            "pooling", "dim", "model_fingerprint"]
    pd.testing.assert_frame_equal(got[same], want[same])
    # Other batches may take other CPU kernels; the values must agree to float32 round-off.
    np.testing.assert_allclose(np.stack(got["embedding"]), np.stack(want["embedding"]), rtol=0, atol=1e-5)
    assert third["embeddings_content"] == full["embeddings_content"]

    # Carried-over rows are the previous rows, bit for bit, with the run that computed them.
    kept = got[got["run_id"] == first["run_id"]]
    assert len(kept) == 9 and set(got.loc[got["run_id"] != first["run_id"], "run_id"]) == {third["run_id"]}
    before = one.set_index("item_id").loc[kept["item_id"]]
    assert (before["embedded_at"].to_numpy() == kept["embedded_at"].to_numpy()).all()
    assert all(np.array_equal(a, b) for a, b in zip(before["embedding"], kept["embedding"]))
    assert set(got.loc[got["run_id"] == third["run_id"], "item_id"]) == \
        {p.stem for p in samples[12:17]} | {p.stem for p in changed}

    # A model change (pooling) recomputes everything.
    fourth = embed_job.run(spark, cfg_for(tmp_path, images, "out", "model.pooling=max"))
    assert (fourth["attempted"], fourth["reused"]) == (16, 0)
    assert fourth["plan"].startswith("full recompute: model settings changed")
    assert set(table(spark, emb)["pooling"]) == {"max"}


def test_failed_images_are_retried_every_run_and_downstream_sees_no_change_random_init_weights(spark, tmp_path):
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
    with publish.OutputSet(spark, {"neighbours": downstream}, "n-run-1") as outputs:
        spark.range(3).write.parquet(outputs.staging("neighbours"))
        outputs.commit({"neighbours": {"run_id": "n-run-1", "inputs": inputs}})
    assert lineage.unchanged_since(downstream, inputs)["run_id"] == "n-run-1"
    assert lineage.unchanged_since(downstream, {**inputs, "settings": "k=20"}) is None

    second = embed_job.run(spark, cfg_for(tmp_path, images))  # the broken image is tried again
    assert (second["attempted"], second["retried"], second["embedded"], second["errors"]) == (1, 1, 0, 1)
    assert second["published"] and publish.current_version(str(tmp_path / "out" / "err")) == second["run_id"]
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
    assert os.path.islink(tmp_path / "out" / "emb")
