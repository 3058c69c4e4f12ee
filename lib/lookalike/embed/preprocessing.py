"""The pixel normalisations that pretrained CNNs expect, each in NumPy and as a Keras layer.

A backbone's weights only mean something on inputs normalised the way they were trained: VGG16 and
ResNet50 (converted from Caffe) want BGR with the ImageNet means subtracted; models trained in
PyTorch want ``(x/255 - mean)/std`` in RGB; some Keras models normalise inside themselves and take
raw 0..255 values; EfficientNet-Lite was trained on ``(x - 127)/128``. The NumPy versions serve
float inputs on the CPU and the tests; the layer runs inside the model on uint8 input, so that a
GPU receives a quarter of the bytes. Both compute in
float32 even under a mixed-precision policy, so that they give the same numbers.

Modes (the names are Keras' ``imagenet_utils.preprocess_input`` modes, plus ``raw``):
  caffe   RGB->BGR, minus (103.939, 116.779, 123.68)              VGG16, ResNet50
  torch   x/255, minus (0.485, 0.456, 0.406), over (0.229, 0.224, 0.225), RGB
  tf      x/127.5 - 1, RGB
  lite    (x - 127)/128, RGB: EfficientNet-Lite's training normalisation     EfficientNet-Lite0
  raw     float32 0..255, RGB: the model normalises itself           EfficientNetV2B0
"""

from __future__ import annotations

import numpy as np

MODES = ("caffe", "torch", "tf", "lite", "raw")

CAFFE_MEANS_BGR = np.array((103.939, 116.779, 123.68), dtype=np.float32)
TORCH_MEAN_RGB = np.array((0.485, 0.456, 0.406), dtype=np.float32)
TORCH_STD_RGB = np.array((0.229, 0.224, 0.225), dtype=np.float32)


def apply(mode: str, batch: np.ndarray) -> np.ndarray:
    """uint8 or float 0..255 RGB (N, H, W, 3) -> float32 in ``mode``'s normalisation."""
    x = np.asarray(batch, dtype=np.float32)
    if mode == "caffe":
        return x[..., ::-1] - CAFFE_MEANS_BGR
    if mode == "torch":
        return (x / np.float32(255.0) - TORCH_MEAN_RGB) / TORCH_STD_RGB
    if mode == "tf":
        return x / np.float32(127.5) - np.float32(1.0)
    if mode == "lite":
        return (x - np.float32(127.0)) / np.float32(128.0)
    if mode == "raw":
        return x
    raise ValueError(f"unknown preprocessing {mode!r}; choose one of {', '.join(MODES)}")


def layer(mode: str):
    """A Keras layer computing :func:`apply` on uint8 (or float) input, always in float32."""
    import keras
    from keras import ops

    if mode not in MODES:
        raise ValueError(f"unknown preprocessing {mode!r}; choose one of {', '.join(MODES)}")

    class Preprocess(keras.layers.Layer):
        def call(self, x):
            x = ops.cast(x, "float32")
            if mode == "caffe":
                return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_MEANS_BGR)
            if mode == "torch":
                return (x / 255.0 - ops.convert_to_tensor(TORCH_MEAN_RGB)) / ops.convert_to_tensor(TORCH_STD_RGB)
            if mode == "tf":
                return x / 127.5 - 1.0
            if mode == "lite":
                return (x - 127.0) / 128.0
            return x

    return Preprocess(dtype="float32", name=f"{mode}_preprocess")
