"""The model core: a pretrained Keras CNN trunk that maps a batch of RGB images to embeddings.

``Embedder.embed(batch) -> array`` is all the jobs need and is testable without Spark. Everything
here is backend-neutral Keras 3 (TensorFlow by default; ``KERAS_BACKEND=jax`` works too).

On a GPU the uint8 pixels go to the device as they are and the caffe preprocessing runs there,
inside the model: converting to float32 on the CPU would cost more CPU time than decoding the JPEG
and send four times the bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lookalike.config import ModelConfig, S3Config
from lookalike.errors import WeightsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedWeights:
    file_name: str
    md5: str
    url: str


# Keras' own published files (keras/src/applications/vgg16.py): a local or s3:// file with one of
# these names is checked against the same md5 that Keras checks after a download.
PUBLISHED = {
    "vgg16": {
        "notop": PublishedWeights(
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "6d6bbae143d832006294945121d1f1fc",
            "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        "top": PublishedWeights(
            "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
            "64373286793e3c8b2b4e3219cbf3544b",
            "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
            "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        ),
    }
}

# What model.resolve() puts in model.weights when ImageNet weights cannot be had and the config
# allows random init: distinct from a user's explicit "none" in the weights tag and fingerprint.
IMAGENET_FALLBACK = "none:imagenet-unavailable"

OUTPUT_DIM = {("vgg16", "avg"): 512, ("vgg16", "max"): 512, ("vgg16", "flatten"): 7 * 7 * 512}

MISSING_WEIGHTS_HELP = (
    "ImageNet weights for {name} could not be downloaded ({reason}). Machines without internet "
    "access need the file {file} (md5 {md5}) from {url}: copy it next to the job and set "
    "model.weights=/path/to/{file}, or upload it to S3 and set model.weights=s3://bucket/key/{file}."
)


def keras_backend() -> str:
    import keras

    return keras.backend.backend()


def preprocess(batch: np.ndarray) -> np.ndarray:
    """Exactly Keras' ``vgg16.preprocess_input`` (caffe mode: RGB->BGR, ImageNet means subtracted)."""
    from keras.applications import vgg16

    return vgg16.preprocess_input(np.asarray(batch, dtype=np.float32))


# keras.applications.vgg16.preprocess_input's caffe-mode means, in BGR order.
CAFFE_MEANS_BGR = (103.939, 116.779, 123.68)


def _with_preprocessing(trunk):
    """uint8 RGB in, the trunk's output out: :func:`preprocess` as the model's first layer, kept in
    float32 under mixed precision so that it gives the same numbers as the NumPy version."""
    import keras
    from keras import ops

    class CaffePreprocess(keras.layers.Layer):
        def call(self, x):
            x = ops.flip(ops.cast(x, "float32"), axis=-1)
            return x - ops.convert_to_tensor(np.array(CAFFE_MEANS_BGR, dtype=np.float32))

    pixels = keras.Input(shape=(224, 224, 3), dtype="uint8", name="rgb_uint8")
    return keras.Model(pixels, trunk(CaffePreprocess(dtype="float32", name="caffe_preprocess")(pixels)))


def task_gpu() -> Optional[str]:
    """The GPU address(es) Spark assigned to the running task, if any (spark.task.resource.gpu.amount)."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    context = TaskContext.get()
    if context is None:
        return None
    gpus = context.resources().get("gpu")
    return ",".join(gpus.addresses) if gpus is not None and gpus.addresses else None


def pin_task_gpu() -> Optional[str]:
    """Make the task's GPU the only one this process sees, before the backend initialises CUDA.

    Executors on a multi-GPU host see every GPU; without this every Python worker would put its
    model on GPU 0. Left alone when CUDA_VISIBLE_DEVICES is already set (YARN or a container
    runtime that isolates GPUs has done it, and its numbering is then not Spark's)."""
    address = task_gpu()
    if address is not None and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = address
        log.info("pid %d uses GPU %s (assigned by Spark)", os.getpid(), address)
    return address


def md5_of(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_md5(cfg: ModelConfig, file_name: str) -> Optional[str]:
    if cfg.weights_md5:
        return cfg.weights_md5.lower()
    for published in PUBLISHED.get(cfg.name, {}).values():
        if published.file_name == file_name:
            return published.md5
    return None


def _verify(path: str, cfg: ModelConfig, shown: str) -> str:
    md5 = md5_of(path)
    want = expected_md5(cfg, os.path.basename(shown))
    if want and md5 != want:
        raise WeightsError(
            f"weights file {shown} has md5 {md5}, but {want} was expected "
            f"({'model.weights_md5' if cfg.weights_md5 else 'Keras published checksum'}); "
            f"the file is corrupt or not the published one. Download it again."
        )
    return md5


def fetch_weights(cfg: ModelConfig, s3: S3Config) -> tuple[str, str]:
    """Make model.weights (a path or s3:// URI) a checked local file. Returns (path, md5).

    s3:// files are copied once into model.cache_dir, keyed by their ETag, so that every Python
    worker on a host shares one download.
    """
    from lookalike.io.storage import StorageError, storage_for
    from lookalike.io.uris import is_s3

    source = cfg.weights
    if not is_s3(source):
        path = os.path.expanduser(source[len("file://"):] if source.startswith("file://") else source)
        if not os.path.isfile(path):
            raise WeightsError(f"model.weights: file not found: {path}")
        return path, _verify(path, cfg, path)

    storage = storage_for(source, s3)
    try:
        found = storage.stat(source)
    except StorageError as exc:
        raise WeightsError(f"model.weights: cannot read {source}: {exc.message}") from None
    if found is None:
        raise WeightsError(f"model.weights: cannot read {source}: no such file")
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
            raise WeightsError(f"model.weights: cannot download {source}: {exc.message}") from None
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    return target, _verify(target, cfg, source)


def imagenet_available(cfg: ModelConfig) -> tuple[bool, str]:
    """Try Keras' own download (cached in ~/.keras/models). Returns (ok, reason if not)."""
    from keras.utils import get_file

    published = PUBLISHED[cfg.name]["notop"]
    try:
        get_file(published.file_name, published.url, cache_subdir="models", file_hash=published.md5)
        return True, ""
    except Exception as exc:  # urllib raises many kinds; all mean "not available here"
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def resolve(cfg: ModelConfig, s3: S3Config) -> ModelConfig:
    """Decide on the driver, once, which weights every worker will load.

    For imagenet without network either fail with instructions or, when
    model.on_missing_weights=random, switch to random-init weights and say so loudly.
    """
    import dataclasses

    if cfg.weights != "imagenet":
        if not is_random_init(cfg):
            fetch_weights(cfg, s3)  # fail fast on the driver, before any task runs
        return cfg
    ok, reason = imagenet_available(cfg)
    if ok:
        return cfg
    published = PUBLISHED[cfg.name]["notop"]
    text = MISSING_WEIGHTS_HELP.format(name=cfg.name, reason=reason, file=published.file_name,
                                       md5=published.md5, url=published.url)
    if cfg.on_missing_weights != "random":
        raise WeightsError(text + " (Or set model.on_missing_weights=random to try the pipeline "
                                  "with random weights, which gives no meaningful similarity.)")
    banner = "!" * 100
    log.warning("\n%s\n%s\nRunning with RANDOM-INIT weights (seed %d) because "
                "model.on_missing_weights=random. Every row is marked weights='random-init:...'; "
                "the neighbours are NOT meaningful recommendations.\n%s", banner, text, cfg.seed, banner)
    return dataclasses.replace(cfg, weights=IMAGENET_FALLBACK)


def is_random_init(cfg: ModelConfig) -> bool:
    return cfg.weights in ("none", IMAGENET_FALLBACK)


def weights_tag(cfg: ModelConfig, md5: Optional[str] = None) -> str:
    if is_random_init(cfg):
        tag = f"random-init:seed={cfg.seed}"
        return tag + " (imagenet unavailable)" if cfg.weights == IMAGENET_FALLBACK else tag
    if cfg.weights == "imagenet":
        return "imagenet"
    return f"file:{os.path.basename(cfg.weights)}@md5:{md5}"


def fingerprint(cfg: ModelConfig) -> str:
    """What makes two embeddings comparable: model, weights source, pooling, precision."""
    payload = f"{cfg.name}|{cfg.weights}|{cfg.weights_md5}|{cfg.pooling}|{cfg.precision}|{cfg.seed if is_random_init(cfg) else ''}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _configure_threads(threads: int) -> None:
    if threads <= 0 or keras_backend() != "tensorflow":
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:
        pass  # TensorFlow already initialised in this process; keep its pool


class Embedder:
    """A Keras CNN trunk with global pooling; ``embed`` maps uint8 RGB batches to float32 vectors."""

    def __init__(self, cfg: ModelConfig, s3: Optional[S3Config] = None, threads: int = 0):
        import keras

        started = time.perf_counter()
        _configure_threads(threads or cfg.threads)
        # The dtype policy is process-wide state: set it for this model's layers only, so that a
        # float32 model built later in the same worker stays float32.
        previous_policy = keras.config.dtype_policy()
        if cfg.precision != "float32":
            keras.config.set_dtype_policy(f"mixed_{cfg.precision}")
        try:
            trunk, md5 = self._build(keras, cfg, s3)
            inference = _with_preprocessing(trunk)
        finally:
            keras.config.set_dtype_policy(previous_policy)
        if cfg.jit_compile is not None:
            inference.jit_compile = cfg.jit_compile
            trunk.jit_compile = cfg.jit_compile
        self.model = trunk
        self.inference_model = inference
        self.config = cfg
        self.dim = OUTPUT_DIM[(cfg.name, cfg.pooling)]
        self.weights_tag = weights_tag(cfg, md5)
        self.fingerprint = fingerprint(cfg)
        # A compiled (XLA) program is specialised to one batch shape: pad every batch to
        # model.batch_size instead of compiling again for each partition's short last batch.
        self.fixed_batch = bool(inference.jit_compile) or keras_backend() == "jax"
        self.load_seconds = time.perf_counter() - started

    @staticmethod
    def _build(keras, cfg: ModelConfig, s3: Optional[S3Config]):
        md5 = None
        weights: Optional[str]
        if is_random_init(cfg):
            # Same seed, same weights, in every process: tests and random-init runs are reproducible.
            keras.utils.set_random_seed(cfg.seed)
            weights = None
        elif cfg.weights == "imagenet":
            weights = "imagenet"
        else:
            weights, md5 = fetch_weights(cfg, s3 or S3Config())
        pooling = None if cfg.pooling == "flatten" else cfg.pooling
        trunk = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3),
                                         pooling=pooling)
        if weights == "imagenet":
            published = PUBLISHED[cfg.name]["notop"]
            try:
                path = keras.utils.get_file(published.file_name, published.url, cache_subdir="models",
                                            file_hash=published.md5)
            except Exception as exc:
                raise WeightsError(MISSING_WEIGHTS_HELP.format(
                    name=cfg.name, reason=type(exc).__name__, file=published.file_name,
                    md5=published.md5, url=published.url)) from None
            trunk.load_weights(path)
        elif weights is not None:
            try:
                trunk.load_weights(weights)
            except (ValueError, OSError) as exc:
                raise WeightsError(f"model.weights {cfg.weights}: cannot load into {cfg.name} "
                                   f"(include_top=False): {exc}") from None
        if cfg.pooling == "flatten":
            trunk = keras.Sequential([trunk, keras.layers.Flatten()])
        return trunk, md5

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(N, 224, 224, 3) uint8 RGB -> (N, dim) float32, in chunks of at most model.batch_size.

        Other dtypes (pixels already as floats in 0..255) are preprocessed on the CPU instead."""
        batch = np.asarray(batch)
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        step = self.config.batch_size
        parts = [self._embed_chunk(batch[start:start + step]) for start in range(0, len(batch), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _embed_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        if chunk.dtype == np.uint8:
            network, inputs = self.inference_model, chunk
        else:
            network, inputs = self.model, preprocess(chunk)
        if self.fixed_batch and n < self.config.batch_size:
            padding = np.zeros((self.config.batch_size - n,) + inputs.shape[1:], dtype=inputs.dtype)
            inputs = np.concatenate([inputs, padding])
        out = network.predict_on_batch(inputs)
        return np.asarray(out, dtype=np.float32)[:n].reshape(n, self.dim)


_cache: dict = {}
_cache_lock = threading.Lock()
LOADS = {"count": 0}


def get_embedder(cfg: ModelConfig, s3: Optional[S3Config] = None, threads: int = 0) -> Embedder:
    """The process-wide Embedder for these settings: built on first use, then reused by every batch
    and every task that this Python worker runs."""
    key = (cfg, s3, threads)
    with _cache_lock:
        embedder = _cache.get(key)
        if embedder is None:
            if not _cache:
                pin_task_gpu()
            embedder = _cache[key] = Embedder(cfg, s3, threads)
            LOADS["count"] += 1
            log.info("loaded %s (%s, pooling=%s) in %.1fs in pid %d", cfg.name, embedder.weights_tag,
                     cfg.pooling, embedder.load_seconds, os.getpid())
        return embedder


