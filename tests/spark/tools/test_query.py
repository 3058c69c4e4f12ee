"""``lookalike similar`` on a real neighbour table: the neighbours job runs in the tests' session on
embeddings of the shipped sample (random-init weights: no network), then the query command reads
the table without Spark, locally and from a real S3 API. Without a table, and on a table of many
row groups: tests/unit/tools/test_query.py."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from lookalike.jobs import neighbours as neighbours_job
from tests.support.brute_force import brute_force
from tests.support.outputs import read_output
from tests.support.paths import ROOT
from tests.support.procs import run_script
from tests.support.s3 import upload_dir
from tests.support.tablekit import embeddings_table, label_vectors, sample_items, write_table

LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


def last_json_line(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def sample_tables(spark, tmp_path_factory):
    """Embeddings of the 60 sample items (vectors that cluster by label, weights random-init, as
    model.weights=none would say) and the neighbour table the neighbours job makes of them in the
    tests' session, on the demo config with neighbours.k=5."""
    tmp = tmp_path_factory.mktemp("query")
    items = sample_items()
    ids = [item_id for item_id, _, _ in items]
    vectors = label_vectors([label for _, _, label in items])
    embeddings = Path(
        write_table(
            embeddings_table(ids, [uri for _, uri, _ in items], vectors, weights="random-init:seed=5"),
            tmp / "embeddings",
        )
    )
    neighbours = tmp / "neighbours"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = neighbours_job.main(
            [
                "--config",
                str(ROOT / "conf" / "local.yaml"),
                "--set",
                f"output.embeddings={embeddings}",
                "--set",
                f"output.neighbours={neighbours}",
                "--set",
                "neighbours.k=5",
            ],
            spark=spark,
        )
    assert code == 0, printed.getvalue()[-3000:]
    return embeddings, neighbours, last_json_line(printed.getvalue())


def oracle(embeddings: Path, k: int) -> dict:
    table = read_output(embeddings, columns=["item_id", "embedding"]).to_pydict()
    return brute_force(table["item_id"], np.array(table["embedding"], dtype=np.float32), k)


def similar(*args: str):
    return run_script([LOOKALIKE, "similar", *args])


def test_neighbours_job_on_sample_random_init_weights(sample_tables):
    embeddings, neighbours, summary = sample_tables
    assert summary["job"] == "neighbours" and summary["ok"]
    assert summary["queries"] == summary["items"] == 60 and summary["invalid"] == 0
    assert summary["rows"] == 60 * 5 and summary["weights"].startswith("random-init")
    got = {}
    for row in read_output(neighbours).to_pylist():
        got.setdefault(row["item_id"], []).append((row["rank"], row["neighbour_id"]))
    want = oracle(embeddings, 5)
    assert {item: [n for _, n in sorted(rows)] for item, rows in got.items()} == {
        item: [n for n, _ in rows] for item, rows in want.items()
    }


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


@pytest.mark.version_independent
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
    rows = list(
        csv.DictReader(io.StringIO(similar(item, "--neighbours", str(neighbours), "--format", "csv", "-k", "2").stdout))
    )
    assert [(r["item_id"], r["rank"], r["neighbour_id"]) for r in rows] == [
        (item, "1", want[item][0][0]),
        (item, "2", want[item][1][0]),
    ]


@pytest.mark.version_independent
def test_similar_unknown_id_exits_2_with_a_clear_message(sample_tables):
    _, neighbours, _ = sample_tables
    result = similar("no/such-item", "--neighbours", str(neighbours))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "item 'no/such-item' is not in the neighbour table" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_similar_reads_the_table_from_s3_random_init_weights(sample_tables, s3_endpoint, s3, bucket):
    embeddings, neighbours, _ = sample_tables
    upload_dir(s3, bucket, Path(os.path.realpath(neighbours)), "tables/neighbours/")
    item = sorted(oracle(embeddings, 5))[42]
    local = similar(item, "--neighbours", str(neighbours), "--format", "json")
    remote = similar(
        item, "--neighbours", f"s3://{bucket}/tables/neighbours", "--format", "json", "--s3-endpoint-url", s3_endpoint
    )
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
        remote = similar(
            item,
            "--neighbours",
            f"s3://{bucket}/tables/neighbours",
            "--format",
            "csv",
            "-k",
            "3",
            "--s3-endpoint-url",
            s3_endpoint,
        )
        assert (remote.returncode, remote.stderr) == (0, "")
        assert len(remote.stdout.strip().splitlines()) == 4
