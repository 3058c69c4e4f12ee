"""The files and names of a converted IR, written durably, and the model's name in messages: what the
conversion writes, the cache validates and the runtime reads."""

from __future__ import annotations

import os

# Bump when the conversion changes what it writes: IRs of an older conversion are converted again.
CONVERSION = 1

INPUT_NAME = "rgb_uint8"
OUTPUT_NAME = "embedding"
IR_XML = "model.xml"
IR_BIN = "model.bin"
META = "lookalike.json"


def describe(inference_model) -> str:
    """The model's name for messages: the trunk inside the wrapper, e.g. 'vgg16'."""
    inner = [layer.name for layer in getattr(inference_model, "layers", ()) if hasattr(layer, "layers")]
    return f"model {(inner[0] if inner else inference_model.name)!r}"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:500]}" if text else type(exc).__name__


def fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    try:
        fsync(path)
    except OSError:
        pass  # not every file system lets a directory be fsynced
