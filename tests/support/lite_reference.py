"""An independent NumPy forward pass of EfficientNet-Lite (float64), written from the architecture
and fed the PyTorch checkpoint's tensors as they are: the oracle the Keras conversion is checked against.

The stage tables are written out per variant (as the checkpoints' shapes show), not computed with
the converter's scaling rules, so that a mistake in those rules shows up as a mismatch.
"""

from __future__ import annotations

import numpy as np

# (expand ratio, kernel, stride, output channels, repeats) per MBConv stage.
STAGES = {
    "efficientnet_lite0": (
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 2),
        (6, 5, 2, 40, 2),
        (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3),
        (6, 5, 2, 192, 4),
        (6, 3, 1, 320, 1),
    ),
    "efficientnet_lite1": (
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 3),
        (6, 5, 2, 40, 3),
        (6, 3, 2, 80, 4),
        (6, 5, 1, 112, 4),
        (6, 5, 2, 192, 5),
        (6, 3, 1, 320, 1),
    ),
    "efficientnet_lite2": (
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 3),
        (6, 5, 2, 48, 3),
        (6, 3, 2, 88, 4),
        (6, 5, 1, 120, 4),
        (6, 5, 2, 208, 5),
        (6, 3, 1, 352, 1),
    ),
}


def normalise(pixels: np.ndarray) -> np.ndarray:
    """The TensorFlow original's, (x - 127)/128: what the product uses (preprocessing mode "lite")."""
    return (pixels.astype(np.float32) - 127) / 128


def same_padding(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow "same": output ceil(n/s), the odd pixel of padding after."""
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def windows(x, k, s):
    """Each kernel offset (i, j) with the input pixels it meets, padded, for every output pixel."""
    x = np.pad(x, ((0, 0), same_padding(x.shape[1], k, s), same_padding(x.shape[2], k, s), (0, 0)))
    ho, wo = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    for i in range(k):
        for j in range(k):
            yield i, j, x[:, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s, :]


def conv(x, w, s=1):  # w: PyTorch (out, in, kh, kw)
    return sum(np.einsum("nhwc,oc->nhwo", win, w[:, :, i, j]) for i, j, win in windows(x, w.shape[2], s))


def depthwise(x, w, s=1):  # w: PyTorch (channels, 1, kh, kw)
    return sum(win * w[:, 0, i, j] for i, j, win in windows(x, w.shape[2], s))


def reference_forward(sd, x, stages, eps=1e-3):
    """(1280-d average-pooled features, 1000 logits), in float64, from the checkpoint's tensors."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}

    def bn(h, p):
        scale = sd[p + ".weight"] / np.sqrt(sd[p + ".running_var"] + eps)
        return (h - sd[p + ".running_mean"]) * scale + sd[p + ".bias"]

    def relu6(h):
        return np.clip(h, 0, 6)

    x = relu6(bn(conv(x.astype(np.float64), sd["_conv_stem.weight"], 2), "_bn0"))
    block, channels = 0, 32
    for expand, kernel, stride, out, repeats in stages:
        for r in range(repeats):
            p, s = f"_blocks.{block}.", stride if r == 0 else 1
            h = x
            if expand != 1:
                h = relu6(bn(conv(h, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            assert sd[p + "_depthwise_conv.weight"].shape[2] == kernel
            h = relu6(bn(depthwise(h, sd[p + "_depthwise_conv.weight"], s), p + "_bn1"))
            h = bn(conv(h, sd[p + "_project_conv.weight"]), p + "_bn2")
            assert h.shape[-1] == out
            x = h + x if s == 1 and channels == out else h
            block, channels = block + 1, out
    assert f"_blocks.{block}._bn1.weight" not in sd
    x = relu6(bn(conv(x, sd["_conv_head.weight"]), "_bn1"))
    features = x.mean(axis=(1, 2))
    return features, features @ sd["_fc.weight"].T + sd["_fc.bias"]
