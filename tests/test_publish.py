"""Atomic publishing and locks (lib/lookalike/publish/): local symlinked versions, S3 pointers on
a real moto server, the HDFS code path on pyarrow's local file system, and the embed job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike import publish
from lookalike.io.hadoop import HadoopStorage
from lookalike.publish.layouts import PointerLayout
from lookalike.config import S3Config, load_config
from lookalike.errors import OutputError, OutputLockedError, TooManyErrorsError
from lookalike.jobs import embed as embed_job

from tests.support.paths import SAMPLE_DIR

ROWS = 300


def table_of(version: int) -> pa.Table:
    return pa.table({"row": pa.array(range(ROWS), pa.int64()), "version": pa.array([version] * ROWS, pa.int64())})


def write_parts(directory: str, version: int, parts: int = 3) -> None:
    """Several files per version with the same names in every version: the worst case for a
    reader that would list one version and open files of another."""
    os.makedirs(directory, exist_ok=True)
    table = table_of(version)
    step = ROWS // parts
    for i in range(parts):
        pq.write_table(table.slice(i * step, step), os.path.join(directory, f"part-{i:05d}.parquet"))


def publish_local(out: str, version: int, run_id: str | None = None, **kwargs) -> str:
    run_id = run_id or f"run-{version:04d}"
    with publish.OutputSet(None, {"t": out}, run_id, **kwargs) as outputs:
        write_parts(outputs.staging("t"), version)
        outputs.commit({"t": {"run_id": run_id, "version": version}})
    return run_id


def versions_dir(out) -> str:
    return os.path.join(os.path.dirname(str(out)), f".{os.path.basename(str(out))}.versions")


def test_local_publish_is_a_symlink_switch_and_keeps_only_current_and_previous(tmp_path):
    out = str(tmp_path / "tables" / "t")
    for version in range(1, 4):
        publish_local(out, version)
    assert os.path.islink(out)
    assert pq.read_table(out).column("version").to_pylist() == [3] * ROWS  # readers can use the path itself
    assert publish.current_version(out) == "run-0003"
    assert publish.resolve(out) == os.path.join(versions_dir(out), "run-0003")
    assert publish.read_summary(out) == {"run_id": "run-0003", "version": 3}
    assert sorted(os.listdir(versions_dir(out))) == ["run-0002", "run-0003"]
    # Nothing but the output, its versions and no lock is left next to it.
    assert sorted(os.listdir(tmp_path / "tables")) == [".t.versions", "t"]
    # Relative link: the tree can be moved or mounted elsewhere.
    assert not os.path.isabs(os.readlink(out))


def test_readers_see_one_complete_version_while_versions_are_published(tmp_path):
    out = str(tmp_path / "t")
    publish_local(out, 0)
    stop = threading.Event()
    seen, vanished, problems = [], [], []

    def reader():
        while not stop.is_set():
            try:
                table = pq.read_table(publish.resolve(out))
            except (OSError, pa.ArrowInvalid) as exc:
                vanished.append(exc)  # two publishes during one read: the version was collected
                continue
            versions = set(table.column("version").to_pylist())
            if table.num_rows != ROWS or len(versions) != 1:
                problems.append((table.num_rows, sorted(versions)))
            seen.extend(versions)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for version in range(1, 31):
            publish_local(out, version)
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert problems == []
    assert len(set(seen)) > 3, "the readers should have seen several versions"
    assert len(vanished) < len(seen)
    assert pq.read_table(out).column("version").to_pylist() == [30] * ROWS


def test_an_exception_before_commit_publishes_nothing_and_removes_the_staging(tmp_path):
    out = str(tmp_path / "t")
    publish_local(out, 1)
    with pytest.raises(RuntimeError, match="injected"):
        with publish.OutputSet(None, {"t": out}, "run-0002") as outputs:
            write_parts(outputs.staging("t"), 2)
            raise RuntimeError("injected failure after the data was staged")
    assert pq.read_table(out).column("version").to_pylist() == [1] * ROWS
    assert os.listdir(versions_dir(out)) == ["run-0001"]
    assert not os.path.exists(tmp_path / ".t.lock")
    publish_local(out, 3)  # the lock was released
    assert pq.read_table(out).column("version").to_pylist() == [3] * ROWS


def test_a_spark_write_that_fails_after_another_table_was_staged_leaves_both_outputs_intact(spark, tmp_path):
    """Like the embed job: the embeddings table is fully staged, then writing the errors table
    fails in one of its partitions. Both outputs keep the previous version, readable by Spark."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    emb, err = str(tmp_path / "emb"), str(tmp_path / "err")
    targets = {"embeddings": emb, "errors": err}
    with publish.OutputSet(spark, targets, "run-1") as outputs:
        spark.range(0, 40, numPartitions=4).withColumn("v", F.lit(1)).write.parquet(outputs.staging("embeddings"))
        spark.range(0, 4).withColumn("v", F.lit(1)).write.parquet(outputs.staging("errors"))
        outputs.commit({"embeddings": {"run_id": "run-1"}, "errors": {"run_id": "run-1"}})

    def explode(value):
        if value == 37:
            raise ValueError("injected failure in the last partition")
        return value

    boom = F.udf(explode, LongType())
    staged_parts = []
    with pytest.raises(Exception, match="injected failure"):
        with publish.OutputSet(spark, targets, "run-2") as outputs:
            spark.range(0, 80, numPartitions=4).withColumn("v", F.lit(2)).write.parquet(outputs.staging("embeddings"))
            staged_parts = [n for n in os.listdir(outputs.staging("embeddings")) if n.startswith("part-")]
            spark.range(0, 40, numPartitions=4).withColumn("v", boom("id")).write.parquet(outputs.staging("errors"))
            outputs.commit()
    assert len(staged_parts) == 4  # the failure came after a complete table had been written
    for path, rows in ((emb, 40), (err, 4)):
        table = spark.read.parquet(path)
        assert table.count() == rows and {r.v for r in table.select("v").distinct().collect()} == {1}
        assert publish.current_version(path) == "run-1"
        assert os.listdir(versions_dir(path)) == ["run-1"]
        assert not os.path.exists(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock"))


def test_an_older_plain_directory_is_migrated_and_a_foreign_one_refused(spark, tmp_path):
    out = str(tmp_path / "t")
    spark.range(5).write.parquet(out)  # what runs wrote before versioned outputs
    assert publish.resolve(out) == out
    publish_local(out, 2)
    assert os.path.islink(out) and pq.read_table(out).column("version").to_pylist() == [2] * ROWS
    kept = sorted(os.listdir(versions_dir(out)))
    assert kept[0].startswith("legacy-") and kept[1] == "run-0002"
    assert spark.read.parquet(os.path.join(versions_dir(out), kept[0])).count() == 5

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"does not look like a lookalike table \(it holds notes.txt\)"):
        publish_local(str(foreign), 1)
    assert (foreign / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        publish_local(str(tmp_path / "afile"), 1)
    assert not os.path.exists(tmp_path / ".afile.lock") and not os.path.exists(tmp_path / ".home.lock")


def test_a_second_writer_is_refused_with_the_owner_and_force_unlock_cannot_break_a_live_lock(tmp_path):
    out = str(tmp_path / "t")
    with publish.OutputSet(None, {"t": out}, "holder-run"):
        for force in (False, True):
            with pytest.raises(OutputLockedError) as info:
                publish_local(out, 1, force_unlock=force)
            message = str(info.value)
            assert "holder-run" in message and socket.gethostname() in message and str(os.getpid()) in message
            assert "still running on this host" in message
        assert "never removes the lock of a live process" in message
    publish_local(out, 1)  # released on exit


def _crashed_lock_holder(out: str) -> int:
    """A real process that takes the lock and dies without releasing it."""
    code = ("import os, sys; from lookalike import publish; "
            "s = publish.OutputSet(None, {'t': sys.argv[1]}, 'crashed-run'); s.__enter__(); os._exit(9)")
    proc = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    with open(os.path.join(os.path.dirname(out), ".t.lock"), encoding="utf-8") as handle:
        return json.load(handle)["pid"]


def test_a_stale_lock_of_a_dead_process_is_explained_and_removed_only_with_force_unlock(tmp_path):
    out = str(tmp_path / "t")
    publish_local(out, 1)
    pid = _crashed_lock_holder(out)
    with pytest.raises(OutputLockedError, match=rf"pid {pid} no longer runs on this host.*output.force_unlock=true"):
        publish_local(out, 2)
    assert pq.read_table(out).column("version").to_pylist() == [1] * ROWS
    publish_local(out, 2, force_unlock=True)
    assert pq.read_table(out).column("version").to_pylist() == [2] * ROWS
    assert not os.path.exists(tmp_path / ".t.lock")


def test_a_lock_from_another_host_names_its_age_and_yields_to_force_unlock(tmp_path):
    out = str(tmp_path / "t")
    old = time.time() - 30 * 3600
    (tmp_path / ".t.lock").write_text(json.dumps({"host": "emr-core-7", "pid": 4242, "run_id": "yesterday",
                                                  "started": old, "started_at": "2020-01-01T00:00:00+00:00"}))
    with pytest.raises(OutputLockedError, match=r"run yesterday \(host emr-core-7, pid 4242\).*30\.0 h ago.*probably stale"):
        publish_local(out, 1)
    publish_local(out, 1, force_unlock=True)
    assert publish.current_version(out) == "run-0001"


# ---------------------------------------------------------------------------------------------
# S3 (moto server over HTTP). Spark here cannot write s3:// (no hadoop-aws), so the staged data is
# written with boto3, as EMRFS would write it on EMR.

def put_version(s3, uri: str, version: int) -> None:
    bucket, key = uri[len("s3://"):].split("/", 1)
    for i in range(3):
        sink = pa.BufferOutputStream()
        pq.write_table(table_of(version).slice(i * 100, 100), sink)
        s3.put_object(Bucket=bucket, Key=f"{key}/part-{i:05d}.parquet", Body=sink.getvalue().to_pybytes())


def read_s3(s3, uri: str) -> pd.DataFrame:
    bucket, key = uri[len("s3://"):].split("/", 1)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=key + "/")["Contents"]
                  if o["Key"].endswith(".parquet"))
    tables = [pq.read_table(pa.BufferReader(s3.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in keys]
    return pa.concat_tables(tables).to_pandas()


def test_s3_publish_writes_the_pointer_last_and_readers_follow_it(s3, bucket, s3_endpoint):
    cfg = S3Config(endpoint_url=s3_endpoint)
    out = f"s3://{bucket}/lookalike/emb"
    assert publish.resolve(out, cfg) == out and publish.current_version(out, cfg) is None
    for version in (1, 2, 3):
        with publish.OutputSet(None, {"emb": out}, f"run-{version}", s3=cfg) as outputs:
            staging = outputs.staging("emb")
            assert staging == f"s3://{bucket}/lookalike/.emb.versions/run-{version}"
            put_version(s3, staging, version)
            assert publish.current_version(out, cfg) == (f"run-{version - 1}" if version > 1 else None)
            outputs.commit({"emb": {"run_id": f"run-{version}"}})
    latest = s3.get_object(Bucket=bucket, Key="lookalike/emb/_LATEST")["Body"].read().decode().strip()
    assert latest == f"s3://{bucket}/lookalike/.emb.versions/run-3" == publish.resolve(out, cfg)
    assert set(read_s3(s3, publish.resolve(out, cfg))["version"]) == {3}
    assert publish.read_summary(out, cfg) == {"run_id": "run-3"}
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="lookalike/.emb.versions/", Delimiter="/")
    assert sorted(p["Prefix"] for p in listed["CommonPrefixes"]) == [
        "lookalike/.emb.versions/run-2/", "lookalike/.emb.versions/run-3/"]

    with pytest.raises(RuntimeError, match="injected"):
        with publish.OutputSet(None, {"emb": out}, "run-4", s3=cfg) as outputs:
            put_version(s3, outputs.staging("emb"), 4)
            raise RuntimeError("injected failure after the data was staged")
    assert publish.resolve(out, cfg).endswith("/run-3")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="lookalike/.emb.versions/run-4/")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="lookalike/.emb.lock")


def test_s3_lock_is_a_conditional_write_and_refuses_a_second_writer(s3, bucket, s3_endpoint):
    cfg = S3Config(endpoint_url=s3_endpoint)
    out = f"s3://{bucket}/emb"
    with publish.OutputSet(None, {"emb": out}, "first", s3=cfg):
        owner = json.loads(s3.get_object(Bucket=bucket, Key=".emb.lock")["Body"].read())
        assert (owner["run_id"], owner["host"], owner["pid"]) == ("first", socket.gethostname(), os.getpid())
        with pytest.raises(OutputLockedError, match=r"locked by run first .*still running"):
            with publish.OutputSet(None, {"emb": out}, "second", s3=cfg):
                pass
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=".emb.lock")


def test_s3_output_with_objects_of_an_older_layout_is_refused_before_anything_is_written(s3, bucket, s3_endpoint):
    cfg = S3Config(endpoint_url=s3_endpoint)
    s3.put_object(Bucket=bucket, Key="emb/part-00000.parquet", Body=b"old")
    with pytest.raises(OutputError, match=r"older layout .*emb/part-00000.parquet.*aws s3 mv"):
        with publish.OutputSet(None, {"emb": f"s3://{bucket}/emb"}, "r", s3=cfg):
            pass
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["emb/part-00000.parquet"]


def test_pointer_layout_on_a_pyarrow_file_system_the_hdfs_code_path(tmp_path):
    """hdfs:// goes through pyarrow's FileSystem API; its local implementation runs the same code."""
    uri = f"file://{tmp_path}/out/emb"
    location = PointerLayout(uri, HadoopStorage())
    for version in (1, 2, 3):
        assert location.lock_create("{}") and not location.lock_create("{}")
        write_parts(location.prepare_staging(f"run-{version}")[len("file://"):], version)
        assert location.staged(f"run-{version}")
        previous = location.switch(f"run-{version}")
        assert previous == (f"run-{version - 1}" if version > 1 else None)
        location.lock_delete()
    assert location.read_location() == f"file://{tmp_path}/out/.emb.versions/run-3"
    assert location.versions_list() == ["run-1", "run-2", "run-3"]
    location.remove_version("run-1")
    assert location.versions_list() == ["run-2", "run-3"]
    assert set(pq.read_table(location.read_location()[len("file://"):]).column("version").to_pylist()) == {3}
    assert sorted(os.listdir(tmp_path / "out" / "emb")) == ["_LATEST"]


# ---------------------------------------------------------------------------------------------
# The embed job.

def embed_cfg(tmp_path, images, *extra):
    return load_config(None, [
        f"input.uri={images}", "model.weights=none", "model.seed=5", "model.batch_size=4",
        "input.partition_size=4", f"output.embeddings={tmp_path}/emb", f"output.errors={tmp_path}/err", *extra])


@pytest.fixture
def eight_images(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    for path in sorted(SAMPLE_DIR.rglob("*.jpg"))[::8]:
        (src / path.name).write_bytes(path.read_bytes())
    return src


def test_embed_job_failing_on_too_many_errors_publishes_nothing_random_init_weights(spark, tmp_path, eight_images):
    first = embed_job.run(spark, embed_cfg(tmp_path, eight_images))
    before = spark.read.parquet(str(tmp_path / "emb")).toPandas().sort_values("item_id")
    for name in ("a", "b", "c"):
        (eight_images / f"broken-{name}.jpg").write_bytes(b"<html>503 Slow Down</html>")
    with pytest.raises(TooManyErrorsError, match="Nothing was published"):
        embed_job.run(spark, embed_cfg(tmp_path, eight_images, "input.max_error_fraction=0.1"))
    after = spark.read.parquet(str(tmp_path / "emb")).toPandas().sort_values("item_id")
    assert after["run_id"].unique().tolist() == [first["run_id"]]
    pd.testing.assert_frame_equal(before.reset_index(drop=True), after.reset_index(drop=True))
    for name in ("emb", "err"):
        assert os.listdir(versions_dir(tmp_path / name)) == [first["run_id"]]
        assert publish.read_summary(str(tmp_path / name))["run_id"] == first["run_id"]
    assert not any(n.endswith(".lock") for n in os.listdir(tmp_path))


def test_embed_job_refuses_while_another_run_holds_the_output_random_init_weights(spark, tmp_path, eight_images):
    cfg = embed_cfg(tmp_path, eight_images, "output.force_unlock=true")
    with publish.OutputSet(None, {"errors": cfg.output.errors}, "other-run"):
        with pytest.raises(OutputLockedError, match=r"output .*/err is locked by run other-run"):
            embed_job.run(spark, cfg)
        assert (tmp_path / ".err.lock").exists()
    assert not (tmp_path / "emb").exists() and not (tmp_path / "err").exists()
    assert not (tmp_path / ".emb.lock").exists()  # the lock it had taken on embeddings was given back
