"""The converted IR checked against the Keras model before it is cached: a conversion that computes
something else is refused, not used."""

from __future__ import annotations

import numpy as np

# Only gross conversion errors (a channel order, a lost layer) are caught here; the tests hold the
# real tolerance (float32: cosine >= 0.99999).
CHECK_MIN_COSINE = 0.999
CHECK_MAX_RELATIVE = 1e-2


def check(core, inference_model, xml: str, input_shape: tuple) -> str | None:
    """None when the IR computes what the Keras model does, in float32, on two pseudo-random
    images; else what differs."""
    pixels = np.random.default_rng(0).integers(0, 256, (2, *input_shape), dtype=np.uint8)
    want = np.asarray(inference_model.predict_on_batch(pixels), dtype=np.float64).reshape(2, -1)
    compiled = core.compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.asarray(compiled(pixels)[0], dtype=np.float64).reshape(2, -1)
    scale = np.linalg.norm(want, axis=1)
    diff = np.abs(got - want).max(axis=1) / np.maximum(scale, 1e-30)
    both = (scale > 0) & (np.linalg.norm(got, axis=1) > 0)
    cosine = np.ones(2)
    cosine[both] = (got * want).sum(1)[both] / scale[both] / np.linalg.norm(got, axis=1)[both]
    if not np.isfinite(got).all() or cosine.min() < CHECK_MIN_COSINE or diff.max() > CHECK_MAX_RELATIVE:
        return f"cosine {cosine.min():.6f}, max difference {diff.max():.2e} of the vector's norm"
    return None
