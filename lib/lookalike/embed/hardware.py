"""What the executors can do, asked of the executors: precision and runtime for ``auto``.

Inference is nearly all of what an embed run costs, and the right numeric format depends on the
machine that runs it: bfloat16 is 3-4x float32 on CPUs with AMX-BF16 (Intel Sapphire Rapids and
later: AWS m7i/c7i/r7i) and about 2x with AVX512-BF16 alone (AMD Zen 4), while on CPUs with
neither it is emulated and slower. The driver is often a different kind of machine from the
executors (an EMR primary node, a laptop), so ``auto`` is decided by a small Spark job whose tasks
report their own CPU flags, GPU and installed runtimes; one answer then serves the whole run, so
that every row of a run has the same precision and runtime.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable

log = logging.getLogger(__name__)

# CPU flags (as in /proc/cpuinfo) with native bfloat16 arithmetic.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | None = None) -> frozenset:
    """The CPU's feature flags, from /proc/cpuinfo (Linux); empty where that cannot be read."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def gpu_compute_capability() -> float | None:
    """The compute capability of this process's first visible NVIDIA GPU, or None without one.
    Asks nvidia-smi rather than a framework, so that no CUDA context is created to find out."""
    if shutil.which("nvidia-smi") is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    command = ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"]
    if visible:
        command.insert(1, f"--id={visible}")
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20).stdout.split()
        return float(out[0]) if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def openvino_installed() -> bool:
    """Importable, not merely present: a broken install counts as missing."""
    from lookalike.embed.openvino.installed import available

    return available()


def probe(gpu: bool = False) -> dict:
    """What this process's machine offers. ``gpu``: whether the task was given a GPU."""
    flags = cpu_flags()
    return {
        "host": socket.gethostname(),
        "bf16_flags": sorted(flag for flag in BF16_FLAGS if flag in flags),
        "gpu_compute_capability": gpu_compute_capability() if gpu else None,
        "openvino": openvino_installed(),
    }


def choose_precision(probes: Iterable[dict]) -> tuple[str, str]:
    """(precision, why) for model.precision=auto: the fastest format that every executor runs
    natively, float32 when one of them would emulate it."""
    probes = list(probes)
    gpus = [p["gpu_compute_capability"] for p in probes if p.get("gpu_compute_capability") is not None]
    if gpus:
        lowest = min(gpus)
        if lowest >= 8.0:
            return "bfloat16", f"GPUs of compute capability {lowest:g}+ compute in bfloat16 natively"
        if lowest >= 7.0:
            return "float16", f"GPUs of compute capability {lowest:g} have float16 tensor cores but no bfloat16"
        return "float32", f"a GPU of compute capability {lowest:g} has no fast half precision"
    lacking = sorted({p["host"] for p in probes if not p["bf16_flags"]})
    if not probes or lacking:
        where = ", ".join(lacking[:5]) if lacking else "no executor answered"
        return "float32", f"no bfloat16 instructions (amx_bf16, avx512_bf16) on {where}"
    found = sorted({flag for p in probes for flag in p["bf16_flags"]})
    return "bfloat16", f"every executor has native bfloat16 ({', '.join(found)})"


def choose_runtime(probes: Iterable[dict]) -> tuple[str, str]:
    """(runtime, why) for model.runtime=auto: OpenVINO on CPU executors that have it, Keras on GPUs."""
    probes = list(probes)
    if any(p.get("gpu_compute_capability") is not None for p in probes):
        return "keras", "GPU executors: OpenVINO here is a CPU runtime"
    if probes and all(p["openvino"] for p in probes):
        return "openvino", "CPU executors with OpenVINO installed"
    return "keras", "OpenVINO is not installed on every executor"


def probe_executors(spark) -> list[dict]:
    """One probe per task slot of the cluster: every executor that is up answers for itself, with
    the GPU Spark gave the task (spark.task.resource.gpu.amount), if any."""
    slots = max(2, spark.sparkContext.defaultParallelism)

    def ask(_):
        from pyspark import TaskContext

        context = TaskContext.get()
        return [probe(gpu=context is not None and context.resources().get("gpu") is not None)]

    return spark.sparkContext.parallelize(range(slots), slots).mapPartitions(ask).collect()


def resolve(spark, cfg):
    """``cfg`` (a ModelConfig) with ``auto`` precision and runtime decided from the executors."""
    if "auto" not in (cfg.precision, cfg.runtime):
        return cfg
    return _decide(cfg, probe_executors(spark), log.info)


def resolve_here(cfg):
    """The same decision from this process's machine alone: for an Embedder built outside a job."""
    if "auto" not in (cfg.precision, cfg.runtime):
        return cfg
    return _decide(cfg, [probe(gpu=True)], log.debug)


def _decide(cfg, probes: list[dict], say):
    from lookalike.config import updated

    changes = {}
    for key, choose in (("precision", choose_precision), ("runtime", choose_runtime)):
        if getattr(cfg, key) == "auto":
            changes[key], why = choose(probes)
            say(
                "model.%s=auto: %s (%s; %d probes on %d hosts)",
                key,
                changes[key],
                why,
                len(probes),
                len({p["host"] for p in probes}),
            )
    return updated(cfg, **changes)
