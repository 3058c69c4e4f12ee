"""Tiny KerasHub presets, random-initialised and saved with ``save_to_preset`` as a real preset is:
one per family lookalike supports (CLIP, SigLIP, DINOv2), and the kinds it refuses (a text tower
alone, another family). Small enough (32-40 px, 2 layers, hidden 16) to build in a second."""

from __future__ import annotations

from pathlib import Path

# CLIP's and ImageNet's published normalisations, as their presets' image converters hold them.
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FAMILIES = ("clip", "siglip", "dinov2")
SIZES = {"clip": 32, "siglip": 32, "dinov2": 40}
DIMS = {"clip": 12, "siglip": 16, "dinov2": 16}  # CLIP: the projection, not the hidden size


def _mean_std(mean, std):
    return [1 / 255 / s for s in std], [-m / s for m, s in zip(mean, std, strict=True)]


def build(family: str, directory: Path, seed: int = 1) -> Path:
    """Save a tiny ``family`` preset (backbone and image converter) into ``directory``."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    side = SIZES.get(family, 32)
    if family == "clip":
        backbone = keras_hub.models.CLIPBackbone(
            vision_encoder=keras_hub.models.CLIPVisionEncoder(
                patch_size=8, hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=32, image_shape=(32, 32, 3)
            ),
            text_encoder=_clip_text(),
            projection_dim=DIMS["clip"],
        )
        scale, offset = _mean_std(CLIP_MEAN, CLIP_STD)
        converter = keras_hub.layers.CLIPImageConverter(
            image_size=(side, side), scale=scale, offset=offset, interpolation="bicubic"
        )
    elif family == "siglip":
        backbone = keras_hub.models.SigLIPBackbone(
            vision_encoder=keras_hub.models.SigLIPVisionEncoder(
                patch_size=8, hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=32, image_shape=(32, 32, 3)
            ),
            text_encoder=keras_hub.models.SigLIPTextEncoder(
                vocabulary_size=50,
                embedding_dim=16,
                hidden_dim=16,
                num_layers=1,
                num_heads=2,
                intermediate_dim=32,
                max_sequence_length=8,
            ),
        )
        converter = keras_hub.layers.SigLIPImageConverter(image_size=(side, side), scale=1 / 127.5, offset=-1.0)
    elif family == "dinov2":
        backbone = keras_hub.models.DINOV2Backbone(
            patch_size=4,
            num_layers=2,
            hidden_dim=16,
            num_heads=2,
            intermediate_dim=32,
            image_shape=(side, side, 3),
            position_embedding_shape=(side, side, 3),
        )
        scale, offset = _mean_std(IMAGENET_MEAN, IMAGENET_STD)
        converter = keras_hub.layers.DINOV2ImageConverter(
            image_size=(side, side), scale=scale, offset=offset, interpolation="bicubic", antialias=True
        )
    elif family == "clip_text":
        backbone, converter = _clip_text(), None
    elif family == "resnet":
        backbone = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[3],
            stackwise_num_filters=[64],
            stackwise_num_blocks=[1],
            stackwise_num_strides=[1],
            block_type="basic_block",
            image_shape=(32, 32, 3),
        )
        converter = keras_hub.layers.ResNetImageConverter(image_size=(32, 32), scale=1 / 255.0)
    else:
        raise ValueError(family)
    backbone.save_to_preset(str(directory))
    if converter is not None:
        converter.save_to_preset(str(directory))
    return directory


def _clip_text():
    import keras_hub

    return keras_hub.models.CLIPTextEncoder(
        vocabulary_size=50,
        embedding_dim=16,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=8,
    )


def reference(preset: Path, family: str, pixels, image_size: int | None = None):
    """KerasHub's own embedding of ``pixels`` (uint8, already at the model's size): its image
    converter, then CLIP's ``get_vision_embeddings`` (projected), SigLIP's (pooled), or the CLS
    token of DINOv2's output sequence."""
    import keras_hub
    import numpy as np

    extra = {"image_shape": (image_size, image_size, 3)} if image_size else {}
    backbone = keras_hub.models.Backbone.from_preset(str(preset), dtype="float32", **extra)
    converter = keras_hub.layers.ImageConverter.from_preset(str(preset))
    if image_size:
        converter.image_size = (image_size, image_size)
    images = converter(np.asarray(pixels))
    if family == "dinov2":
        return np.asarray(backbone({"images": images}))[:, 0, :]
    return np.asarray(backbone.get_vision_embeddings(images))
