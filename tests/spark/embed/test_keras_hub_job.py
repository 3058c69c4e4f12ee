"""The embed job with KerasHub presets (model.name: keras_hub) on the tests' local SparkSession: a
preset of each family (CLIP, SigLIP, DINOv2), from a local directory and from S3, gives row for row
what KerasHub's own model gives called directly on the same decoded files; a preset of another
family stops the job with one line and exit 2 before any task runs. Each family's own numbers are
tested in tests/models/test_keras_hub.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from lookalike.config import load_config
from lookalike.embed import images, kerashub, model
from lookalike.jobs import embed as embed_job
from tests.support import keras_hub_presets
from tests.support.outputs import read_output
from tests.support.paths import SAMPLE_DIR
from tests.support.s3 import upload_dir


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    return {family: keras_hub_presets.build(family, root / family) for family in ("clip", "siglip", "dinov2", "resnet")}


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(SAMPLE_DIR.rglob("*.jpg"))[::6]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def overrides(tmp_path, uri, preset, *extra):
    return [
        f"input.uri={uri}",
        "model.name=keras_hub",
        f"model.preset={preset}",
        "model.precision=float32",
        "model.runtime=keras",
        "model.batch_size=4",
        "input.partition_size=4",
        f"model.cache_dir={tmp_path}/cache",
        f"output.embeddings={tmp_path}/emb",
        f"output.errors={tmp_path}/err",
        *extra,
    ]


def check_rows(tmp_path, photos, cfg, preset_dir, family):
    table = read_output(tmp_path / "emb").to_pandas().sort_values("item_id").reset_index(drop=True)
    assert len(table) == len(list(photos.glob("*.jpg"))) and len(table) >= 10
    md5 = kerashub.preset_md5(str(preset_dir))
    assert set(table["model"]) == {"keras_hub"} and set(table["weights"]) == {f"preset:{family}@md5:{md5}"}
    assert set(table["dim"]) == {keras_hub_presets.DIMS[family]}
    direct = model.Embedder(cfg.model, cfg.s3)
    assert set(table["model_fingerprint"]) == {direct.fingerprint}
    pixels = np.stack(
        [
            images.decode((photos / f"{item}.jpg").read_bytes(), 0, direct.input_size, direct.interpolation)[0]
            for item in table["item_id"]
        ]
    )
    want = keras_hub_presets.reference(preset_dir, family, pixels)
    got = np.stack(table["embedding"].to_numpy())
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999


@pytest.mark.parametrize("source", ["local", "s3"])
@pytest.mark.parametrize("family", ["clip", "siglip", "dinov2"])
def test_each_family_from_a_local_and_an_s3_preset(spark, tmp_path, presets, photos, family, source, request):
    preset, extra = str(presets[family]), []
    if source == "s3":
        s3, bucket = request.getfixturevalue("s3"), request.getfixturevalue("bucket")
        upload_dir(s3, bucket, presets[family], f"models/{family}/")
        preset, extra = f"s3://{bucket}/models/{family}/", [f"s3.endpoint_url={request.getfixturevalue('s3_endpoint')}"]
    cfg = load_config(None, overrides(tmp_path, photos, preset, *extra))
    summary = embed_job.run(spark, cfg)
    assert summary["embedded"] == len(list(photos.glob("*.jpg"))) and summary["errors"] == 0
    check_rows(tmp_path, photos, cfg, presets[family], family)


def test_a_preset_of_another_family_is_one_line_and_exit_2(spark, tmp_path, presets, photos, caplog, capsys):
    argv = [arg for value in overrides(tmp_path, photos, presets["resnet"]) for arg in ("--set", value)]
    assert embed_job.main(argv, spark=spark) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "ResNetBackbone is not a supported family" in errors[0]
    assert "\n" not in errors[0] and "Traceback" not in caplog.text
    assert capsys.readouterr().out == "" and not (tmp_path / "emb").exists()
