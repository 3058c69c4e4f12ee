"""The embed job on the tests' local SparkSession, with the toy model (tests/support/toy_model.py):
run() and main(argv, spark) in-process. The whole-process runs through ./spark-submit.sh are in
tests/e2e/test_embed_submit.py and tests/e2e/test_hostile_corpus.py; each backbone's own
behaviour is tested with that backbone in tests/models."""

import hashlib
import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from lookalike import schemas
from lookalike.config import load_config, updated
from lookalike.embed import hardware, images, model
from lookalike.errors import DuplicateItemIdError
from lookalike.jobs import embed as embed_job
from tests.support import toy_model
from tests.support.outputs import output_files, output_summary, read_output
from tests.support.paths import ROOT, SAMPLE_DIR
from tests.support.s3 import upload_dir

LOCAL_YAML = str(ROOT / "conf" / "local.yaml")


@pytest.fixture
def make_cfg(tmp_path, toy_overrides):
    def make(uri, *extra):
        # float32 on Keras, the reference: the numeric comparisons here are to 1e-5.
        return load_config(
            None,
            [
                f"input.uri={uri}",
                *toy_overrides,
                "model.seed=11",
                "model.batch_size=4",
                "input.partition_size=4",
                f"output.embeddings={tmp_path}/emb",
                f"output.errors={tmp_path}/err",
                *extra,
            ],
        )

    return make


@pytest.fixture
def small_dir(tmp_path):
    """Twelve sample images across labels, plus the bad files that buckets really contain."""
    src = tmp_path / "images"
    for path in sorted(SAMPLE_DIR.rglob("*.jpg"))[::5]:
        dest = src / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
    return src


def add_bad_files(directory):
    good = next(directory.rglob("*.jpg")).read_bytes()
    (directory / "bad").mkdir()
    (directory / "bad" / "empty.jpg").write_bytes(b"")
    (directory / "bad" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (directory / "bad" / "notes.jpg").write_text("this is a text file, not a picture\n")
    return {"bad/empty": "empty", "bad/truncated": "decode_error", "bad/notes": "decode_error"}


def read(path):
    return read_output(path).to_pandas().sort_values("item_id").reset_index(drop=True)


def direct_embeddings(embedder, directory, item_ids):
    """The model called directly on the files' pixels, decoded at the model's input size."""
    pixels = np.stack(
        [images.decode((directory / (i + ".jpg")).read_bytes(), 0, embedder.input_size)[0] for i in item_ids]
    )
    return embedder.embed(pixels)


def test_embeddings_in_spark_equal_the_model_called_directly(spark, tmp_path, small_dir, make_cfg, toy_model_file):
    cfg = make_cfg(small_dir)
    summary = embed_job.run(spark, cfg)
    table = read(tmp_path / "emb")
    assert summary["embedded"] == len(table) == 12 and summary["errors"] == 0
    assert list(table.columns) == schemas.names(schemas.EMBEDDINGS)
    assert (
        pq.read_schema(output_files(tmp_path / "emb")[0][len("file://") :]).field("embedding").type
        == schemas.arrow_schema(schemas.EMBEDDINGS).field("embedding").type
    )

    direct = model.Embedder(cfg.model)
    expected = direct_embeddings(direct, small_dir, table["item_id"])
    got = np.stack(table["embedding"].to_numpy())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)

    row = table.iloc[0]
    assert (row["model"], row["pooling"], row["dim"]) == ("keras_file", "avg", toy_model.DIM)
    assert row["weights"] == f"file:toy.keras@md5:{hashlib.md5(toy_model_file.read_bytes()).hexdigest()}"
    assert row["uri"] == f"file://{small_dir}/{row['item_id']}.jpg"
    assert row["width"] > 0 and row["height"] > 0
    assert row["model_fingerprint"] == model.fingerprint(cfg.model)


def test_precision_and_runtime_auto_are_decided_by_the_executors_and_recorded(spark, tmp_path, small_dir, make_cfg):
    cfg = make_cfg(small_dir, "model.precision=auto", "model.runtime=auto", "model.seed=12")
    summary = embed_job.run(spark, cfg)
    table = read(tmp_path / "emb")
    here = hardware.probe()  # local mode: the executors run on this machine
    precision, runtime = hardware.choose_precision([here])[0], hardware.choose_runtime([here])[0]
    assert set(table["precision"]) == {precision} and set(table["runtime"]) == {runtime}
    assert (summary["precision"], summary["runtime"]) == (precision, runtime)
    resolved = updated(cfg.model, precision=precision, runtime=runtime)
    assert set(table["model_fingerprint"]) == {model.fingerprint(resolved)} != {model.fingerprint(cfg.model)}
    assert set(summary["phase_seconds"]) == {"fetch", "decode", "infer", "wait", "write"}
    assert summary["phase_seconds"]["infer"] > 0 and summary["phase_seconds"]["decode"] > 0
    # Whatever was chosen, the vectors are the float32 model's to within low-precision rounding.
    reference = model.Embedder(updated(cfg.model, precision="float32", runtime="keras"))
    expected = direct_embeddings(reference, small_dir, table["item_id"])
    got = np.stack(table["embedding"].to_numpy())
    cosines = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() > 0.999, cosines.min()


def test_model_is_loaded_once_per_python_worker_not_per_batch(spark, tmp_path, small_dir, make_cfg):
    # A seed no other test uses: Python workers outlive tests, and a worker that already holds
    # a model for these settings rightly loads nothing.
    summary = embed_job.run(spark, make_cfg(small_dir, "input.partition_size=2", "model.seed=4242"))
    # 12 images in 6 tasks of 2 images: local[2] runs at most 2 Python workers at a time.
    assert summary["partitions"] == 6 and summary["embedded"] == 12
    assert 1 <= summary["model_loads"] <= 2 < summary["partitions"]


def test_bad_files_become_error_rows_and_the_rest_is_embedded(spark, tmp_path, small_dir, make_cfg):
    expected = add_bad_files(small_dir)
    summary = embed_job.run(spark, make_cfg(small_dir, "input.max_error_fraction=0.5"))
    errors = read(tmp_path / "err")
    assert dict(zip(errors["item_id"], errors["error"], strict=False)) == expected
    assert list(errors.columns) == schemas.names(schemas.ERRORS)
    assert "truncated" in errors.set_index("item_id").loc["bad/truncated", "message"]
    assert "text" in errors.set_index("item_id").loc["bad/notes", "message"]
    assert len(read(tmp_path / "emb")) == 12
    assert summary["errors_by_kind"] == {"empty": 1, "decode_error": 2}


@pytest.mark.version_independent
def test_duplicate_item_ids_fail_before_any_work(spark, tmp_path, small_dir, make_cfg):
    first = next(small_dir.rglob("*.jpg"))
    first.with_suffix(".png").write_bytes(first.read_bytes())
    with pytest.raises(DuplicateItemIdError, match=r"comes from two keys"):
        embed_job.run(spark, make_cfg(small_dir))
    assert not (tmp_path / "emb").exists()


def summary_line(capsys) -> dict:
    """The summary JSON a job prints as its last line on stdout."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_main_embeds_a_local_directory_and_prints_the_summary(
    spark, tmp_path, small_dir, toy_overrides, capsys, caplog
):
    """What `./spark-submit.sh embed --config conf/local.yaml --set ...` did (tests/e2e runs the
    wrapper itself): main over conf/local.yaml and --set, in the session."""
    add_bad_files(small_dir)
    caplog.set_level(logging.INFO, logger="lookalike")
    status = embed_job.main(
        [
            "--config",
            LOCAL_YAML,
            *(a for s in toy_overrides for a in ("--set", s)),
            "--set",
            f"input.uri={small_dir}",
            "--set",
            "input.max_error_fraction=0.5",
            "--set",
            f"output.embeddings={tmp_path}/emb",
            "--set",
            f"output.errors={tmp_path}/err",
        ],
        spark=spark,
    )
    assert status == 0, caplog.text[-3000:]
    summary = summary_line(capsys)
    assert (summary["listed"], summary["embedded"], summary["errors"]) == (15, 12, 3)
    assert "embed done: listed 15, embedded 12, errors 3" in caplog.text
    assert "images/s" in caplog.text
    assert len(read(tmp_path / "emb")) == 12 and len(read(tmp_path / "err")) == 3
    on_disk = output_summary(tmp_path / "emb")
    assert on_disk["run_id"] == summary["run_id"]


def test_main_embeds_from_s3(spark, tmp_path, small_dir, s3, bucket, s3_endpoint, toy_overrides, capsys):
    """What `./spark-submit.sh embed --set input.uri=s3://...` did, in the session: the same code."""
    keys = upload_dir(s3, bucket, small_dir, "catalogue/")
    overrides = [
        f"input.uri=s3://{bucket}/catalogue/",
        f"s3.endpoint_url={s3_endpoint}",
        *toy_overrides,
        "model.seed=11",
        f"output.embeddings={tmp_path}/emb",
        f"output.errors={tmp_path}/err",
    ]
    status = embed_job.main(["--config", LOCAL_YAML, *(a for s in overrides for a in ("--set", s))], spark=spark)
    assert status == 0
    assert summary_line(capsys)["embedded"] == 12
    table = read(tmp_path / "emb")
    assert len(table) == len(keys) == 12
    assert table["uri"].str.startswith(f"s3://{bucket}/catalogue/").all()
    etag = s3.head_object(Bucket=bucket, Key=f"catalogue/{table['item_id'][0]}.jpg")["ETag"].strip('"')
    assert table["source_version"][0] == etag
    # Same bytes from S3 or from disk give the same embedding.
    local = model.Embedder(load_config(None, [*toy_overrides, "model.seed=11"]).model)
    expected = direct_embeddings(local, small_dir, [table["item_id"][0]])[0]
    np.testing.assert_allclose(table["embedding"][0], expected, atol=1e-5)


@pytest.mark.version_independent
def test_main_config_mistake_is_one_clear_line_and_exit_2(spark, caplog, capsys):
    """In the session; tests/e2e/test_embed_submit.py proves the same through ./spark-submit.sh."""
    status = embed_job.main(["--config", LOCAL_YAML, "--set", "model.pooling=mean"], spark=spark)
    assert status == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "'model.pooling': 'mean' is not one of avg, max, flatten" in errors[0]
    assert "\n" not in errors[0] and "Traceback" not in caplog.text
    assert capsys.readouterr().out == ""  # no summary: nothing ran


@pytest.mark.version_independent
def test_a_manifest_replaces_listing_and_only_its_keys_are_embedded(spark, tmp_path, small_dir, make_cfg):
    keys = sorted(p.relative_to(small_dir).as_posix() for p in small_dir.rglob("*.jpg"))[:5]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("key\n" + "\n".join(keys) + "\n")
    summary = embed_job.run(spark, make_cfg(small_dir, f"input.manifest={manifest}"))
    table = read(tmp_path / "emb")
    assert summary["listed"] == summary["embedded"] == 5
    assert sorted(table["item_id"]) == [k[: -len(".jpg")] for k in keys]
