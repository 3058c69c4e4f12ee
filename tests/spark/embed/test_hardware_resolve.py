"""model.precision=auto and model.runtime=auto resolved by asking the real executors of the local
SparkSession (the choice itself, from injected CPU flags and GPUs, is tested in
tests/unit/embed/test_hardware.py)."""

from lookalike.config import ModelConfig
from lookalike.embed import hardware


def test_resolve_asks_the_executors_of_a_real_session(spark):
    resolved = hardware.resolve(spark, ModelConfig(precision="auto", runtime="auto"))
    here = hardware.probe()
    assert resolved.precision == hardware.choose_precision([here])[0]  # local mode: the executors are this host
    assert resolved.runtime == hardware.choose_runtime([here])[0]
    assert hardware.resolve(spark, ModelConfig(precision="float32", runtime="keras")) == ModelConfig(
        precision="float32", runtime="keras"
    )  # nothing to ask
