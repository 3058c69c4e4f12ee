"""The duplicates job (near-duplicate groups) against brute force: every pair scored in float64, the
groups from a union-find over the pairs; ids, sizes, representatives and scores compared exactly.
The numpy core alone: tests/unit/duplicates/test_pairs.py; real photos through the pipeline:
test_altered_photos_pipeline.py."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from lookalike import schemas
from lookalike.config import from_dict
from lookalike.duplicates.write import group_id
from lookalike.errors import InputError
from lookalike.jobs import duplicates as job
from lookalike.neighbours.topk import normalise
from tests.support.neighbour_tables import make_ids, publish_embeddings
from tests.support.neighbours_duplicates import brute_groups, brute_pairs
from tests.support.outputs import output_files, output_summary, read_output
from tests.support.tablekit import embeddings_table, write_table

DIM = 48
THRESHOLD = 0.9


def read_groups(path) -> set:
    return {tuple(r.values()) for r in read_output(path).to_pylist()}


# --- the job on planted groups -----------------------------------------------------------------


def planted(n: int = 400, seed: int = 1) -> tuple[np.ndarray, dict]:
    """Random vectors (cosines about N(0, 1/48): far below THRESHOLD) with planted groups at random
    positions of the id order; returns the vectors and the planted rows by kind."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM))
    free = iter(rng.permutation(n).tolist())
    kinds: dict = {}

    def plant(kind, vectors):
        rows = [next(free) for _ in vectors]
        x[rows] = vectors
        kinds.setdefault(kind, []).append(rows)

    def near(count, noise=1e-3):
        base = rng.standard_normal(DIM)
        return [base * rng.uniform(0.5, 3) + noise * rng.standard_normal(DIM) for _ in range(count)]

    plant("spread", near(12))  # a dozen members over every chunk and partition
    for _ in range(6):
        plant("pair", near(2))
    for _ in range(3):
        plant("triple", near(3))
    e1, e2 = np.linalg.qr(rng.standard_normal((DIM, 2)))[0].T
    step = np.arccos(0.95)  # neighbours at 0.95, every second one at cos(2 step) = 0.805
    plant("chain", [np.cos(k * step) * e1 + np.sin(k * step) * e2 for k in range(7)])
    base = rng.standard_normal(DIM)
    plant("copies", [base * 2.0**k for k in range(3)])  # identical once normalised
    plant("invalid", [np.zeros(DIM), np.full(DIM, np.nan)])
    # Near-duplicates of the spread group, but unusable: left out, and no member of anything.
    broken = x[kinds["spread"][0][0]].copy()
    broken[3] = np.inf
    plant("invalid", [broken])
    return x.astype(np.float32), kinds


@pytest.fixture(scope="module")
def planted_table(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("duplicates")
    ids = make_ids(400)  # shuffled, mixed length, non-ASCII: Spark's string order and Python's agree
    x, kinds = planted()
    return tmp, ids, x, kinds, publish_embeddings(spark, str(tmp / "embeddings"), ids, x, "400-planted")


def config(out, embeddings: str, **duplicates):
    return from_dict(
        {
            "output": {
                "embeddings": embeddings,
                "duplicates": str(out / "duplicates"),
                "catalog": {"uri": str(out / "catalog.db")},
            },
            "duplicates": {"min_score": THRESHOLD, **duplicates},
        }
    )


@pytest.fixture(scope="module")
def chunked_run(spark, planted_table):
    tmp, _, _, _, embeddings = planted_table
    out = tmp / "chunked"
    # 0.025 MB / (4 * 48 + 64) bytes per item -> 102 items per broadcast chunk -> 4 chunks.
    summary = job.run(spark, config(out, embeddings, broadcast_max_mb=0.025, partitions=5, block_rows=16))
    return summary, out / "duplicates"


def test_groups_equal_the_connected_components_of_brute_force(planted_table, chunked_run):
    _, ids, x, kinds, _ = planted_table
    summary, path = chunked_run
    want = brute_groups(ids, x, THRESHOLD)
    got = read_groups(path)
    assert got == want
    # The planted structure is what the oracle found: the spread group whole, the chain as one
    # group although its ends are far apart, pairs and triples, no random vector in any group.
    by_item = {row[1]: row for row in got}
    for kind, size in (("spread", 12), ("pair", 2), ("triple", 3), ("chain", 7), ("copies", 3)):
        for rows in kinds[kind]:
            members = {ids[r] for r in rows}
            assert {by_item[i][0] for i in members} == {group_id(min(members))}
            assert {by_item[i][2] for i in members} == {size} and {by_item[i][3] for i in members} == {min(members)}
    chain = kinds["chain"][0]
    unit, _ = normalise(x)
    assert float(unit[chain[0]] @ unit[chain[2]]) < THRESHOLD <= float(unit[chain[0]] @ unit[chain[1]])
    planted_items = {ids[r] for k, groups in kinds.items() if k != "invalid" for rows in groups for r in rows}
    assert set(by_item) == planted_items
    assert summary["chunks"] == 4 and summary["partitions"] == 5
    assert summary["pairs"] == len(brute_pairs(x, THRESHOLD))
    assert summary["groups"] == 1 + 6 + 3 + 1 + 1 and summary["items_in_groups"] == len(planted_items)
    assert summary["largest_group"] == 12 and summary["min_score"] == THRESHOLD
    assert summary["invalid"] == 3 and summary["items"] == 400 and summary["component_rounds"] >= 2
    copies = kinds["copies"][0]
    assert all(by_item[ids[r]][4] == pytest.approx(1.0, abs=1e-6) for r in copies)


def test_table_schema_files_and_summary(chunked_run):
    summary, path = chunked_run
    files = [f[len("file://") :] for f in output_files(path)]
    assert len(files) == summary["files"] >= 1
    table = pq.read_table(files[0])
    assert table.schema.equals(schemas.arrow_schema(schemas.DUPLICATES), check_metadata=False)
    ids = [r for f in files for r in pq.read_table(f, columns=["item_id"]).column(0).to_pylist()]
    assert ids == sorted(ids)
    stored = json.dumps(output_summary(path))
    for key in (
        "job",
        "run_id",
        "ok",
        "items",
        "pairs",
        "groups",
        "items_in_groups",
        "largest_group",
        "min_score",
        "seconds",
        "inputs",
    ):
        assert f'"{key}"' in stored and key in summary


@pytest.mark.version_independent
def test_one_chunk_rerun_is_identical_then_skipped_and_a_new_threshold_is_not(spark, planted_table, chunked_run):
    tmp, ids, x, _, embeddings = planted_table
    out = tmp / "one-chunk"
    first = job.run(spark, config(out, embeddings, partitions=2))
    assert first["chunks"] == 1 and first["partitions"] == 2
    # Whatever the chunking and partitioning: the same table, group ids included.
    order = [("item_id", "ascending")]
    assert read_output(out / "duplicates").sort_by(order).equals(read_output(chunked_run[1]).sort_by(order))
    again = job.run(spark, config(out, embeddings, broadcast_max_mb=1, partitions=3))  # the same answer
    assert again["skipped"] is True and again["unchanged_since"] == first["run_id"]
    stricter = job.run(spark, config(out, embeddings, min_score=0.99, partitions=2))
    assert not stricter.get("skipped") and stricter["groups"] < first["groups"]
    assert read_groups(out / "duplicates") == brute_groups(ids, x, 0.99)


def test_no_pair_above_the_threshold_writes_an_empty_table(spark, tmp_path):
    ids = make_ids(50, seed=2)
    x = np.random.default_rng(2).standard_normal((50, DIM)).astype(np.float32)
    embeddings = write_table(embeddings_table(ids, [f"file:///x/{i}.jpg" for i in ids], x), tmp_path / "embeddings")
    summary = job.run(spark, config(tmp_path, embeddings, partitions=2))
    assert summary["pairs"] == summary["groups"] == summary["largest_group"] == 0
    table = read_output(tmp_path / "duplicates")
    assert table.num_rows == 0 and table.schema.equals(schemas.arrow_schema(schemas.DUPLICATES), check_metadata=False)


@pytest.mark.version_independent
def test_missing_embeddings_is_a_clear_error(spark, tmp_path):
    with pytest.raises(InputError, match="cannot read the embeddings table at .*nowhere.*run the embed job first"):
        job.run(spark, config(tmp_path, str(tmp_path / "nowhere")))
    assert not (tmp_path / "duplicates").exists()
