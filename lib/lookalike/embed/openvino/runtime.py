"""Compiling a model for this CPU: :func:`compile_model` from the Keras model (converting it once
per host through the cache), :func:`load_cached` from the cached IR alone, and the
:class:`CompiledModel` both return. See the package's docstring for what OpenVINO buys.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import numpy as np

from lookalike.embed.openvino import cache
from lookalike.embed.openvino.installed import available, version
from lookalike.embed.openvino.ir import IR_XML, describe, one_line

log = logging.getLogger(__name__)

# model.precision -> OpenVINO's INFERENCE_PRECISION_HINT. float16 is left out on purpose: see
# compile_model.
PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16"}
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
# One request at a time from one Python thread (a Spark task's batches): LATENCY runs each batch
# on all the threads; THROUGHPUT splits them into streams that only parallel requests would fill.
DEFAULT_PERFORMANCE_HINT = "LATENCY"


class CompiledModel:
    """uint8 (N, H, W, 3) RGB -> float32 (N, dim): the callable :func:`compile_model` returns.

    ``precision`` is the precision OpenVINO actually computes in (``f32`` or ``bf16``: a CPU without
    bf16 instructions may run a bf16 request in f32), ``converted`` whether this call converted the
    model (False: the cached IR was used), ``convert_seconds`` and ``compile_seconds`` what they
    took. Batches of ``batch_size`` images run on a copy compiled for exactly that shape; other
    sizes on a dynamic-shape copy compiled when first needed. Safe to call from several threads
    (calls are serialised: one request at a time is what the CPU plugin runs fastest anyway).
    """

    def __init__(
        self,
        core,
        name: str,
        ir_dir: str,
        config: dict,
        batch_size: int,
        input_shape: tuple,
        dim: int,
        converted: bool,
        convert_seconds: float,
        performance_hint: str,
    ):
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

    def _compile(self, batch: int | None):
        """Compile for ``batch`` images (None: any number) and keep its infer request."""
        try:
            model = self._core.read_model(os.path.join(self.ir_dir, IR_XML))
            if batch is not None:
                # A fixed shape lets the CPU plugin plan every layer once: 12-15% more images/s
                # for efficientnet_lite0 (float32 and bfloat16), no difference for VGG16.
                model.reshape([batch, *self.input_shape])
            compiled = self._core.compile_model(model, "CPU", self._config)
        except Exception as exc:
            raise RuntimeError(
                f"OpenVINO cannot compile {self._name} for CPU ({one_line(exc)}); IR {self.ir_dir}, "
                f"settings {self._config}"
            ) from exc
        self._requests[batch] = compiled.create_infer_request()
        return compiled

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.dtype != np.uint8 or batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected uint8 RGB images of shape (N, {', '.join(map(str, self.input_shape))}), "
                f"got {batch.dtype} {batch.shape}"
            )
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
        return (
            f"CompiledModel({self.ir_dir}, precision={self.precision}, threads={self.threads}, "
            f"batch_size={self.batch_size or 'any'}, hint={self.performance_hint})"
        )


def compile_model(
    inference_model,
    *,
    precision: str,
    threads: int,
    cache_dir: str,
    key: str,
    batch_size: int = 0,
    performance_hint: str = DEFAULT_PERFORMANCE_HINT,
) -> Callable[[np.ndarray], np.ndarray]:
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
        raise RuntimeError(
            f"model.runtime=openvino for {name}: the openvino package cannot be imported here "
            f"(pip install openvino), or use model.runtime=keras"
        )
    import openvino as ov

    input_shape, dim = _shapes(inference_model, name)
    core = ov.Core()
    ir_dir, converted, convert_seconds = cache.cached_ir(
        ov, core, inference_model, name, cache_dir, key, input_shape, dim
    )
    return _compiled(
        core,
        name,
        ir_dir,
        precision,
        threads,
        batch_size,
        input_shape,
        dim,
        converted,
        convert_seconds,
        performance_hint,
    )


def load_cached(
    name: str,
    *,
    input_shape: tuple,
    dim: int,
    precision: str,
    threads: int,
    cache_dir: str,
    key: str,
    batch_size: int = 0,
    performance_hint: str = DEFAULT_PERFORMANCE_HINT,
) -> CompiledModel | None:
    """The IR cached under ``key`` compiled as :func:`compile_model` would, without the Keras model:
    None when there is no valid IR yet (then build the model and call compile_model). A worker
    that finds the IR never imports TensorFlow or builds the network: 3-10 s less per worker.
    ``input_shape``: (H, W, 3); ``dim``: the output length; both must match the IR."""
    _check_arguments(precision, threads, batch_size, performance_hint, key)
    if not available():
        return None
    import openvino as ov

    core = ov.Core()
    ir_dir = cache.ir_dir(cache_dir, key)
    if not cache.valid(core, ir_dir, tuple(input_shape), dim, quiet=True):
        return None
    return _compiled(
        core,
        f"model {name!r}",
        ir_dir,
        precision,
        threads,
        batch_size,
        tuple(input_shape),
        dim,
        False,
        0.0,
        performance_hint,
    )


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


def _compiled(
    core,
    name: str,
    ir_dir: str,
    precision: str,
    threads: int,
    batch_size: int,
    input_shape: tuple,
    dim: int,
    converted: bool,
    convert_seconds: float,
    performance_hint: str,
) -> CompiledModel:
    config: dict[str, str | int | bool] = {
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
    result = CompiledModel(
        core, name, ir_dir, config, batch_size, input_shape, dim, converted, convert_seconds, performance_hint
    )
    how = f"converted in {convert_seconds:.1f}s to" if converted else "reused from"
    log.info(
        "OpenVINO %s: %s %s %s, compiled (%s, %d threads, batch %s, %s) in %.1fs in pid %d",
        version(),
        name,
        how,
        ir_dir,
        result.precision,
        result.threads,
        batch_size or "any",
        performance_hint,
        result.compile_seconds,
        os.getpid(),
    )
    if precision == "bfloat16" and result.precision != "bf16":
        log.warning("OpenVINO computes %s in %s: this CPU has no bfloat16 instructions", name, result.precision)
    return result


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
