"""lookalike is a library in other people's processes: importing and using it leaves their
process-wide state alone (Pillow's decompression-bomb limit, the logging configuration, Keras'
dtype policy), and the limits it needs are passed to each call instead."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import pytest

from lookalike.embed import images

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
import keras
from lookalike.config import ModelConfig
from lookalike.embed import model
model.Embedder(ModelConfig(weights="none", precision="bfloat16", batch_size=2))
after = {"pillow": PIL.Image.MAX_IMAGE_PIXELS, "handlers": len(logging.getLogger().handlers),
         "level": logging.getLogger().level}
print(json.dumps({"before": before, "after": after, "policy": keras.config.dtype_policy().name}))
"""


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and whose pixel data never comes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_importing_and_using_lookalike_leaves_process_wide_state_alone():
    sample = sorted(SAMPLE_DIR.rglob("*.jpg"))[0]
    result = subprocess.run([sys.executable, "-c", PROBE, str(sample)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["after"] == state["before"]
    assert state["before"]["pillow"] is not None  # Pillow's own default, still in force
    assert state["policy"] == "float32"  # a bfloat16 model does not leave its policy behind


@pytest.mark.parametrize("max_pixels", [0, 50_000_000])
def test_an_image_past_pillows_own_limit_is_too_large_whatever_max_pixels_says(max_pixels):
    bomb = png_header(20_000, 10_000)  # 200M pixels: past twice Pillow's default limit
    with pytest.raises(images.ImageError) as caught:
        images.decode(bomb, max_pixels)
    assert caught.value.kind == "too_large"
    with pytest.raises(images.ImageError) as caught:
        images.thumbnail(bomb, 64, max_pixels)
    assert caught.value.kind == "too_large"


def test_max_pixels_is_checked_per_call_from_the_header():
    big = png_header(8_000, 8_000)  # 64M pixels: under Pillow's limit
    with pytest.raises(images.ImageError, match="input.max_pixels=50000000") as caught:
        images.decode(big, 50_000_000)
    assert caught.value.kind == "too_large"
    # The thumbnail's default is the jobs' default limit, not "no limit".
    with pytest.raises(images.ImageError) as caught:
        images.thumbnail(big)
    assert caught.value.kind == "too_large"
