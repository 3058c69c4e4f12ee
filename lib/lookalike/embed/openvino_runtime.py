"""OpenVINO as the CPU runtime of a Keras model: converted once per host, cached, compiled per worker.

The Keras model (``Embedder.inference_model``: uint8 ``rgb_uint8`` (N, H, W, 3) in, preprocessing
layer, trunk, (N, dim) out) stays the source of truth. :func:`compile_model` converts it to an
OpenVINO IR (``model.xml`` + ``model.bin``, float32 weights) the first time a host sees a key,
caches it under ``cache_dir/openvino/<key>/``, and compiles it for this CPU with the precision asked
for. Measured on 2 cores of a Xeon with AMX-BF16 (images/s, batch 32, 2 threads):

                       Keras f32  Keras bf16  OpenVINO f32  OpenVINO bf16
    efficientnet_lite0     114        81          239            575
    vgg16                   13        84           13             91

bfloat16 matters most for VGG16 (7x), OpenVINO most for the EfficientNets, whose depthwise
convolutions TensorFlow runs slowly (and more slowly still in bfloat16).

The cache is safe for many Python workers on one host starting together:

* the IR is built in a temporary directory inside ``cache_dir/openvino`` and renamed into place
  in one ``os.rename``: a reader sees no directory or a complete one, never half an IR;
* an advisory lock (``flock``) makes the other workers wait for the first one's IR instead of all
  converting at once (each conversion holds a TensorFlow graph of the model in memory); if the
  lock cannot be had (a file system without ``flock``, a stuck holder) they convert too, and the
  rename decides: the loser deletes its own copy and uses the winner's;
* a cached IR that cannot be read, does not match the model (input or output shape) or was
  written by another version of this conversion (:data:`CONVERSION`) is moved aside and rebuilt;
  temporary directories left by killed workers are removed after an hour. The IR is float32
  whatever the precision: one copy serves float32 and bfloat16 workers.

Nothing process-wide is changed: no environment variables, no Keras or TensorFlow settings. The
OpenVINO ``Core`` is this module's own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Callable, Optional

import numpy as np

from lookalike.embed.model import keras_backend

log = logging.getLogger(__name__)

# model.precision -> OpenVINO's INFERENCE_PRECISION_HINT. float16 is left out on purpose: see
# compile_model.
PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16"}
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
# One request at a time from one Python thread (a Spark task's batches): LATENCY runs each batch
# on all the threads; THROUGHPUT splits them into streams that only parallel requests would fill.
DEFAULT_PERFORMANCE_HINT = "LATENCY"

# Bump when the conversion changes what it writes: IRs of an older conversion are converted again.
CONVERSION = 1

INPUT_NAME = "rgb_uint8"
OUTPUT_NAME = "embedding"
IR_XML = "model.xml"
IR_BIN = "model.bin"
META = "lookalike.json"
SUBDIR = "openvino"
TEMP_PREFIX = ".tmp-"
STALE_PREFIX = ".stale-"
# A temporary directory older than this was left by a worker that died while converting.
ABANDONED_AFTER_S = 3600.0
# How long a worker waits for another one's conversion before converting itself.
LOCK_WAIT_S = 900.0

_available: Optional[bool] = None


def available() -> bool:
    """Whether OpenVINO can be imported here (installed, and built for this NumPy)."""
    global _available
    if _available is None:
        try:
            import openvino  # noqa: F401

            _available = True
        except Exception:  # an ImportError, or a broken install failing in its own way
            _available = False
    return _available


def version() -> Optional[str]:
    if not available():
        return None
    import openvino

    return openvino.get_version()


class CompiledModel:
    """uint8 (N, H, W, 3) RGB -> float32 (N, dim): the callable :func:`compile_model` returns.

    ``precision`` is the precision OpenVINO actually computes in (``f32`` or ``bf16``: a CPU without
    bf16 instructions may run a bf16 request in f32), ``converted`` whether this call converted the
    model (False: the cached IR was used), ``convert_seconds`` and ``compile_seconds`` what they
    took. Batches of ``batch_size`` images run on a copy compiled for exactly that shape; other
    sizes on a dynamic-shape copy compiled when first needed. Safe to call from several threads
    (calls are serialised: one request at a time is what the CPU plugin runs fastest anyway).
    """

    def __init__(self, core, name: str, ir_dir: str, config: dict, batch_size: int, input_shape: tuple,
                 dim: int, converted: bool, convert_seconds: float, performance_hint: str):
        self._core, self._name, self._config = core, name, config
        self._lock = threading.Lock()
        self._requests: dict = {}  # batch size (None: any) -> infer request
        self.ir_dir = ir_dir
        self.batch_size = batch_size
        self.input_shape = input_shape  # (H, W, 3)
        self.dim = dim
        self.converted = converted
        self.convert_seconds = convert_seconds
        self.performance_hint = performance_hint
        started = time.perf_counter()
        compiled = self._compile(batch_size or None)
        self.compile_seconds = time.perf_counter() - started
        self.precision = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        try:
            self.pinned = bool(compiled.get_property("ENABLE_CPU_PINNING"))
        except Exception:  # not a property of the CPU plugin on every platform
            self.pinned = False

    def _compile(self, batch: Optional[int]):
        """Compile for ``batch`` images (None: any number) and keep its infer request."""
        try:
            model = self._core.read_model(os.path.join(self.ir_dir, IR_XML))
            if batch is not None:
                # A fixed shape lets the CPU plugin plan every layer once: 12-15% more images/s
                # for efficientnet_lite0 (float32 and bfloat16), no difference for VGG16.
                model.reshape([batch, *self.input_shape])
            compiled = self._core.compile_model(model, "CPU", self._config)
        except Exception as exc:
            raise RuntimeError(f"OpenVINO cannot compile {self._name} for CPU ({_one_line(exc)}); IR {self.ir_dir}, "
                               f"settings {self._config}") from exc
        self._requests[batch] = compiled.create_infer_request()
        return compiled

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.dtype != np.uint8 or batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(f"expected uint8 RGB images of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {batch.dtype} {batch.shape}")
        n = len(batch)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            shape = n if n in self._requests else None
            if shape not in self._requests:
                self._compile(None)
            request = self._requests[shape]
            request.infer({0: np.ascontiguousarray(batch)}, share_inputs=True)
            # The output tensor's memory is reused by the next request: copy it out.
            out = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        return out.reshape(n, self.dim)

    def __repr__(self) -> str:
        return (f"CompiledModel({self.ir_dir}, precision={self.precision}, threads={self.threads}, "
                f"batch_size={self.batch_size or 'any'}, hint={self.performance_hint})")


def compile_model(inference_model, *, precision: str, threads: int, cache_dir: str, key: str,
                  batch_size: int = 0,
                  performance_hint: str = DEFAULT_PERFORMANCE_HINT) -> Callable[[np.ndarray], np.ndarray]:
    """The Keras ``inference_model`` compiled by OpenVINO for this CPU: a function from a uint8 batch
    (N, H, W, 3) to float32 embeddings (N, dim); N may vary from call to call.

    ``precision``: ``float32`` or ``bfloat16`` (computed natively on CPUs with AMX-BF16 or
    AVX512-BF16; elsewhere OpenVINO computes in float32, see ``.precision`` of the result).
    ``float16`` is refused: on a CPU with AVX512-FP16 it ran slower than float32 (efficientnet_lite0
    209 images/s against 239, VGG16 7 against 13) and far slower than bfloat16, with a smaller
    range. ``threads``: OpenVINO's INFERENCE_NUM_THREADS; 0 for its default, every core of the
    machine, which is right for one process alone and wrong for a Spark task (pass its
    spark.task.cpus). Threads are never pinned to cores. ``cache_dir``: where ``openvino/<key>/``
    holds the converted IR; ``key``: what identifies the model (its fingerprint), one path
    component. ``batch_size``: the size most batches will have (model.batch_size), compiled for
    that exact shape; 0 for a dynamic shape only. ``performance_hint``: LATENCY (every thread on
    each batch: right for batches from one Python thread, 2x THROUGHPUT measured) or THROUGHPUT.

    Raises ValueError for bad arguments and RuntimeError, naming the model and the reason, when
    OpenVINO is missing or cannot convert or compile the model.
    """
    _check_arguments(precision, threads, batch_size, performance_hint, key)
    name = describe(inference_model)
    if not available():
        raise RuntimeError(f"model.runtime=openvino for {name}: the openvino package cannot be imported here "
                           f"(pip install openvino), or use model.runtime=keras")
    import openvino as ov

    input_shape, dim = _shapes(inference_model, name)
    core = ov.Core()
    ir_dir, converted, convert_seconds = _cached_ir(ov, core, inference_model, name, cache_dir, key, input_shape, dim)
    return _compiled(core, name, ir_dir, precision, threads, batch_size, input_shape, dim, converted,
                     convert_seconds, performance_hint)


def load_cached(name: str, *, input_shape: tuple, dim: int, precision: str, threads: int, cache_dir: str, key: str,
                batch_size: int = 0, performance_hint: str = DEFAULT_PERFORMANCE_HINT) -> Optional["CompiledModel"]:
    """The IR cached under ``key`` compiled as :func:`compile_model` would, without the Keras model:
    None when there is no valid IR yet (then build the model and call compile_model). A worker
    that finds the IR never imports TensorFlow or builds the network: 3-10 s less per worker.
    ``input_shape``: (H, W, 3); ``dim``: the output length; both must match the IR."""
    _check_arguments(precision, threads, batch_size, performance_hint, key)
    if not available():
        return None
    import openvino as ov

    core = ov.Core()
    ir_dir = os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), SUBDIR, key)
    if not _valid(core, ir_dir, tuple(input_shape), dim, quiet=True):
        return None
    return _compiled(core, f"model {name!r}", ir_dir, precision, threads, batch_size, tuple(input_shape), dim,
                     False, 0.0, performance_hint)


def _check_arguments(precision: str, threads, batch_size, performance_hint: str, key: str) -> None:
    if precision == "float16":
        raise ValueError("model.precision=float16 is not supported by OpenVINO on CPU: use float32 or bfloat16")
    if precision not in PRECISION_HINTS:
        raise ValueError(f"unknown precision {precision!r} for OpenVINO on CPU: use float32 or bfloat16")
    if not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0: OpenVINO's default), got {threads!r}")
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be an integer >= 0 (0: any), got {batch_size!r}")
    if performance_hint not in PERFORMANCE_HINTS:
        raise ValueError(f"performance_hint must be one of {', '.join(PERFORMANCE_HINTS)}, got {performance_hint!r}")
    if not key or key in (".", "..") or "/" in key or os.sep in key or key.startswith("."):
        raise ValueError(f"key must be a file name (the model's fingerprint), got {key!r}")


def _compiled(core, name: str, ir_dir: str, precision: str, threads: int, batch_size: int, input_shape: tuple,
              dim: int, converted: bool, convert_seconds: float, performance_hint: str) -> "CompiledModel":
    config = {
        "INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision],
        "PERFORMANCE_HINT": performance_hint,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    # OpenVINO pins its threads to the first cores by default: every Python worker on a host (one
    # per Spark task) would then compute on the same core(s). Measured with two 1-thread workers on
    # 2 cores: 278 images/s in all pinned (both on core 0) against 613 unpinned.
    if "ENABLE_CPU_PINNING" in core.get_property("CPU", "SUPPORTED_PROPERTIES"):
        config["ENABLE_CPU_PINNING"] = False
    result = CompiledModel(core, name, ir_dir, config, batch_size, input_shape, dim, converted, convert_seconds,
                           performance_hint)
    how = f"converted in {convert_seconds:.1f}s to" if converted else "reused from"
    log.info("OpenVINO %s: %s %s %s, compiled (%s, %d threads, batch %s, %s) in %.1fs in pid %d", version(), name,
             how, ir_dir, result.precision, result.threads, batch_size or "any", performance_hint,
             result.compile_seconds, os.getpid())
    if precision == "bfloat16" and result.precision != "bf16":
        log.warning("OpenVINO computes %s in %s: this CPU has no bfloat16 instructions", name, result.precision)
    return result


def describe(inference_model) -> str:
    """The model's name for messages: the trunk inside the wrapper, e.g. 'vgg16'."""
    inner = [layer.name for layer in getattr(inference_model, "layers", ()) if hasattr(layer, "layers")]
    return f"model {(inner[0] if inner else inference_model.name)!r}"


def _shapes(inference_model, name: str) -> tuple[tuple, int]:
    inputs, outputs = inference_model.inputs, inference_model.outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{name}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3 or None in shape[1:]:
        raise ValueError(f"{name}: expected an input of shape (batch, height, width, 3), found {shape}")
    out = tuple(outputs[0].shape)[1:]
    if None in out:
        raise ValueError(f"{name}: the output shape {tuple(outputs[0].shape)} must be fixed apart from the batch")
    return tuple(int(d) for d in shape[1:]), int(np.prod(out))


def _type_name(value) -> str:
    """'f32' or 'bf16' for an openvino.Type (or its string)."""
    return value.to_string() if hasattr(value, "to_string") else str(value)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:500]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# The cache


def _cached_ir(ov, core, inference_model, name, cache_dir, key, input_shape, dim) -> tuple[str, bool, float]:
    """(IR directory, whether it was converted now, seconds converting)."""
    root = os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), SUBDIR)
    target = os.path.join(root, key)
    if _valid(core, target, input_shape, dim, quiet=True):
        return target, False, 0.0
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"OpenVINO cache for {name}: cannot create {root} ({_one_line(exc)})") from exc
    with _ConversionLock(os.path.join(root, f".{key}.lock")):
        # Another worker may have finished while this one waited.
        if _valid(core, target, input_shape, dim):
            return target, False, 0.0
        _remove_abandoned(root)
        if os.path.exists(target):
            _set_aside(root, key, target, "it cannot be read or does not match the model")
        started = time.perf_counter()
        staging = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{key}-{os.getpid()}-", dir=root)
        try:
            os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the IR from other users' workers
            _convert(ov, core, inference_model, name, staging, input_shape, dim)
            seconds = time.perf_counter() - started
            try:
                os.rename(staging, target)  # atomic: readers see nothing or the whole IR
                _fsync_dir(root)
                return target, True, seconds
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise RuntimeError(f"OpenVINO cache for {name}: cannot move the IR into {target} "
                                       f"({_one_line(exc)})") from exc
            # Another worker renamed its IR into place first (it converted without the lock): use theirs.
            if _valid(core, target, input_shape, dim):
                log.info("OpenVINO IR %s: another worker won the race; using its copy", target)
                return target, True, seconds
            raise RuntimeError(f"OpenVINO cache for {name}: {target} appeared while converting but cannot be read")
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _valid(core, ir_dir: str, input_shape: tuple, dim: int, quiet: bool = False) -> bool:
    """Whether ``ir_dir`` holds a readable IR of a model with this input and output, written by this
    version of the conversion. ``quiet``: no warning about what is wrong with it (it is checked
    again, with the lock held, before anything is done about it)."""
    warn = log.debug if quiet else log.warning
    xml = os.path.join(ir_dir, IR_XML)
    if not os.path.isdir(ir_dir):
        return False
    try:
        with open(os.path.join(ir_dir, META), encoding="utf-8") as handle:
            conversion = json.load(handle).get("conversion")
    except (OSError, ValueError, AttributeError):
        conversion = None
    if conversion != CONVERSION:
        warn("OpenVINO IR %s was written by conversion %s, this is conversion %d; converting again",
             ir_dir, conversion, CONVERSION)
        return False
    try:
        model = core.read_model(xml)
        got_in = model.inputs[0].get_partial_shape()
        got_out = model.outputs[0].get_partial_shape()
        ok = (len(model.inputs) == 1 and len(model.outputs) == 1 and got_in.rank.get_length() == 4
              and got_in[0].is_dynamic and tuple(got_in[i].get_length() for i in (1, 2, 3)) == input_shape
              and got_out.rank.get_length() == 2 and got_out[1].get_length() == dim)
    except Exception as exc:
        warn("OpenVINO IR %s cannot be read (%s); converting again", ir_dir, _one_line(exc))
        return False
    if not ok:
        warn("OpenVINO IR %s does not match the model (input %s, output %s; expected (?, %s), (?, %d)); "
             "converting again", ir_dir, got_in, got_out, ", ".join(map(str, input_shape)), dim)
    return ok


def _set_aside(root: str, key: str, target: str, why: str) -> None:
    stale = tempfile.mkdtemp(prefix=f"{STALE_PREFIX}{key}-", dir=root)
    try:
        os.rename(target, os.path.join(stale, key))
        log.warning("OpenVINO IR %s: %s; moved aside and converting again", target, why)
    except FileNotFoundError:
        pass  # another worker moved it first
    shutil.rmtree(stale, ignore_errors=True)


def _remove_abandoned(root: str) -> None:
    """Temporary and set-aside directories of workers that died while converting."""
    now = time.time()
    for entry in os.scandir(root):
        if entry.name.startswith((TEMP_PREFIX, STALE_PREFIX)) and entry.is_dir(follow_symlinks=False):
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > ABANDONED_AFTER_S:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except FileNotFoundError:
                pass


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        _fsync(path)
    except OSError:
        pass  # not every file system lets a directory be fsynced


class _ConversionLock:
    """An exclusive ``flock`` on ``path`` for at most LOCK_WAIT_S: held by the worker that converts
    so that the others wait for its IR. Only an optimisation: the rename keeps the cache correct
    without it, so every failure to lock just proceeds."""

    def __init__(self, path: str, wait_s: float = None):
        self.path = path
        self.wait_s = LOCK_WAIT_S if wait_s is None else wait_s
        self.fd = None

    def __enter__(self):
        try:
            import fcntl

            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except (ImportError, OSError):
            return self
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("OpenVINO cache: %s still held after %.0fs; converting without it",
                                self.path, self.wait_s)
                    break
                time.sleep(0.2)
            except OSError:
                break  # flock unsupported here
        os.close(self.fd)
        self.fd = None
        return self

    def __exit__(self, *exc_info):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


# ---------------------------------------------------------------------------------------------
# Keras -> OpenVINO


def _convert(ov, core, inference_model, name: str, out_dir: str, input_shape: tuple, dim: int) -> None:
    """Write ``out_dir/model.xml`` and ``model.bin`` (float32 weights, dynamic batch) and check them."""
    saved = os.path.join(out_dir, "saved_model")
    try:
        if keras_backend() == "tensorflow":
            ov_model = _from_tf_function(ov, inference_model, input_shape)
        else:
            ov_model = _from_saved_model(ov, inference_model, saved)
        (model_input,), (model_output,) = ov_model.inputs, ov_model.outputs
        shape = model_input.get_partial_shape()
        if not shape[0].is_dynamic:
            ov_model.reshape({model_input: ov.PartialShape([-1, *input_shape])})
        model_input.get_tensor().set_names({INPUT_NAME})
        model_output.get_tensor().set_names({OUTPUT_NAME})
        xml = os.path.join(out_dir, IR_XML)
        # compress_to_fp16 (the default) would store float16 weights: float32 results must not lose them.
        ov.save_model(ov_model, xml, compress_to_fp16=False)
        del ov_model
        shutil.rmtree(saved, ignore_errors=True)
        agreement = _agreement(core, inference_model, xml, input_shape)
    except Exception as exc:
        raise RuntimeError(f"OpenVINO {version()} cannot convert {name} ({_one_line(exc)})") from exc
    if agreement is not None:
        raise RuntimeError(f"OpenVINO {version()} converted {name}, but its float32 results differ from Keras' "
                           f"({agreement}): not using it; set model.runtime=keras")
    with open(os.path.join(out_dir, META), "w", encoding="utf-8") as handle:
        json.dump({"conversion": CONVERSION, "model": name, "openvino": version(), "keras_backend": keras_backend(),
                   "input_shape": list(input_shape), "dim": dim, "created": time.time(), "pid": os.getpid()},
                  handle)
    for file_name in (IR_XML, IR_BIN, META):
        _fsync(os.path.join(out_dir, file_name))


# The converter's modules that bind openvino_telemetry as ``tm``; during a conversion they get the
# converter's own no-op stub (the module it uses when openvino_telemetry is not installed).
_TELEMETRY_USERS = ("openvino.tools.ovc.convert_impl", "openvino.tools.ovc.telemetry_utils",
                    "openvino.tools.ovc.utils")
_telemetry_lock = threading.Lock()


@contextlib.contextmanager
def _without_telemetry():
    """OpenVINO's converter sends usage data over the network unless the host has opted out; a
    job may reach nothing but its S3 endpoint. Only for the conversion, and put back after it."""
    import importlib

    stub = importlib.import_module("openvino.tools.ovc.telemetry_stub")
    modules = [importlib.import_module(name) for name in _TELEMETRY_USERS]
    with _telemetry_lock:
        saved = [(module, module.tm) for module in modules if hasattr(module, "tm")]
        for module, _ in saved:
            module.tm = stub
        try:
            yield
        finally:
            for module, original in saved:
                module.tm = original


def _from_tf_function(ov, inference_model, input_shape: tuple):
    """The fast way (2-3x a SavedModel's): the model traced as a tf.function, converted in memory."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *input_shape], tf.uint8, name=INPUT_NAME)
    function = tf.function(lambda pixels: inference_model(pixels, training=False), input_signature=[spec],
                           autograph=False).get_concrete_function()
    with _without_telemetry():
        ov_model = ov.convert_model(function)
    # Activations with a custom gradient (swish in EfficientNetV2) leave IdentityN nodes that the
    # converter also returns as outputs: keep the function's own output only.
    wanted = function.outputs[0].name
    outputs = [output for output in ov_model.outputs if wanted in output.get_names()]
    if len(outputs) != 1:
        raise ValueError(f"the converted model has no single output named {wanted} "
                         f"(outputs: {[sorted(o.get_names())[:2] for o in ov_model.outputs][:5]})")
    return ov_model if len(ov_model.outputs) == 1 else ov.Model(outputs, ov_model.get_parameters(), ov_model.get_name())


def _from_saved_model(ov, inference_model, saved: str):
    """Other Keras backends (JAX): Keras' own SavedModel export (needs TensorFlow installed)."""
    inference_model.export(saved, format="tf_saved_model", verbose=False)
    with _without_telemetry():
        return ov.convert_model(saved)


# Only gross conversion errors (a channel order, a lost layer) are caught here; the tests hold the
# real tolerance (float32: cosine >= 0.99999).
CHECK_MIN_COSINE = 0.999
CHECK_MAX_RELATIVE = 1e-2


def _agreement(core, inference_model, xml: str, input_shape: tuple) -> Optional[str]:
    """None when the IR computes what the Keras model does, in float32, on two pseudo-random
    images; else what differs."""
    pixels = np.random.default_rng(0).integers(0, 256, (2, *input_shape), dtype=np.uint8)
    want = np.asarray(inference_model.predict_on_batch(pixels), dtype=np.float64).reshape(2, -1)
    compiled = core.compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.asarray(compiled(pixels)[0], dtype=np.float64).reshape(2, -1)
    scale = np.linalg.norm(want, axis=1)
    diff = np.abs(got - want).max(axis=1) / np.maximum(scale, 1e-30)
    both = (scale > 0) & (np.linalg.norm(got, axis=1) > 0)
    cosine = np.ones(2)
    cosine[both] = (got * want).sum(1)[both] / scale[both] / np.linalg.norm(got, axis=1)[both]
    if not np.isfinite(got).all() or cosine.min() < CHECK_MIN_COSINE or diff.max() > CHECK_MAX_RELATIVE:
        return f"cosine {cosine.min():.6f}, max difference {diff.max():.2e} of the vector's norm"
    return None
