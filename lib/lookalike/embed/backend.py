"""Which Keras backend runs the models: below model.py and the OpenVINO conversion, which both ask."""

from __future__ import annotations


def keras_backend() -> str:
    import keras

    return keras.backend.backend()
