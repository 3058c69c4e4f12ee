"""The neighbours job's unchanged-input skip: it recomputes exactly when what the table holds could
change (the embeddings, the content of a candidates table on S3 or on disk, a setting that changes
the answer) and skips when only speed or file-layout settings changed."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.config import S3Config, updated
from lookalike.io.storage import fetch
from lookalike.io.uris import is_s3
from lookalike.jobs import neighbours as job
from tests.support.brute_force import brute_force, random_vectors
from tests.support.neighbour_tables import assert_matches, config, make_ids, publish_embeddings, read_lists

N, K = 30, 3
IDS = make_ids(N, seed=11)
VECTORS = random_vectors(N, 4, seed=11)


@pytest.fixture
def embeddings(spark, tmp_path):
    return publish_embeddings(spark, str(tmp_path / "emb"), IDS, VECTORS, f"{N}-content")


def assert_neighbours(cfg, candidates):
    assert_matches(read_lists(cfg.output.neighbours), brute_force(IDS, VECTORS, K, candidates=candidates))


@pytest.fixture
def spark_reads_s3_through_storage(monkeypatch, s3_endpoint, tmp_path):
    """This pyspark has no S3 file system (hadoop-aws; EMR has EMRFS), so the job's Spark reads a
    local copy of an s3:// candidates file, fetched through lookalike's storage. The
    unchanged-input check, which is what is tested, lists the real S3 API."""
    s3cfg = S3Config(endpoint_url=s3_endpoint)
    read = job.read_candidates
    copies = itertools.count()

    def read_candidates(spark, candidates):
        if isinstance(candidates, str) and is_s3(candidates):
            copy = tmp_path / f"s3-copy-{next(copies)}.csv"  # Spark reads lazily: never overwrite one
            copy.write_bytes(fetch(candidates, s3cfg, 1 << 20))
            candidates = str(copy)
        return read(spark, candidates)

    monkeypatch.setattr(job, "read_candidates", read_candidates)


def test_a_replaced_s3_candidates_file_recomputes(
    spark, tmp_path, embeddings, s3, bucket, s3_endpoint, spark_reads_s3_through_storage
):
    def put(ids):
        s3.put_object(Bucket=bucket, Key="likes/candidates.csv", Body="\n".join(["item_id", *ids]).encode())

    before, after = IDS[:10], IDS[5:15]
    cfg = updated(
        config(tmp_path, embeddings, k=K, candidates=f"s3://{bucket}/likes/candidates.csv", partitions=2),
        s3=S3Config(endpoint_url=s3_endpoint),
    )
    put(before)
    first = job.run(spark, cfg)
    assert not first.get("skipped")
    assert_neighbours(cfg, before)
    put(before)  # rewritten with the same bytes: the same ETag
    assert job.run(spark, cfg)["skipped"] is True

    put(after)  # same key, other content
    replaced = job.run(spark, cfg)
    assert not replaced.get("skipped") and replaced["inputs"]["candidates"] != first["inputs"]["candidates"]
    assert_neighbours(cfg, after)
    again = job.run(spark, cfg)
    assert again["skipped"] is True and again["unchanged_since"] == replaced["run_id"]


def test_a_replaced_part_file_of_a_local_candidates_table_recomputes(spark, tmp_path, embeddings):
    table = tmp_path / "likes"
    table.mkdir()

    def write(ids):
        pq.write_table(pa.table({"item_id": ids}), table / "part-00000.parquet")

    before, after = IDS[:10], IDS[10:25]
    write(before)
    (table / "_SUCCESS").touch()
    cfg = config(tmp_path, embeddings, k=K, candidates=str(table), partitions=2)
    assert not job.run(spark, cfg).get("skipped")
    assert_neighbours(cfg, before)
    (table / "_SUCCESS").write_text("bookkeeping")  # not data: still the same table
    assert job.run(spark, cfg)["skipped"] is True

    write(after)
    assert not job.run(spark, cfg).get("skipped")
    assert_neighbours(cfg, after)
    assert job.run(spark, cfg)["skipped"] is True


def test_speed_settings_skip_and_result_settings_recompute(spark, tmp_path, embeddings):
    def run(**neighbours):
        return job.run(spark, config(tmp_path, embeddings, **neighbours))

    def assert_skipped(settings: dict, since: dict):
        summary = run(**settings)
        assert summary.get("skipped") is True and summary["unchanged_since"] == since["run_id"], settings

    def assert_recomputed(settings: dict) -> dict:
        summary = run(**settings)
        assert not summary.get("skipped") and summary["k"] == settings["k"], settings
        return summary

    # partitions=2 (auto: 8 for these 30 rows) is a speed setting for exact search; {"partitions": 3}
    # below still changes it, and changes IVF's answer.
    exact = {"k": K, "block_rows": 8, "partitions": 2}
    published = assert_recomputed(exact)
    for speed in (
        {"block_rows": 5},
        {"broadcast_max_mb": 0.001},
        {"partitions": 3},
        {"symmetric": False},
        {"row_group_rows": 7},
        {"recall_sample": 5},
        {"nprobe": 3},
        {"nlist": 2, "seed": 1},
    ):
        assert_skipped({**exact, **speed}, published)
    for result in ({"k": K + 1}, {"min_score": 0.8}):
        exact = {**exact, **result}
        published = assert_recomputed(exact)
    assert published["rows"] < N * (K + 1)  # the score floor is in the published table

    ivf = {**exact, "method": "ivf", "nlist": 3, "nprobe": 1, "recall_sample": 5}
    published = assert_recomputed(ivf)
    for speed in ({"block_rows": 5}, {"broadcast_max_mb": 0.001}, {"recall_sample": 9}, {"row_group_rows": 7}):
        assert_skipped({**ivf, **speed}, published)
    for result in ({"nprobe": 2}, {"partitions": 3}):
        ivf = {**ivf, **result}
        published = assert_recomputed(ivf)
    assert published["ivf"]["nprobe"] == 2
