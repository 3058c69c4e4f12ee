"""The model core without Spark: preprocessing, embedding, weights sources and their checks."""

import shutil

import numpy as np
import pytest

from lookalike.config import ModelConfig, S3Config, updated
from lookalike.embed import images, model
from lookalike.errors import WeightsError

# The Keras reference runtime in float32: what the numeric comparisons here are about.
RANDOM = ModelConfig(weights="none", seed=7, batch_size=4, precision="float32", runtime="keras")


@pytest.fixture(scope="module")
def embedder():
    return model.Embedder(RANDOM, threads=2)


@pytest.fixture(scope="module")
def batch(request):
    from tests.support.paths import SAMPLE_DIR

    paths = sorted(SAMPLE_DIR.rglob("*.jpg"))[:4]
    return np.stack([images.decode(p.read_bytes())[0] for p in paths])


def test_preprocess_is_bit_identical_to_keras_vgg16_preprocess_input(batch):
    from keras.applications import vgg16

    ours = model.preprocess(batch)
    keras_own = vgg16.preprocess_input(batch.astype(np.float32))
    assert ours.dtype == np.float32
    assert np.array_equal(ours, keras_own)
    # And it is what caffe-mode preprocessing means: RGB->BGR, ImageNet channel means subtracted.
    manual = batch[..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], dtype=np.float32)
    assert np.allclose(ours, manual, atol=1e-4)


def test_embed_shape_dtype_and_determinism_with_random_init_weights(embedder, batch):
    out = embedder.embed(batch)
    assert out.shape == (4, 512) and out.dtype == np.float32
    assert np.isfinite(out).all() and (np.linalg.norm(out, axis=1) > 0).all()
    # Same seed in a fresh model -> the same weights -> the same embeddings.
    again = model.Embedder(RANDOM, threads=2).embed(batch)
    np.testing.assert_allclose(out, again, rtol=0, atol=1e-6)
    other_seed = model.Embedder(updated(RANDOM, seed=8), threads=2).embed(batch)
    assert not np.allclose(out, other_seed)
    # Batch composition does not change a row's embedding.
    np.testing.assert_allclose(embedder.embed(batch[1:2])[0], out[1], atol=1e-5)
    assert embedder.embed(batch[:0]).shape == (0, 512)


def test_pooling_dimensions_with_random_init_weights(batch):
    assert model.Embedder(updated(RANDOM, pooling="max")).embed(batch[:1]).shape == (1, 512)
    assert model.Embedder(updated(RANDOM, pooling="flatten")).embed(batch[:1]).shape == (1, 25088)


def test_weights_tag_never_pretends_random_init_is_imagenet():
    assert model.weights_tag(RANDOM) == "random-init:seed=7"
    # An explicit "none" is not a fallback, even where the config would allow one.
    assert model.weights_tag(updated(RANDOM, on_missing_weights="random")) == "random-init:seed=7"
    fallback = updated(RANDOM, weights=model.IMAGENET_FALLBACK)
    assert model.weights_tag(fallback) == "random-init:seed=7 (imagenet unavailable)"
    assert model.fingerprint(fallback) != model.fingerprint(RANDOM)


def test_weights_from_a_local_file_with_checked_md5(embedder, batch, tmp_path):
    path = tmp_path / "custom.weights.h5"
    embedder.model.save_weights(str(path))
    md5 = model.md5_of(str(path))
    loaded = model.Embedder(updated(RANDOM, weights=str(path), weights_md5=md5))
    np.testing.assert_allclose(loaded.embed(batch), embedder.embed(batch), atol=1e-5)
    assert loaded.weights_tag == f"file:custom.weights.h5@md5:{md5}"
    with pytest.raises(WeightsError, match="md5"):
        model.Embedder(ModelConfig(weights=str(path), weights_md5="0" * 32))


def test_a_file_named_like_keras_published_weights_must_have_its_md5(embedder, tmp_path):
    fake = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    embedder.model.save_weights(str(tmp_path / "x.weights.h5"))
    shutil.copy(tmp_path / "x.weights.h5", fake)
    with pytest.raises(WeightsError, match=r"6d6bbae143d832006294945121d1f1fc was expected.*published checksum"):
        model.fetch_weights(ModelConfig(weights=str(fake)), S3Config())


def test_weights_from_s3_are_cached_once_per_host(embedder, batch, tmp_path, s3, bucket, s3_endpoint):
    path = tmp_path / "w.weights.h5"
    embedder.model.save_weights(str(path))
    s3.upload_file(str(path), bucket, "models/w.weights.h5")
    cfg = updated(RANDOM, weights=f"s3://{bucket}/models/w.weights.h5", cache_dir=str(tmp_path / "cache"))
    s3cfg = S3Config(endpoint_url=s3_endpoint)
    local, md5 = model.fetch_weights(cfg, s3cfg)
    assert md5 == model.md5_of(str(path))
    mtime = (tmp_path / "cache" / local.rsplit("/", 1)[-1]).stat().st_mtime_ns
    assert model.fetch_weights(cfg, s3cfg)[0] == local  # second call reuses the cached copy
    assert (tmp_path / "cache" / local.rsplit("/", 1)[-1]).stat().st_mtime_ns == mtime
    np.testing.assert_allclose(model.Embedder(cfg, s3cfg).embed(batch), embedder.embed(batch), atol=1e-5)
    with pytest.raises(WeightsError, match="cannot read"):
        model.fetch_weights(updated(cfg, weights=f"s3://{bucket}/models/missing.h5"), s3cfg)


def _offline(monkeypatch):
    """Keras' download fails as it does on a machine without internet and an empty cache: the
    failure is injected, so the test means the same online, offline and with cached weights."""
    import keras

    def no_network(fname, origin=None, **_):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", no_network)


def test_imagenet_without_network_fails_with_instructions_or_falls_back_loudly(caplog, monkeypatch):
    _offline(monkeypatch)
    ok, reason = model.imagenet_available(ModelConfig())
    assert not ok and "name resolution" in reason
    with pytest.raises(WeightsError, match=r"model.weights=/path/to/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        model.resolve(ModelConfig(), S3Config())
    resolved = model.resolve(ModelConfig(on_missing_weights="random", seed=3), S3Config())
    assert model.is_random_init(resolved) and resolved.seed == 3
    assert "RANDOM-INIT" in caplog.text
    assert model.weights_tag(resolved) == "random-init:seed=3 (imagenet unavailable)"


def test_imagenet_when_keras_has_the_weights_is_used_as_configured(monkeypatch, tmp_path):
    import keras

    asked = []

    def cached(fname, origin=None, file_hash=None, **_):
        asked.append((fname, file_hash))
        return str(tmp_path / fname)

    monkeypatch.setattr(keras.utils, "get_file", cached)
    cfg = ModelConfig(on_missing_weights="random")
    assert model.resolve(cfg, S3Config()) == cfg  # no fallback when the weights are there
    # Keras is asked for the published file and checks it against the published md5.
    assert asked == [("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc")]


def test_get_embedder_loads_once_per_process(toy_model_file):
    # Caching is the same whatever the model: the toy .keras model (tests/support/toy_model.py).
    toy = ModelConfig(
        name="keras_file",
        file=str(toy_model_file),
        preprocessing="tf",
        batch_size=4,
        precision="float32",
        runtime="keras",
    )
    before = model.LOADS["count"]
    first = model.get_embedder(toy, None, 1)
    assert model.get_embedder(toy, None, 1) is first
    assert model.LOADS["count"] == before + 1
