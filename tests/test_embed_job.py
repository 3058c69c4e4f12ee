"""The embed job on a real local SparkSession, and end to end through ./spark-submit.sh."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from lookalike.embed import hardware, images, model
from lookalike import schemas
from lookalike.config import load_config, updated
from lookalike.errors import DuplicateItemIdError
from lookalike.jobs import embed as embed_job

from tests.support.paths import ROOT, SAMPLE_DIR
from tests.support.procs import run_script
from tests.support.s3 import upload_dir


def make_cfg(tmp_path, uri, *extra):
    # float32 on Keras, the reference: the numeric comparisons here are to 1e-5.
    return load_config(None, [
        f"input.uri={uri}", "model.weights=none", "model.seed=11", "model.batch_size=4",
        "model.precision=float32", "model.runtime=keras",
        "input.partition_size=4", f"output.embeddings={tmp_path}/emb", f"output.errors={tmp_path}/err",
        *extra,
    ])


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
    return pq.read_table(path).to_pandas().sort_values("item_id").reset_index(drop=True)


def test_embeddings_in_spark_equal_the_model_called_directly_random_init_weights(spark, tmp_path, small_dir):
    cfg = make_cfg(tmp_path, small_dir)
    summary = embed_job.run(spark, cfg)
    table = read(tmp_path / "emb")
    assert summary["embedded"] == len(table) == 12 and summary["errors"] == 0
    assert list(table.columns) == schemas.names(schemas.EMBEDDINGS)
    assert pq.read_schema(str(next((tmp_path / "emb").glob("*.parquet")))).field("embedding").type == \
        schemas.arrow_schema(schemas.EMBEDDINGS).field("embedding").type

    direct = model.Embedder(cfg.model)
    pixels = np.stack([images.decode((small_dir / (i + ".jpg")).read_bytes())[0] for i in table["item_id"]])
    expected = direct.embed(pixels)
    got = np.stack(table["embedding"].to_numpy())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)

    row = table.iloc[0]
    assert (row["model"], row["pooling"], row["dim"]) == ("vgg16", "avg", 512)
    assert row["weights"] == "random-init:seed=11"
    assert row["uri"] == f"file://{small_dir}/{row['item_id']}.jpg"
    assert row["width"] > 0 and row["height"] > 0
    assert row["model_fingerprint"] == model.fingerprint(cfg.model)


def test_precision_and_runtime_auto_are_decided_by_the_executors_and_recorded(spark, tmp_path, small_dir):
    cfg = make_cfg(tmp_path, small_dir, "model.precision=auto", "model.runtime=auto", "model.seed=12")
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
    pixels = np.stack([images.decode((small_dir / (i + ".jpg")).read_bytes())[0] for i in table["item_id"]])
    expected = reference.embed(pixels)
    got = np.stack(table["embedding"].to_numpy())
    cosines = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() > 0.999, cosines.min()


def test_model_is_loaded_once_per_python_worker_not_per_batch_random_init_weights(spark, tmp_path, small_dir):
    # A seed no other test uses: Python workers outlive tests, and a worker that already holds
    # a model for these settings rightly loads nothing.
    summary = embed_job.run(spark, make_cfg(tmp_path, small_dir, "input.partition_size=2", "model.seed=4242"))
    # 12 images in 6 tasks of 2 images: local[2] runs at most 2 Python workers at a time.
    assert summary["partitions"] == 6 and summary["embedded"] == 12
    assert 1 <= summary["model_loads"] <= 2 < summary["partitions"]


def test_bad_files_become_error_rows_and_the_rest_is_embedded_random_init_weights(spark, tmp_path, small_dir):
    expected = add_bad_files(small_dir)
    summary = embed_job.run(spark, make_cfg(tmp_path, small_dir, "input.max_error_fraction=0.5"))
    errors = read(tmp_path / "err")
    assert dict(zip(errors["item_id"], errors["error"])) == expected
    assert list(errors.columns) == schemas.names(schemas.ERRORS)
    assert "truncated" in errors.set_index("item_id").loc["bad/truncated", "message"]
    assert "text" in errors.set_index("item_id").loc["bad/notes", "message"]
    assert len(read(tmp_path / "emb")) == 12
    assert summary["errors_by_kind"] == {"empty": 1, "decode_error": 2}


def test_duplicate_item_ids_fail_before_any_work(spark, tmp_path, small_dir):
    first = next(small_dir.rglob("*.jpg"))
    first.with_suffix(".png").write_bytes(first.read_bytes())
    with pytest.raises(DuplicateItemIdError, match=r"comes from two keys"):
        embed_job.run(spark, make_cfg(tmp_path, small_dir))
    assert not (tmp_path / "emb").exists()


def submit(*args, timeout=600):
    """Run ./spark-submit.sh; ``.output`` is stdout and stderr together, because spark-submit's
    PythonRunner merges the driver's stderr into its stdout."""
    result = run_script([str(ROOT / "spark-submit.sh"), *args], timeout=timeout)
    result.output = result.stdout + result.stderr
    return result


@pytest.mark.slow  # a spark-submit application of its own
def test_spark_submit_embed_from_a_local_directory_random_init_weights(tmp_path, small_dir):
    add_bad_files(small_dir)
    result = submit("embed", "--config", str(ROOT / "conf" / "local.yaml"),
                    "--set", f"input.uri={small_dir}", "--set", "model.weights=none",
                    "--set", "input.max_error_fraction=0.5",
                    "--set", f"output.embeddings={tmp_path}/emb", "--set", f"output.errors={tmp_path}/err")
    assert result.returncode == 0, result.output[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["listed"], summary["embedded"], summary["errors"]) == (15, 12, 3)
    assert "embed done: listed 15, embedded 12, errors 3" in result.output
    assert "images/s" in result.output
    assert len(read(tmp_path / "emb")) == 12 and len(read(tmp_path / "err")) == 3
    on_disk = json.loads((tmp_path / "emb" / "_lookalike_summary.json").read_text())
    assert on_disk["run_id"] == summary["run_id"]


@pytest.mark.slow  # a spark-submit application of its own
def test_spark_submit_embed_from_s3_random_init_weights(tmp_path, small_dir, s3, bucket, s3_endpoint):
    keys = upload_dir(s3, bucket, small_dir, "catalogue/")
    result = submit("embed", "--set", f"input.uri=s3://{bucket}/catalogue/", "--set", f"s3.endpoint_url={s3_endpoint}",
                    "--set", "model.weights=none", "--set", "model.seed=11", "--set", "model.precision=float32",
                    "--set", "model.runtime=keras",
                    "--set", f"output.embeddings={tmp_path}/emb", "--set", f"output.errors={tmp_path}/err")
    assert result.returncode == 0, result.output[-3000:]
    table = read(tmp_path / "emb")
    assert len(table) == len(keys) == 12
    assert table["uri"].str.startswith(f"s3://{bucket}/catalogue/").all()
    etag = s3.head_object(Bucket=bucket, Key=f"catalogue/{table['item_id'][0]}.jpg")["ETag"].strip('"')
    assert table["source_version"][0] == etag
    # Same bytes from S3 or from disk give the same embedding.
    local = model.Embedder(load_config(None, ["model.weights=none", "model.seed=11", "model.precision=float32",
                                              "model.runtime=keras"]).model)
    pixels = images.decode((small_dir / (table["item_id"][0] + ".jpg")).read_bytes())[0]
    np.testing.assert_allclose(table["embedding"][0], local.embed(pixels[None])[0], atol=1e-5)


def test_spark_submit_config_mistake_is_one_clear_line_and_exit_2(tmp_path):
    result = submit("embed", "--set", "model.pooling=mean", timeout=300)
    assert result.returncode == 2
    assert "'model.pooling': 'mean' is not one of avg, max, flatten" in result.output
    assert "Traceback" not in result.output
    bad_job = submit("nosuchjob", timeout=60)
    assert bad_job.returncode == 2 and "unknown job 'nosuchjob'" in bad_job.output


def test_a_manifest_replaces_listing_and_only_its_keys_are_embedded_random_init_weights(spark, tmp_path, small_dir):
    keys = sorted(p.relative_to(small_dir).as_posix() for p in small_dir.rglob("*.jpg"))[:5]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("key\n" + "\n".join(keys) + "\n")
    summary = embed_job.run(spark, make_cfg(tmp_path, small_dir, f"input.manifest={manifest}"))
    table = read(tmp_path / "emb")
    assert summary["listed"] == summary["embedded"] == 5
    assert sorted(table["item_id"]) == [k[: -len(".jpg")] for k in keys]
