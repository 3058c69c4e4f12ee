"""The neighbours job's unchanged-input skip: it recomputes exactly when what the table holds could
change (the embeddings, the content of a candidates table on S3 or on disk, a setting that changes
the answer) and skips when only speed or file-layout settings changed."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.brute_force import brute_force, random_vectors
from lookalike.config import NEIGHBOURS_IVF_RESULT_KEYS, NEIGHBOURS_RESULT_KEYS, NeighboursConfig, S3Config, updated
from lookalike.io.storage import Entry, fetch
from lookalike.io.uris import is_s3
from lookalike.jobs import neighbours as job
from lookalike.publish.lineage import entries_identity, files_identity
from tests.support.neighbour_tables import assert_matches, config, make_ids, publish_embeddings, read_output

N, K = 30, 3
IDS = make_ids(N, seed=11)
VECTORS = random_vectors(N, 4, seed=11)

# One other value for every neighbours key: a key added to NeighboursConfig fails the test below
# until it is put on one side or the other of NEIGHBOURS_RESULT_KEYS.
OTHER_VALUE = {"k": 11, "min_score": 0.5, "broadcast_max_mb": 1.0, "block_rows": 7, "candidates": ["a"],
               "method": None, "symmetric": False, "nlist": 5, "nprobe": 3, "recall_sample": 0, "seed": 9,
               "partitions": 4, "row_group_rows": 10, "attributes": "a.csv", "same": "category",
               "exclude_same": "family", "hide_duplicates": True}


@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_result_fingerprint_counts_exactly_the_result_keys(method):
    base = NeighboursConfig(method=method)
    assert set(OTHER_VALUE) == {f.name for f in dataclasses.fields(NeighboursConfig)}
    for key, value in OTHER_VALUE.items():
        if key == "method":
            value = "exact" if method == "ivf" else "ivf"
        counts = key in NEIGHBOURS_RESULT_KEYS or (method == "ivf" and key in NEIGHBOURS_IVF_RESULT_KEYS)
        changed = updated(base, **{key: value}).result_fingerprint() != base.result_fingerprint()
        assert changed == counts, key


def test_result_fingerprint_of_candidates():
    def fingerprint(candidates):
        return NeighboursConfig(candidates=candidates).result_fingerprint()

    assert fingerprint(["b", "a", "b"]) == fingerprint(["a", "b"]) != fingerprint(["a", "c"])
    assert fingerprint([1, 2]) == fingerprint(["2", "1"])  # the job reads ids as strings
    # A table counts by its content (candidates_identity), not by where it is.
    assert fingerprint("s3://x/likes.csv") == fingerprint("/data/likes.csv") != fingerprint(None)


def test_identity_of_listed_files():
    files = [Entry("part-0.parquet", "s3://b/t/part-0.parquet", 100, "etag0"),
             Entry("part-1.parquet", "s3://b/t/part-1.parquet", 200, "etag1")]
    identity = entries_identity(files)
    assert identity == entries_identity(files[::-1]) and identity.startswith("2-")
    resized = [files[0], dataclasses.replace(files[1], size=201)]
    rewritten = [files[0], dataclasses.replace(files[1], version="etag1b")]
    added = files + [Entry("part-2.parquet", "s3://b/t/part-2.parquet", 100, "etag2")]
    assert len({identity, entries_identity(resized), entries_identity(rewritten), entries_identity(added),
                entries_identity(files[:1])}) == 5
    bookkeeping = [Entry(key, f"s3://b/t/{key}", 0, "x") for key in
                   ("_SUCCESS", "._SUCCESS.crc", ".part-0.parquet.crc", "_temporary/0/part-9.parquet")]
    assert entries_identity(files + bookkeeping) == identity
    assert entries_identity(bookkeeping) is None and entries_identity([]) is None


def test_identity_of_s3_and_local_files(s3, bucket, s3_endpoint, tmp_path, caplog):
    s3cfg = S3Config(endpoint_url=s3_endpoint)
    table = f"s3://{bucket}/likes"
    s3.put_object(Bucket=bucket, Key="likes/part-0.csv", Body=b"item_id\na\n")
    first = files_identity(table, s3cfg)
    s3.put_object(Bucket=bucket, Key="likes/_SUCCESS", Body=b"")
    s3.put_object(Bucket=bucket, Key="likes/part-0.csv", Body=b"item_id\na\n")  # the same bytes again
    assert files_identity(table, s3cfg) == first
    s3.put_object(Bucket=bucket, Key="likes/part-0.csv", Body=b"item_id\nb\n")  # same size, new ETag
    assert files_identity(table, s3cfg) != first
    assert files_identity(f"{table}/part-0.csv", s3cfg) is not None  # one object

    directory = tmp_path / "likes"
    directory.mkdir()
    (directory / "part-0.csv").write_text("item_id\na\n")
    local = files_identity(str(directory))
    assert files_identity(f"file://{directory}") == local
    (directory / "part-0.csv").write_text("item_id\na\nb\n")
    assert files_identity(str(directory)) != local

    with caplog.at_level(logging.WARNING, logger="lookalike.publish.lineage"):
        assert files_identity(f"s3://{bucket}-missing/likes", s3cfg) is None
        assert files_identity(str(tmp_path / "nowhere")) is None
    assert "cannot list" in caplog.text and "no data file" in caplog.text


@pytest.fixture
def embeddings(spark, tmp_path):
    return publish_embeddings(spark, str(tmp_path / "emb"), IDS, VECTORS, f"{N}-content")


def assert_neighbours(cfg, candidates):
    assert_matches(read_output(cfg.output.neighbours), brute_force(IDS, VECTORS, K, candidates=candidates))


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


def test_a_replaced_s3_candidates_file_recomputes(spark, tmp_path, embeddings, s3, bucket, s3_endpoint,
                                                  spark_reads_s3_through_storage):
    def put(ids):
        s3.put_object(Bucket=bucket, Key="likes/candidates.csv", Body="\n".join(["item_id", *ids]).encode())

    before, after = IDS[:10], IDS[5:15]
    cfg = updated(config(tmp_path, embeddings, k=K, candidates=f"s3://{bucket}/likes/candidates.csv"),
                              s3=S3Config(endpoint_url=s3_endpoint))
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
    cfg = config(tmp_path, embeddings, k=K, candidates=str(table))
    assert not job.run(spark, cfg).get("skipped")
    assert_neighbours(cfg, before)
    (table / "_SUCCESS").write_text("bookkeeping")  # not data: still the same table
    assert job.run(spark, cfg)["skipped"] is True

    write(after)
    assert not job.run(spark, cfg).get("skipped")
    assert_neighbours(cfg, after)
    assert job.run(spark, cfg)["skipped"] is True


@pytest.mark.heavy  # CI's compat run leaves it out (pytest.ini)
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

    exact = {"k": K, "block_rows": 8}
    published = assert_recomputed(exact)
    for speed in ({"block_rows": 5}, {"broadcast_max_mb": 0.001}, {"partitions": 3}, {"symmetric": False},
                  {"row_group_rows": 7}, {"recall_sample": 5}, {"nprobe": 3}, {"nlist": 2, "seed": 1}):
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
