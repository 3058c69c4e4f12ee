"""A real-image case of the duplicates job: a shipped photo and its altered copies with
EfficientNet-Lite0's ImageNet weights (what the default min_score was measured with), through the
pipeline job in the test session's Spark."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from lookalike.config import load_config
from tests.support.outputs import read_output
from tests.support.paths import ROOT, SAMPLE_DIR


def read_groups(path) -> set:
    return {tuple(r.values()) for r in read_output(path).to_pylist()}


def _threshold_bench():
    """bench/duplicates_threshold.py, whose altered copies measured the default min_score."""
    spec = importlib.util.spec_from_file_location("duplicates_threshold", ROOT / "bench" / "duplicates_threshold.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # embeds 14 photos with EfficientNet-Lite0 in a Spark worker
def test_a_photo_and_its_altered_copies_form_one_group_through_the_pipeline(spark, tmp_path):
    from lookalike.jobs import pipeline

    bench = _threshold_bench()
    photos = sorted(SAMPLE_DIR.rglob("*.jpg"))
    source = photos[0]
    others = [p for p in photos[1::6] if p != source][:10]
    images = tmp_path / "images"
    for path in [source, *others]:
        target = images / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    original = f"{source.parent.name}/{source.stem}"
    # Slightly cropped: 2% a side. A 5% crop costs as much similarity as a different garment has
    # (docs/duplicates.md, "Choosing min_score"), so it is not a near-duplicate at the default.
    kinds = ("resized", "jpeg60", "cropped2")
    for kind in kinds:
        (images / f"{original}-{kind}.jpg").write_bytes(bench.altered(source.read_bytes(), kind))
    out = tmp_path / "out"
    cfg = load_config(
        None,
        [
            f"input.uri={images}",
            "model.name=efficientnet_lite0",
            "model.weights=imagenet",
            "model.precision=float32",
            "model.runtime=keras",
            f"model.cache_dir={tmp_path / 'cache'}",
            # Two partitions for 14 items (auto would make 8 of each): what is tested is the photos.
            "neighbours.k=5",
            "neighbours.partitions=2",
            "duplicates.enabled=true",
            "duplicates.partitions=2",
            f"output.embeddings={out}/embeddings",
            f"output.errors={out}/errors",
            f"output.neighbours={out}/neighbours",
            f"output.duplicates={out}/duplicates",
        ],
    )
    summary = pipeline.run(spark, cfg)
    assert summary["ok"] and summary["embed"]["embedded"] == 14
    grouped = summary["duplicates"]
    assert grouped["min_score"] == cfg.duplicates.min_score and grouped["groups"] == 1
    members = {f"{original}-{kind}" for kind in kinds} | {original}
    assert {(row[1], row[2], row[3]) for row in read_groups(out / "duplicates")} == {
        (item, 4, original) for item in members
    }
