"""KerasHub presets as backbones (model.name: keras_hub): each family's embedding equals KerasHub's
own output on the same decoded photos, from a local directory and from S3; the presets lookalike
refuses say so in one line; OpenVINO computes what Keras float32 does.

The presets are tiny and random-initialised (tests/support/keras_hub_presets.py), saved with
``save_to_preset`` exactly as a real one is. Tolerances of the OpenVINO agreement (measured on the
60 sample photos, OpenVINO 2026.4, AMD EPYC with AVX512-BF16): float32 cosine >= 0.99999 per row
(measured > 0.9999999, top-10 overlap 1.0); bfloat16 against Keras float32 cosine >= 0.995 per row
and top-10 neighbour overlap >= 0.9 (see BF16_* below for what was measured).
"""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from lookalike.config import Config, ConfigError, ModelConfig, S3Config, load_config, updated
from lookalike.config.models import digest
from lookalike.embed import images, kerashub, weights
from lookalike.embed.model import Embedder
from lookalike.errors import EXIT_USER, WeightsError
from tests.support import keras_hub_presets
from tests.support.paths import SAMPLE_DIR
from tests.support.s3 import upload_dir

FAMILIES = keras_hub_presets.FAMILIES
INTERPOLATION = {"clip": "bicubic", "siglip": "bilinear", "dinov2": "bicubic"}
MIN_COSINE = 0.9999
F32_MIN_COSINE = 0.99999
# Measured (tiny random presets, 60 photos), clip / siglip / dinov2: OpenVINO bfloat16 cosine min
# 0.99996 / 0.99968 / 0.99946, top-10 overlap 0.988 / 0.978 / 0.988; Keras mixed_bfloat16 cosine
# min 0.99995 / 0.99948 / 0.99877, top-10 overlap 0.990 / 0.983 / 0.990.
BF16_MIN_COSINE = 0.995
BF16_TOP10_OVERLAP = 0.9


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    built = {family: keras_hub_presets.build(family, root / family) for family in FAMILIES}
    built["clip_text"] = keras_hub_presets.build("clip_text", root / "clip_text")
    built["resnet"] = keras_hub_presets.build("resnet", root / "resnet")
    return built


def config(preset, **changes) -> ModelConfig:
    values = dict(name="keras_hub", preset=str(preset), precision="float32", runtime="keras", batch_size=8)
    values.update(changes)
    return ModelConfig(**values)


def photo_bytes(count: int | None = 8) -> list[bytes]:
    paths = sorted(SAMPLE_DIR.rglob("*.jpg"))
    if count is not None:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, count).astype(int)]
    return [p.read_bytes() for p in paths]


def decoded(embedder: Embedder, count: int | None = 8) -> np.ndarray:
    """The photos as the embed stage's workers decode them for this model."""
    return np.stack(
        [images.decode(data, 0, embedder.input_size, embedder.interpolation)[0] for data in photo_bytes(count)]
    )


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's k nearest others (cosine) that both sets of embeddings agree on."""

    def neighbours(x):
        x = np.asarray(x, np.float64)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        scores = x @ x.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1)[:, :k]

    na, nb = neighbours(a), neighbours(b)
    return float(np.mean([len(set(na[i]) & set(nb[i])) / k for i in range(len(na))]))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_gives_keras_hubs_own_embedding_of_the_decoded_photos(presets, family):
    embedder = Embedder(config(presets[family]))
    side = keras_hub_presets.SIZES[family]
    assert embedder.input_size == (side, side) and embedder.interpolation == INTERPOLATION[family]
    assert embedder.dim == keras_hub_presets.DIMS[family]
    assert embedder.weights_tag == f"preset:{family}@md5:{kerashub.preset_md5(str(presets[family]))}"
    pixels = decoded(embedder)
    got = embedder.embed(pixels)
    want = keras_hub_presets.reference(presets[family], family, pixels)
    assert got.shape == want.shape == (8, keras_hub_presets.DIMS[family])
    assert cosines(got, want).min() >= MIN_COSINE
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_dinov2_runs_at_model_image_size_with_its_position_embeddings_interpolated(presets):
    embedder = Embedder(config(presets["dinov2"], image_size=24))
    assert embedder.input_size == (24, 24)
    pixels = decoded(embedder)
    want = keras_hub_presets.reference(presets["dinov2"], "dinov2", pixels, image_size=24)
    assert cosines(embedder.embed(pixels), want).min() >= MIN_COSINE
    assert embedder.fingerprint != Embedder(config(presets["dinov2"])).fingerprint
    with pytest.raises(WeightsError, match="model.image_size=26: not a multiple of the preset's patch size 4"):
        Embedder(config(presets["dinov2"], image_size=26))
    with pytest.raises(WeightsError, match="a clip preset runs at its own size \\(32 px"):
        Embedder(config(presets["clip"], image_size=24))


def test_decode_resizes_with_the_converters_interpolation():
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    original.save(buffer, "PNG")
    bicubic, _ = images.decode(buffer.getvalue(), 0, (32, 32), "bicubic")
    bilinear, _ = images.decode(buffer.getvalue(), 0, (32, 32))
    np.testing.assert_array_equal(bicubic, np.asarray(original.resize((32, 32), Image.Resampling.BICUBIC)))
    np.testing.assert_array_equal(bilinear, np.asarray(original.resize((32, 32), Image.Resampling.BILINEAR)))
    assert not np.array_equal(bicubic, bilinear)


def test_a_preset_on_s3_is_copied_once_per_host_and_checked(presets, tmp_path, s3, bucket, s3_endpoint):
    keys = upload_dir(s3, bucket, presets["siglip"], "models/siglip/")
    assert len(keys) == 4
    s3cfg = S3Config(endpoint_url=s3_endpoint)
    md5 = kerashub.preset_md5(str(presets["siglip"]))
    cfg = config(f"s3://{bucket}/models/siglip", cache_dir=str(tmp_path / "cache"), weights_md5=md5)
    local, got_md5 = kerashub.local_preset(cfg, s3cfg)
    assert got_md5 == md5 and sorted(os.listdir(local)) == sorted(os.listdir(presets["siglip"]))
    stamp = os.stat(os.path.join(local, "model.weights.h5")).st_mtime_ns
    embedder = Embedder(cfg, s3cfg)
    assert kerashub.local_preset(cfg, s3cfg)[0] == local  # the second worker reuses the copy
    assert os.stat(os.path.join(local, "model.weights.h5")).st_mtime_ns == stamp
    assert [n for n in os.listdir(tmp_path / "cache") if not n.startswith(".")] == [os.path.basename(local)]
    assert embedder.weights_tag == f"preset:siglip@md5:{md5}"
    pixels = decoded(embedder)
    np.testing.assert_allclose(embedder.embed(pixels), Embedder(config(presets["siglip"])).embed(pixels), atol=1e-6)
    with pytest.raises(WeightsError, match=f"its files have md5 {md5}, but model.weights_md5 is 0123"):
        kerashub.local_preset(updated(cfg, weights_md5="0123"), s3cfg)
    with pytest.raises(WeightsError, match="no files under this prefix"):
        kerashub.local_preset(updated(cfg, preset=f"s3://{bucket}/models/missing"), s3cfg)


def _broken_copy(presets, tmp_path, remove: str):
    copy = tmp_path / f"without-{remove}"
    shutil.copytree(presets["clip"], copy)
    os.remove(copy / remove)
    return copy


def test_refused_presets_are_one_line_errors_with_exit_2(presets, tmp_path):
    cases = {
        presets["resnet"]: "ResNetBackbone is not a supported family; model.name=keras_hub takes CLIPBackbone",
        presets["clip_text"]: "CLIPTextEncoder is a text tower alone \\(no image tower\\)",
        tmp_path / "nowhere": "no such directory; on a machine with internet, save it",
        _broken_copy(presets, tmp_path, "model.weights.h5"): "model.weights.h5 is missing \\(the weights\\)",
        _broken_copy(presets, tmp_path, "config.json"): "config.json is missing: not a saved KerasHub preset",
        _broken_copy(presets, tmp_path, "image_converter.json"): "image_converter.json is missing \\(the preproc",
    }
    for preset, message in cases.items():
        with pytest.raises(WeightsError, match=message) as refused:
            weights.resolve(config(preset), S3Config())  # on the driver, before any task runs
        assert "\n" not in str(refused.value) and refused.value.exit_code == EXIT_USER
        assert f"model.preset {preset}" in str(refused.value)


def test_a_hub_handle_without_network_says_how_to_ship_the_preset(monkeypatch):
    from keras_hub.src.utils import preset_utils

    def offline(preset, path):  # what a machine without internet gets
        raise ConnectionError("Failed to resolve 'www.kaggle.com' (Temporary failure in name resolution)")

    monkeypatch.setattr(preset_utils, "get_file", offline)
    handle = "kaggle://keras/clip/keras/clip_vit_base_patch16/2"
    with pytest.raises(WeightsError) as refused:
        weights.resolve(config(handle), S3Config())
    message = str(refused.value)
    assert message.startswith(f"model.preset {handle}: cannot download it here (ConnectionError: Failed to resolve")
    assert "save_to_preset(DIR)" in message and "s3:// copy" in message and "\n" not in message


def test_config_keys_and_fingerprints(presets):
    for overrides, message in (
        (["model.name=keras_hub"], "model.name=keras_hub needs model.preset"),
        ([f"model.preset={presets['clip']}"], "'model.preset' applies to model.name=keras_hub only"),
        (["model.image_size=224"], "'model.image_size' applies to model.name=keras_hub only"),
        (["model.name=keras_hub", "model.preset=/p", "model.weights=none"], "model.weights' does not apply"),
    ):
        with pytest.raises(ConfigError, match=message) as refused:
            load_config(None, overrides)
        assert "\n" not in str(refused.value)
    # Outputs fingerprinted before these keys existed keep their fingerprint.
    values = Config().model.model_dump()
    del values["preset"], values["image_size"]
    assert Config().fingerprint("model") == digest(values)
    cfg = config(presets["clip"])
    assert len({weights.fingerprint(c) for c in (cfg, updated(cfg, preset="/other"), updated(cfg, image_size=32))}) == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_openvino_agrees_with_keras_float32(presets, family, tmp_path):
    """float32 to float rounding; bfloat16 (where the CPU has it) by cosine and top-10 neighbours."""
    reference = Embedder(config(presets[family], batch_size=16))
    pixels = decoded(reference, None)
    want = reference.embed(pixels)
    cache = str(tmp_path / "ir")
    f32 = Embedder(config(presets[family], runtime="openvino", cache_dir=cache, batch_size=16))
    assert cosines(f32.embed(pixels), want).min() >= F32_MIN_COSINE
    bf16 = Embedder(config(presets[family], runtime="openvino", precision="bfloat16", cache_dir=cache, batch_size=16))
    assert bf16._model is None  # the IR converted for float32 serves bfloat16 too: Keras never built
    low = bf16.embed(pixels)
    assert cosines(low, want).min() >= BF16_MIN_COSINE
    assert top_k_overlap(low, want) >= BF16_TOP10_OVERLAP
    # The Keras path (GPUs): mixed bfloat16 from the same preset.
    keras_bf16 = Embedder(config(presets[family], precision="bfloat16", batch_size=16))
    weighted = [layer for layer in keras_bf16.model._flatten_layers() if layer.weights]
    assert weighted and {layer.dtype_policy.compute_dtype for layer in weighted} == {"bfloat16"}
    mixed = keras_bf16.embed(pixels)
    assert cosines(mixed, want).min() >= BF16_MIN_COSINE and top_k_overlap(mixed, want) >= BF16_TOP10_OVERLAP
