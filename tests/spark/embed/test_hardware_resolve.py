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


def probes(bf16: bool, openvino: bool) -> list[dict]:
    return [
        {
            "host": "worker-1",
            "bf16_flags": ["avx512_bf16"] if bf16 else [],
            "gpu_compute_capability": None,
            "openvino": openvino,
        }
    ]


def test_an_incremental_run_keeps_the_tables_precision_whichever_executors_answer(
    spark, tmp_path, toy_overrides, monkeypatch, caplog
):
    # Issue 24: one executor without bf16 in a later run made `auto` float32, a new fingerprint,
    # and a full re-embed of the catalogue.
    import logging
    import shutil

    from lookalike.config import load_config
    from lookalike.jobs import embed as embed_job
    from tests.support.paths import SAMPLE_DIR

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(SAMPLE_DIR.rglob("*.jpg"))[:4]:
        shutil.copy(path, images / path.name)
    settings = [f"input.uri={images}", *toy_overrides, "input.incremental=true", "model.precision=auto"]
    cfg = load_config(None, [*settings, f"output.embeddings={tmp_path}/emb", f"output.errors={tmp_path}/err"])
    monkeypatch.setattr(hardware, "probe_executors", lambda spark: probes(bf16=True, openvino=False))
    first = embed_job.run(spark, cfg)
    assert first["precision"] == "bfloat16" and first["requested"] == {"precision": "auto", "runtime": "keras"}

    monkeypatch.setattr(hardware, "probe_executors", lambda spark: probes(bf16=False, openvino=False))
    with caplog.at_level(logging.INFO, logger="lookalike.jobs.embed"):
        second = embed_job.run(spark, cfg)
    assert (second["reused"], second["attempted"], second["precision"]) == (4, 0, "bfloat16")
    assert "keeping precision=bfloat16" in caplog.text
    # Said explicitly, the setting wins: float32 is another model, so everything is embedded again.
    explicit = load_config(
        None,
        [
            *settings[:-1],
            "model.precision=float32",
            f"output.embeddings={tmp_path}/emb",
            f"output.errors={tmp_path}/err",
        ],
    )
    third = embed_job.run(spark, explicit)
    assert (third["attempted"], third["precision"]) == (4, "float32")
