"""lookalike is a library in other people's processes: importing and using it (decoding images,
building a bfloat16 VGG16) leaves their process-wide state alone (Pillow's decompression-bomb limit,
the logging configuration, Keras' dtype policy, the Python, NumPy and TensorFlow global seeds).
The limits it needs are passed to each call instead: tests/unit/embed/test_images_limits.py."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.paths import ROOT, SAMPLE_DIR

PROBE = r"""
import importlib, json, logging, pkgutil, sys
import PIL.Image
before = {"pillow": PIL.Image.MAX_IMAGE_PIXELS, "handlers": len(logging.getLogger().handlers),
          "level": logging.getLogger().level}
import lookalike
for module in pkgutil.walk_packages(lookalike.__path__, "lookalike."):
    importlib.import_module(module.name)
from lookalike.embed import images
data = open(sys.argv[1], "rb").read()
images.decode(data, 1000 * 1000)
images.thumbnail(data, 64)
import keras, random, numpy as np, tensorflow as tf
from lookalike.config import ModelConfig
from lookalike.embed import model
random.seed(7); np.random.seed(8); tf.random.set_seed(1234)  # the caller's own seeds
before.update(python=random.getstate()[1][:4], numpy=np.random.get_state()[1][:4].tolist(),
              tf=tf.compat.v1.get_seed(None)[0])
model.Embedder(ModelConfig(weights="none", precision="bfloat16", batch_size=2))  # random-init: seeded
after = {"pillow": PIL.Image.MAX_IMAGE_PIXELS, "handlers": len(logging.getLogger().handlers),
         "level": logging.getLogger().level, "python": random.getstate()[1][:4],
         "numpy": np.random.get_state()[1][:4].tolist(), "tf": tf.compat.v1.get_seed(None)[0]}
print(json.dumps({"before": before, "after": after, "policy": keras.config.dtype_policy().name}))
"""


def test_importing_and_using_lookalike_leaves_process_wide_state_alone():
    sample = sorted(SAMPLE_DIR.rglob("*.jpg"))[0]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(sample)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["after"] == state["before"]
    assert state["before"]["tf"] == 1234  # the caller's TensorFlow seed survives a random-init model
    assert state["before"]["pillow"] is not None  # Pillow's own default, still in force
    assert state["policy"] == "float32"  # a bfloat16 model does not leave its policy behind
