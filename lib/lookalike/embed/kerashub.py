"""KerasHub presets as backbones (``model.name: keras_hub``): CLIP, SigLIP/SigLIP2 and DINOv2.

A preset is the directory ``Backbone.save_to_preset`` writes (config.json, model.weights.h5,
image_converter.json, ...): local, an ``s3://`` prefix copied once per host into model.cache_dir,
or a ``kaggle://``/``hf://`` handle where there is internet. Its family comes from config.json's
class name, its preprocessing from the image converter (size, interpolation, scale, offset),
which becomes the model's first layer so that OpenVINO converts it with the network. Each family
gives its documented image embedding: CLIP the projected one, SigLIP the pooled one (its MAP
head), DINOv2 the CLS token of the last layer (after its final layer norm).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

from lookalike.config import ModelConfig, S3Config
from lookalike.embed.checksums import md5_of
from lookalike.errors import WeightsError, storage_failure

log = logging.getLogger(__name__)

# config.json's class_name -> the family. SigLIP2 presets are SigLIPBackbone too (another tokenizer).
FAMILIES = {"CLIPBackbone": "clip", "SigLIPBackbone": "siglip", "DINOV2Backbone": "dinov2"}
# Text towers saved on their own: a KerasHub model with no image input.
TEXT_ONLY = ("CLIPTextEncoder", "SigLIPTextEncoder", "MetaCLIP2TextEncoder")
HANDLES = ("kaggle://", "hf://")
CONFIG_FILE, IMAGE_CONVERTER_FILE = "config.json", "image_converter.json"
WEIGHTS_FILES = ("model.weights.h5", "model.weights.json")  # one file, or the index of a sharded one
# KerasHub's resize interpolations, as Pillow calls them (the workers resize with Pillow).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos3", "lanczos5", "area")

SAVE_HELP = (
    "on a machine with internet, save it: keras_hub.models.Backbone.from_preset(NAME).save_to_preset(DIR) "
    "and keras_hub.layers.ImageConverter.from_preset(NAME).save_to_preset(DIR), then set model.preset to "
    "DIR or to an s3:// copy of it (docs/backbones.md)"
)


@dataclass(frozen=True)
class Preset:
    """A preset on local disk, read: what builds its image tower and what its pixels need."""

    path: str
    md5: str
    family: str
    class_name: str
    config: dict
    input_size: tuple[int, int]  # (width, height) the images are resized to
    interpolation: str
    scale: float | list[float] | None
    offset: float | list[float] | None


def display_name(cfg: ModelConfig) -> str:
    """The preset's name as the rows' weights column shows it: its last path component."""
    return str(cfg.preset or "").rstrip("/").rsplit("/", 1)[-1]


def weights_tag(cfg: ModelConfig, md5: str | None) -> str:
    return f"preset:{display_name(cfg)}@md5:{md5}"


def fingerprint_payload(cfg: ModelConfig) -> str:
    """What, beyond the common keys, makes two keras_hub embeddings comparable."""
    return f"|preset={cfg.preset}|image_size={cfg.image_size}"


def local_preset(cfg: ModelConfig, s3: S3Config) -> tuple[str, str]:
    """(local directory, md5 of its files) of model.preset, checked against model.weights_md5."""
    from lookalike.io.uris import is_s3

    source = str(cfg.preset or "")
    if not source:  # load_config refuses this; a config built in code may not have been through it
        raise WeightsError("model.name=keras_hub needs model.preset: a saved KerasHub preset directory or s3:// prefix")
    if source.startswith(HANDLES):
        path = _download_handle(source)
    elif is_s3(source):
        path = _copy_from_s3(cfg, s3, source)
    else:
        path = os.path.expanduser(source[len("file://") :] if source.startswith("file://") else source)
        if not os.path.isdir(path):
            raise WeightsError(
                f"model.preset {source}: no such directory; {SAVE_HELP.replace('NAME', repr(display_name(cfg)))}"
            )
    _check_files(path, source)
    md5 = preset_md5(path)
    if cfg.weights_md5 and md5 != cfg.weights_md5.lower():
        raise WeightsError(
            f"model.preset {source}: its files have md5 {md5}, but model.weights_md5 is {cfg.weights_md5}; "
            f"the copy is incomplete or another preset. Copy it again"
        )
    return path, md5


def preset_md5(path: str) -> str:
    """One md5 for a directory: over each file's relative path and md5, in sorted order."""
    digest = hashlib.md5()
    for relative in sorted(_files(path)):
        digest.update(f"{relative}\0{md5_of(os.path.join(path, relative))}\n".encode())
    return digest.hexdigest()


def _files(path: str) -> list[str]:
    found = []
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.relpath(os.path.join(root, n), path) for n in names if not n.startswith(".")]
    return found


def _check_files(path: str, source: str) -> None:
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        raise WeightsError(f"model.preset {source}: {CONFIG_FILE} is missing: not a saved KerasHub preset; {SAVE_HELP}")
    if not any(os.path.isfile(os.path.join(path, name)) for name in WEIGHTS_FILES):
        raise WeightsError(
            f"model.preset {source}: {WEIGHTS_FILES[0]} is missing (the weights); copy the whole preset "
            f"directory, or {SAVE_HELP}"
        )


def _download_handle(source: str) -> str:
    """A kaggle:// or hf:// preset through KerasHub's own download (needs network and kagglehub or
    huggingface_hub): the directory it lands in."""
    try:
        from keras_hub.src.utils.preset_utils import get_file

        config = get_file(source, CONFIG_FILE)
        for name in (WEIGHTS_FILES[0], IMAGE_CONVERTER_FILE):
            get_file(source, name)
    except Exception as exc:  # no network, no kagglehub, a wrong handle: all mean "not here"
        reason = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise WeightsError(
            f"model.preset {source}: cannot download it here ({type(exc).__name__}: {reason}); "
            f"{SAVE_HELP.replace('NAME', repr(source))}"
        ) from None
    return os.path.dirname(config)


def _copy_from_s3(cfg: ModelConfig, s3: S3Config, source: str) -> str:
    """The s3:// prefix as a local directory in model.cache_dir, keyed by its files' ETags, so that
    every Python worker on a host shares one download; a partial copy never takes its place."""
    from lookalike.io.storage import StorageError, storage_for

    prefix = source.rstrip("/") + "/"
    storage = storage_for(prefix, s3)
    try:
        entries = sorted(storage.list(prefix), key=lambda e: e.key)
    except StorageError as exc:
        raise storage_failure(WeightsError, f"model.preset: cannot list {source}: {exc.message}", exc) from None
    if not entries:
        raise WeightsError(f"model.preset {source}: no files under this prefix; {SAVE_HELP}")
    versions = "|".join(f"{e.key}@{e.version}" for e in entries)
    cache_dir = os.path.expanduser(cfg.cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(
        cache_dir, f"{hashlib.sha1(f'{prefix}|{versions}'.encode()).hexdigest()[:12]}-{display_name(cfg)}"
    )
    if os.path.isdir(target):
        return target
    partial = tempfile.mkdtemp(dir=cache_dir, prefix=".partial-")
    try:
        for entry in entries:
            local = os.path.join(partial, *entry.key.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            storage.download(entry.uri, local)
        try:
            os.rename(partial, target)  # atomic; another worker that finished first wins
        except OSError:
            if not os.path.isdir(target):
                raise
    except StorageError as exc:
        raise storage_failure(WeightsError, f"model.preset: cannot download {source}: {exc.message}", exc) from None
    finally:
        if os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)
    log.info("copied preset %s to %s (%d files)", source, target, len(entries))
    return target


def _load_json(path: str, name: str, source: str) -> dict:
    try:
        with open(os.path.join(path, name), encoding="utf-8") as handle:
            loaded = json.load(handle)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"model.preset {source}: cannot read {name}: {exc}") from None
    if not isinstance(loaded, dict):
        raise WeightsError(f"model.preset {source}: {name} is not a KerasHub config (a JSON object expected)")
    return loaded


def family_of(config: dict, source: str) -> str:
    class_name = str(config.get("class_name", ""))
    if class_name in FAMILIES:
        return FAMILIES[class_name]
    found = config.get("config")
    inner: dict = found if isinstance(found, dict) else {}
    if class_name in TEXT_ONLY:
        raise WeightsError(
            f"model.preset {source}: {class_name} is a text tower alone (no image tower); lookalike embeds "
            f"images: save the whole CLIP/SigLIP backbone (CLIPBackbone, SigLIPBackbone) as the preset"
        )
    text = " (a text model: it has no image tower)" if "vocabulary_size" in inner and "image_shape" not in inner else ""
    raise WeightsError(
        f"model.preset {source}: {class_name or 'an unknown model'} is not a supported family{text}; "
        f"model.name=keras_hub takes CLIPBackbone (CLIP), SigLIPBackbone (SigLIP/SigLIP2) or "
        f"DINOV2Backbone (DINOv2) presets"
    )


def read(cfg: ModelConfig, s3: S3Config) -> Preset:
    """Fetch (once per host) and read model.preset, without importing Keras."""
    import importlib.util

    if importlib.util.find_spec("keras_hub") is None:
        raise WeightsError(
            "model.name=keras_hub needs the keras-hub package on the driver and every executor: "
            "pip install --no-deps -c constraints.txt -r requirements-nodeps.txt (make setup does)"
        )
    path, md5 = local_preset(cfg, s3)
    source = str(cfg.preset)
    config = _load_json(path, CONFIG_FILE, source)
    family = family_of(config, source)
    inner = config.get("config") or {}
    if not os.path.isfile(os.path.join(path, IMAGE_CONVERTER_FILE)):
        raise WeightsError(
            f"model.preset {source}: {IMAGE_CONVERTER_FILE} is missing (the preprocessing: size, scale, "
            f"offset); {SAVE_HELP}"
        )
    converter = _load_json(path, IMAGE_CONVERTER_FILE, source).get("config") or {}
    interpolation = str(converter.get("interpolation", "bilinear"))
    if interpolation not in INTERPOLATIONS:
        raise WeightsError(f"model.preset {source}: unsupported image converter interpolation {interpolation!r}")
    side = _side(family, inner, converter, cfg, source)
    return Preset(
        path,
        md5,
        family,
        str(config["class_name"]),
        config,
        (side, side),
        interpolation,
        converter.get("scale"),
        converter.get("offset"),
    )


def _tower_side(family: str, inner: dict) -> int | None:
    encoder = inner.get("vision_encoder", {}).get("config", {}) if family != "dinov2" else inner
    shape = encoder.get("image_shape")
    return int(shape[0]) if shape else None


def _side(family: str, inner: dict, converter: dict, cfg: ModelConfig, source: str) -> int:
    """The square side the images are resized to: model.image_size (DINOv2), else the converter's."""
    size = converter.get("image_size")
    tower = _tower_side(family, inner)
    side = int(size[0]) if size else tower
    if size and int(size[0]) != int(size[1]):
        raise WeightsError(f"model.preset {source}: a non-square image converter size {size} is not supported")
    if cfg.image_size is not None:
        if family != "dinov2" and cfg.image_size != tower:
            raise WeightsError(
                f"model.image_size={cfg.image_size}: a {family} preset runs at its own size ({tower} px: its "
                f"position embeddings are fixed); only DINOv2 interpolates them. Remove model.image_size"
            )
        patch = int(inner.get("patch_size", 1))
        if cfg.image_size % patch:
            raise WeightsError(
                f"model.image_size={cfg.image_size}: not a multiple of the preset's patch size {patch}; "
                f"use e.g. {max(patch, cfg.image_size // patch * patch)}"
            )
        side = cfg.image_size
    if side is None:
        raise WeightsError(f"model.preset {source}: neither the image converter nor the backbone gives an image size")
    if family != "dinov2" and side != tower:
        raise WeightsError(
            f"model.preset {source}: the image converter resizes to {side} px but the {family} tower takes "
            f"{tower} px; save the preset's own image converter with it"
        )
    return int(side)


def build(keras, cfg: ModelConfig, preset: Preset):
    """The image tower of ``preset`` (as :func:`read` gives it) on float 0..255 RGB -> embedding."""
    import keras_hub

    side = preset.input_size[1]
    overrides: dict = {"dtype": keras.config.dtype_policy().name}
    if preset.family == "dinov2" and _tower_side("dinov2", preset.config.get("config") or {}) != side:
        overrides["image_shape"] = (side, side, 3)
    try:
        from keras_hub.src.utils.preset_utils import get_preset_loader

        loader = get_preset_loader(preset.path)
        # CLIP's and SigLIP's towers keep the dtype they were saved with whatever from_preset is
        # told: every nested layer config gets this run's policy (float32, or mixed on GPUs).
        loader.config = _with_dtype(loader.config, overrides["dtype"])
        backbone = loader.load_backbone(keras_hub.models.Backbone, True, **overrides)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise WeightsError(f"model.preset {cfg.preset}: cannot load it: {str(exc).splitlines()[0][:300]}") from None
    pixels = keras.Input(shape=(side, side, 3), dtype="float32", name="rgb")
    x = pixels
    if preset.scale is not None or preset.offset is not None:
        # The converter's x * scale + offset, in float32 whatever the compute policy.
        x = keras.layers.Rescaling(
            _constant(preset.scale, 1.0), _constant(preset.offset, 0.0), dtype="float32", name="preset_rescaling"
        )(x)
    if preset.family == "dinov2":
        embedding = backbone({"images": x})[:, 0, :]
    else:
        embedding = backbone.get_vision_embeddings(x)
    trunk = keras.Model(pixels, keras.layers.Activation("linear", dtype="float32", name="embedding")(embedding))
    log.info("keras_hub preset %s: %s (%s), %d px, %s", cfg.preset, preset.class_name, preset.family, side, preset.md5)
    return trunk


def _with_dtype(node, dtype: str):
    """A serialized Keras config with every layer's ``dtype`` set to ``dtype``."""
    if isinstance(node, list):
        return [_with_dtype(item, dtype) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _with_dtype(value, dtype) for key, value in node.items()}
    inner = out.get("config")
    if "class_name" in out and isinstance(inner, dict) and "dtype" in inner:
        inner["dtype"] = dtype
    return out


def _constant(value, default: float):
    import numpy as np

    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        return np.asarray(value, dtype=np.float32)
    return float(value)


def embedding_dim(preset: Preset) -> int:
    inner = preset.config.get("config") or {}
    if preset.family == "clip":
        return int(inner["projection_dim"])
    if preset.family == "siglip":
        return int(inner["vision_encoder"]["config"]["hidden_dim"])
    return int(inner["hidden_dim"])


def describe(cfg: ModelConfig, preset: Preset) -> tuple[str, tuple[int, int], str, str, int]:
    """(preprocessing mode, input size, interpolation, weights tag, dim) without building the model:
    what the embed stage needs to run a cached OpenVINO IR. The preprocessing is inside the model,
    so its input is plain 0..255 pixels ("raw")."""
    return "raw", preset.input_size, preset.interpolation, weights_tag(cfg, preset.md5), embedding_dim(preset)
