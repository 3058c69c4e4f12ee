"""A tiny convolutional model saved as a ``.keras`` file, for the Spark and end-to-end tests of
everything around the model (listing, batching, error rows, incremental plans, publishing).

Those tests used to embed with random-init VGG16 (15 GFLOP an image); the code they test is the
same whatever the backbone, so this model (about 0.1 MFLOP an image) stands in for it through
``model.name=keras_file``. Each backbone's own behaviour is tested with that backbone in
``tests/unit/embed``.
"""

from __future__ import annotations

from pathlib import Path

INPUT_SIZE = (32, 32)  # (width, height): what the decoder resizes to
DIM = 16
PREPROCESSING = "tf"


def build(path: Path, seed: int = 7) -> Path:
    """Write the model to ``path`` (deterministic for a seed) and return the path."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(INPUT_SIZE[1], INPUT_SIZE[0], 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(DIM, 3, strides=2)(x)
    keras.Model(inputs, x, name="toy").save(str(path))
    return path


def overrides(path: Path | str) -> list[str]:
    """``--set`` values that make a job embed with the toy model (float32 Keras: reproducible)."""
    return [
        "model.name=keras_file",
        f"model.file={path}",
        f"model.preprocessing={PREPROCESSING}",
        "model.precision=float32",
        "model.runtime=keras",
    ]
