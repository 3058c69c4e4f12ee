"""model.precision=auto and model.runtime=auto: decided from what the executors report, with the
CPU flags and GPUs injected here. (Asking the real executors of a local SparkSession is tested in
tests/spark/embed/test_hardware_resolve.py.)"""

import os

import pytest

from lookalike.config import ConfigError, ModelConfig, load_config, updated
from lookalike.embed import hardware, weights

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def executor(host, cpuinfo, gpu=None, openvino=True):
    flags = hardware.cpu_flags(cpuinfo)
    return {
        "host": host,
        "bf16_flags": sorted(f for f in hardware.BF16_FLAGS if f in flags),
        "gpu_compute_capability": gpu,
        "openvino": openvino,
    }


def test_cpu_flags_are_read_from_cpuinfo():
    assert {"amx_bf16", "avx512_bf16"} <= hardware.cpu_flags(SAPPHIRE_RAPIDS)
    assert "amx_bf16" not in hardware.cpu_flags(ZEN4) and "avx512_bf16" in hardware.cpu_flags(ZEN4)
    assert hardware.cpu_flags("no flags here") == frozenset()
    assert "bf16" in hardware.cpu_flags(GRAVITON)  # ARM's own name: not one of BF16_FLAGS (yet)


@pytest.mark.parametrize(
    "cluster,expected,named",
    [
        ([("a", SAPPHIRE_RAPIDS), ("b", SAPPHIRE_RAPIDS)], "bfloat16", "amx_bf16, avx512_bf16"),
        ([("a", ZEN4)], "bfloat16", "avx512_bf16"),  # AVX512-BF16 without AMX
        ([("a", SKYLAKE)], "float32", "on a"),  # bf16 would be emulated: slower
        ([("a", SAPPHIRE_RAPIDS), ("old", SKYLAKE)], "float32", "on old"),  # the slowest decides for the run
        ([], "float32", "on no executor answered"),
    ],
)
def test_precision_auto_on_cpu_executors(cluster, expected, named):
    precision, why = hardware.choose_precision([executor(h, c) for h, c in cluster])
    assert precision == expected
    assert why.endswith(named + ")") if expected == "bfloat16" else why.endswith(named), why


@pytest.mark.parametrize(
    "capability,expected", [(9.0, "bfloat16"), (8.0, "bfloat16"), (7.5, "float16"), (6.1, "float32")]
)
def test_precision_auto_on_gpu_executors(capability, expected):
    assert hardware.choose_precision([executor("g", SKYLAKE, gpu=capability)])[0] == expected


def test_runtime_auto():
    assert hardware.choose_runtime([executor("a", SAPPHIRE_RAPIDS)])[0] == "openvino"
    assert hardware.choose_runtime([executor("a", SAPPHIRE_RAPIDS), executor("b", ZEN4, openvino=False)])[0] == "keras"
    assert hardware.choose_runtime([executor("g", SKYLAKE, gpu=8.0)])[0] == "keras"  # CPU runtimes skip GPUs


def test_precision_and_runtime_are_part_of_the_fingerprint():
    base = ModelConfig(precision="float32", runtime="keras")
    prints = {
        weights.fingerprint(updated(base, precision=p, runtime=r))
        for p in ("float32", "bfloat16")
        for r in ("keras", "openvino")
    }
    assert len(prints) == 4


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.runtime=openvino", "model.precision=float16"], "computes in float32 or bfloat16"),
        (["model.runtime=onnx"], "'onnx' is not one of auto, keras, openvino"),
    ],
)
def test_unsupported_combinations_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("conf/local.yaml", overrides)


def test_openvino_with_gpu_tasks_is_a_config_error(tmp_path):
    path = tmp_path / "gpu.yaml"
    path.write_text("spark:\n  conf:\n    spark.task.resource.gpu.amount: 1\nmodel:\n  runtime: openvino\n")
    with pytest.raises(ConfigError, match="CPU runtime, but spark.task.resource.gpu.amount"):
        load_config(str(path))


def test_a_worker_without_openvino_computes_with_keras_and_keeps_the_runs_identity(monkeypatch, caplog):
    # Issue 24: an executor added after the run chose OpenVINO must not fail, nor change the table.
    import logging

    from lookalike.embed import model

    monkeypatch.setattr(hardware, "openvino_installed", lambda: False)
    monkeypatch.setattr(model, "_warned_no_openvino", [])
    chosen = ModelConfig(precision="bfloat16", runtime="openvino")
    with caplog.at_level(logging.WARNING, logger="lookalike.embed.model"):
        here = model._runnable_here(chosen)
    assert (here.runtime, here.precision) == ("keras", "bfloat16")
    assert "computes with Keras (the table keeps runtime=openvino)" in caplog.text
    monkeypatch.setattr(hardware, "openvino_installed", lambda: True)
    assert model._runnable_here(chosen) is chosen


def test_a_reused_worker_given_a_task_of_another_gpu_says_it_cannot_move(monkeypatch, caplog):
    # Issue 24: a reused Python worker stayed on its first task's GPU, silently.
    import logging

    from lookalike.embed import model

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # recorded, so that the test leaves it as it was
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(model, "_pinned", {})
    gpu = {"address": "1"}
    monkeypatch.setattr(model, "task_gpu", lambda: gpu["address"])
    assert model.pin_task_gpu() == "1"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    with caplog.at_level(logging.WARNING, logger="lookalike.embed.model"):
        model.check_task_gpu()  # the same GPU: nothing to say
        assert caplog.text == ""
        gpu["address"] = "0"
        model.check_task_gpu()
        model.check_task_gpu()
    assert caplog.text.count("computes on GPU 1, but Spark gave this task GPU 0") == 1
