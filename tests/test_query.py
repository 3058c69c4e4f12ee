"""``lookalike similar`` on a real neighbour table: the embed job and the neighbours job run through
./spark-submit.sh on the shipped sample (random-init weights: no network), then the query command
reads the table without Spark, locally and from a real S3 API."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.support.brute_force import brute_force
from tests.support.procs import run_script
from tests.support.row_groups import bytes_read, ranked_table, record_reads, write_row_groups
from tests.support.s3 import upload_dir

LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


def last_json_line(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def sample_tables(tmp_path_factory):
    """Embeddings of the 60 sample images (model.weights=none) and their neighbour table, both
    made by the jobs through spark-submit.sh."""
    tmp = tmp_path_factory.mktemp("query")
    embeddings, neighbours = tmp / "embeddings", tmp / "neighbours"
    embed = run_script(["./spark-submit.sh", "embed", "--master", "local[2]", "--set", "model.weights=none",
                        "--set", f"output.embeddings={embeddings}", "--set", f"output.errors={tmp / 'errors'}"])
    assert embed.returncode == 0, embed.stderr[-3000:]
    job = run_script(["./spark-submit.sh", "neighbours", "--master", "local[2]",
                      "--set", f"output.embeddings={embeddings}", "--set", f"output.neighbours={neighbours}",
                      "--set", "neighbours.k=5"])
    assert job.returncode == 0, job.stderr[-3000:]
    return embeddings, neighbours, last_json_line(job.stdout)


def oracle(embeddings: Path, k: int) -> dict:
    table = pq.read_table(embeddings, columns=["item_id", "embedding"]).to_pydict()
    return brute_force(table["item_id"], np.array(table["embedding"], dtype=np.float32), k)


def similar(*args: str):
    return run_script([LOOKALIKE, "similar", *args])


def test_spark_submit_neighbours_on_sample_random_init_weights(sample_tables):
    embeddings, neighbours, summary = sample_tables
    assert summary["job"] == "neighbours" and summary["ok"]
    assert summary["queries"] == summary["items"] == 60 and summary["invalid"] == 0
    assert summary["rows"] == 60 * 5 and summary["weights"].startswith("random-init")
    got = {}
    for row in pq.read_table(neighbours).to_pylist():
        got.setdefault(row["item_id"], []).append((row["rank"], row["neighbour_id"]))
    want = oracle(embeddings, 5)
    assert {item: [n for _, n in sorted(rows)] for item, rows in got.items()} == \
        {item: [n for n, _ in rows] for item, rows in want.items()}


def test_similar_json_matches_brute_force_random_init_weights(sample_tables):
    embeddings, neighbours, _ = sample_tables
    want = oracle(embeddings, 5)
    item = sorted(want)[17]
    result = similar(item, "--neighbours", str(neighbours), "-k", "3", "--format", "json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["item_id"] == item
    assert [n["rank"] for n in printed["neighbours"]] == [1, 2, 3]
    assert [n["neighbour_id"] for n in printed["neighbours"]] == [n for n, _ in want[item][:3]]
    np.testing.assert_allclose([n["score"] for n in printed["neighbours"]], [s for _, s in want[item][:3]], atol=1e-5)


def test_similar_table_and_csv_formats_random_init_weights(sample_tables):
    embeddings, neighbours, _ = sample_tables
    want = oracle(embeddings, 5)
    item = sorted(want)[0]
    table = similar(item, "--neighbours", str(neighbours))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"items similar to {item}"
    assert [line.split()[2] for line in lines[2:]] == [n for n, _ in want[item]]
    assert "random-init" in table.stderr  # the table says these are not real recommendations
    rows = list(csv.DictReader(io.StringIO(similar(item, "--neighbours", str(neighbours), "--format", "csv", "-k", "2").stdout)))
    assert [(r["item_id"], r["rank"], r["neighbour_id"]) for r in rows] == \
        [(item, "1", want[item][0][0]), (item, "2", want[item][1][0])]


def test_similar_unknown_id_exits_2_with_a_clear_message(sample_tables):
    _, neighbours, _ = sample_tables
    result = similar("no/such-item", "--neighbours", str(neighbours))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "item 'no/such-item' is not in the neighbour table" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_similar_missing_table_exits_2(tmp_path):
    result = similar("x", "--neighbours", str(tmp_path / "nothing-here"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nothing-here" in result.stderr


def test_similar_reads_the_table_from_s3_random_init_weights(sample_tables, s3_endpoint, s3, bucket):
    embeddings, neighbours, _ = sample_tables
    upload_dir(s3, bucket, Path(os.path.realpath(neighbours)), "tables/neighbours/")
    item = sorted(oracle(embeddings, 5))[42]
    local = similar(item, "--neighbours", str(neighbours), "--format", "json")
    remote = similar(item, "--neighbours", f"s3://{bucket}/tables/neighbours", "--format", "json",
                     "--s3-endpoint-url", s3_endpoint)
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout) == json.loads(local.stdout)


def test_reading_from_s3_exits_cleanly_every_time_random_init_weights(sample_tables, s3_endpoint, s3, bucket):
    """A file implemented in Python inside pyarrow's I/O threads aborted the interpreter at exit in
    about a third of the runs ("terminate called without an active exception"); the tools read S3
    with native pyarrow files (io/arrowfs.py). Several runs, each must exit 0 with the answer."""
    embeddings, neighbours, _ = sample_tables
    upload_dir(s3, bucket, Path(os.path.realpath(neighbours)), "tables/neighbours/")
    item = sorted(oracle(embeddings, 5))[7]
    for _ in range(6):
        remote = similar(item, "--neighbours", f"s3://{bucket}/tables/neighbours", "--format", "csv", "-k", "3",
                         "--s3-endpoint-url", s3_endpoint)
        assert (remote.returncode, remote.stderr) == (0, "")
        assert len(remote.stdout.strip().splitlines()) == 4


# --- reading only what is shown: a table of many row groups, every read recorded ------------------

@pytest.fixture(scope="module")
def large_neighbours(tmp_path_factory):
    """200,000 items x k=5 in 4 files of 5,000-row (1,000-item) row groups: 200 row groups."""
    table = ranked_table(200_000, 5)
    path = write_row_groups(table, tmp_path_factory.mktemp("large") / "neighbours", files=4, rows_per_group=5000)
    return path, table


def test_similar_reads_one_row_group_and_matches_the_whole_table(large_neighbours, monkeypatch):
    from lookalike.tools.query import similar as lookup

    import pyarrow.compute as pc

    path, table = large_neighbours
    whole = pq.read_table(path)  # the brute-force answer: every row
    reads = record_reads(monkeypatch)
    for item in ["item-000000", "item-123456", "item-199999"]:
        reads.clear()
        got = lookup(path, item)
        want = sorted(whole.filter(pc.equal(whole.column("item_id"), item)).to_pylist(), key=lambda r: r["rank"])
        assert [(n["rank"], n["neighbour_id"]) for n in got] == [(r["rank"], r["neighbour_id"]) for r in want]
        np.testing.assert_allclose([n["score"] for n in got], [r["score"] for r in want], atol=1e-6)
        assert len(reads) == 1 and len(reads.groups()) == 1, reads  # of 200 row groups
        assert reads.columns() == {"item_id", "rank", "neighbour_id", "score"}
    assert [n["rank"] for n in lookup(path, "item-000042", k=2)] == [1, 2]


def test_similar_unknown_id_suggests_close_ids_from_one_row_group(large_neighbours, monkeypatch):
    from lookalike.errors import ItemNotFoundError
    from lookalike.tools.query import similar as lookup

    path, _ = large_neighbours
    reads = record_reads(monkeypatch)
    with pytest.raises(ItemNotFoundError, match=r"not in the neighbour table.*Similar ids: 'item-012345'"):
        lookup(path, "item-012345x")
    assert len(reads.groups()) <= 3 and reads.columns() <= {"item_id", "rank", "neighbour_id", "score"}
    reads.clear()
    with pytest.raises(ItemNotFoundError, match=r"Ids in this table look like 'item-199"):
        lookup(path, "~")  # sorts after every id: the last row group's ids
    assert len(reads.groups()) <= 3


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io to count bytes read")
def test_similar_reads_a_small_part_of_the_files(large_neighbours):
    from lookalike.tools.query import similar as lookup

    path, _ = large_neighbours
    table_bytes = sum(p.stat().st_size for p in Path(path).glob("*.parquet"))
    lookup(path, "item-000001")  # imports and first-use costs out of the way
    before = bytes_read()
    lookup(path, "item-015000")
    read = bytes_read() - before
    # Four footers (pyarrow reads at least 64 kB of each) and one row group of 200.
    assert read < table_bytes / 10, f"read {read} bytes of a {table_bytes}-byte table"
