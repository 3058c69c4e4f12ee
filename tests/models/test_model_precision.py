"""Model options for GPU executors, checked on CPU with random-init weights: preprocessing inside
the model, mixed precision, XLA with padded batches."""

import numpy as np
import pytest

from lookalike.config import ModelConfig, updated
from lookalike.embed import images, model

BASE = ModelConfig(weights="none", seed=11, batch_size=4, precision="float32", runtime="keras")


@pytest.fixture(scope="module")
def batch():
    from tests.support.paths import SAMPLE_DIR

    paths = sorted(SAMPLE_DIR.rglob("*.jpg"))[:6]
    return np.stack([images.decode(p.read_bytes())[0] for p in paths])


@pytest.fixture(scope="module")
def reference(batch):
    embedder = model.Embedder(BASE, threads=2)
    return embedder, embedder.embed(batch)


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_preprocessing_inside_the_model_is_bit_identical_to_numpy_preprocessing_random_init_weights(reference, batch):
    embedder, out = reference
    assert out.shape == (6, 512) and out.dtype == np.float32
    on_cpu = np.concatenate(
        [np.asarray(embedder.model.predict_on_batch(model.preprocess(batch[i : i + 4]))) for i in (0, 4)]
    )
    assert np.array_equal(out, on_cpu)
    # Pixels given as floats take the NumPy path and give the same numbers.
    assert np.array_equal(embedder.embed(batch.astype(np.float32)), out)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_is_close_to_float32_and_leaves_the_global_policy_alone_random_init_weights(
    reference, batch, precision
):
    import keras

    _, out = reference
    mixed = model.Embedder(updated(BASE, precision=precision), threads=2)
    got = mixed.embed(batch)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert cosines(got, out).min() > 0.999
    assert not np.array_equal(got, out)  # it did compute in lower precision
    assert keras.config.dtype_policy().name == "float32"
    # A float32 model built after a mixed one in the same process is float32 again.
    assert np.array_equal(model.Embedder(BASE, threads=2).embed(batch), out)
    assert mixed.fingerprint != model.fingerprint(BASE)


def test_xla_pads_every_batch_to_batch_size_random_init_weights(reference, batch):
    _, out = reference
    compiled = model.Embedder(updated(BASE, jit_compile=True), threads=2)
    assert compiled.fixed_batch and compiled.inference_model.jit_compile
    got = compiled.embed(batch)  # chunks of 4 and 2, the 2 padded to 4
    scale = np.abs(out).max()
    np.testing.assert_allclose(got, out, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(compiled.embed(batch[5:6]), got[5:6], rtol=0, atol=1e-6 * scale)
    assert not model.Embedder(updated(BASE, jit_compile=False), threads=2).fixed_batch


def test_no_task_gpu_outside_spark():
    assert model.task_gpu() is None and model.pin_task_gpu() is None
