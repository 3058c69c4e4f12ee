"""The neighbours job on a real local SparkSession against the brute-force oracle: exact ids and
ranks, scores within 1e-5, through several broadcast chunks, ties, invalid vectors, a candidates
filter, k >= N-1, and the Parquet layout that makes a point lookup read one row group."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lookalike import schemas
from lookalike.errors import ConfigError, InputError, SchemaMismatchError
from lookalike.jobs import neighbours as job
from lookalike.neighbours.topk import normalise
from tests.support.brute_force import brute_force, random_vectors
from tests.support.neighbour_tables import (
    assert_matches,
    config,
    embeddings_dir,
    make_ids,
    publish_embeddings,
    read_lists,
)
from tests.support.outputs import output_files, output_summary, published_run, read_output
from tests.support.tablekit import embeddings_table

N = 301  # not a multiple of block_rows below


@pytest.fixture(scope="module")
def tricky(tmp_path_factory):
    """N vectors with exact ties (copies at power-of-two scales), a zero, a NaN and an inf vector."""
    tmp = tmp_path_factory.mktemp("tricky")
    ids = make_ids(N)
    x = random_vectors(N, 24, seed=4, duplicates=50)
    x[[10, 140, 290]] = x[33]  # one vector four times, spread over chunks and partitions
    x[7] = 0
    x[8, 5] = np.nan
    x[9, 1] = np.inf
    return tmp, ids, x, embeddings_dir(tmp, ids, x)


@pytest.fixture(scope="module")
def several_chunks(spark, tricky):
    tmp, ids, x, embeddings = tricky
    out = tmp / "several"
    # 0.01 MB / (4*24 + 64) bytes per candidate -> 65 candidates per chunk -> 5 chunks; 4 partitions
    # (auto would make 8), each cut by chunks, and the tables below are partitioned otherwise.
    cfg = config(out, embeddings, k=7, block_rows=16, broadcast_max_mb=0.01, row_group_rows=20, partitions=4)
    return job.run(spark, cfg), read_lists(str(out / "neighbours")), out / "neighbours"


def test_job_several_chunks_ties_invalid_vectors_match_brute_force(tricky, several_chunks):
    _, ids, x, _ = tricky
    summary, got, _ = several_chunks
    assert_matches(got, brute_force(ids, x, 7))
    assert summary["chunks"] == 5
    # Queries are the candidates: each block of scores served both of its sides.
    assert summary["symmetric"] is True and summary["partitions"] > 2
    assert summary["invalid"] == 3 and set(summary["invalid_sample"]) == {ids[7], ids[8], ids[9]}
    assert summary["queries"] == summary["candidates"] == N - 3
    assert summary["rows"] == 7 * (N - 3) and summary["items_without_neighbours"] == 0
    left_out = {ids[7], ids[8], ids[9]}
    assert not left_out & set(got)
    assert not left_out & {n for rows in got.values() for _, n, _ in rows}
    assert all(item not in {n for _, n, _ in rows} for item, rows in got.items())
    # The copies of x[33] (at least four) see each other first, with score 1, in id order.
    unit, _ = normalise(x)
    copies = sorted(ids[j] for j in range(N) if np.array_equal(unit[j], unit[33]))
    assert {ids[i] for i in (10, 33, 140, 290)} <= set(copies) and len(copies) <= 8
    for item in copies:
        assert [n for _, n, _ in got[item][: len(copies) - 1]] == [c for c in copies if c != item]
        assert all(s == pytest.approx(1.0, abs=1e-6) for _, _, s in got[item][: len(copies) - 1])


def test_job_one_chunk_gives_the_identical_table(spark, tricky, several_chunks):
    tmp, _, _, embeddings = tricky
    out = tmp / "one"
    summary = job.run(spark, config(out, embeddings, k=7, block_rows=1000, partitions=3))
    assert summary["chunks"] == 1
    one = read_output(out / "neighbours").sort_by([("item_id", "ascending"), ("rank", "ascending")])
    several = read_output(several_chunks[2]).sort_by([("item_id", "ascending"), ("rank", "ascending")])
    assert one.equals(several)  # bit-identical scores, whatever the chunking and blocking


def test_job_one_sided_scoring_gives_the_identical_table(spark, tricky, several_chunks):
    """symmetric: false scores every pair from the query's side only: same table, bit for bit."""
    tmp, _, _, embeddings = tricky
    out = tmp / "one-sided"
    summary = job.run(spark, config(out, embeddings, k=7, block_rows=50, symmetric=False, partitions=3))
    assert summary["symmetric"] is False and summary["chunks"] == 1
    one_sided = read_output(out / "neighbours").sort_by([("item_id", "ascending"), ("rank", "ascending")])
    several = read_output(several_chunks[2]).sort_by([("item_id", "ascending"), ("rank", "ascending")])
    assert one_sided.equals(several)


def test_job_output_sorted_and_point_lookup_reads_one_row_group(several_chunks):
    summary, got, path = several_chunks
    files = [Path(f[len("file://") :]) for f in output_files(path)]
    assert len(files) == summary["files"] > 1
    groups = []  # (file, row group, min id, max id)
    for f in files:
        meta = pq.ParquetFile(f).metadata
        assert meta.schema.to_arrow_schema().equals(schemas.arrow_schema(schemas.NEIGHBOURS), check_metadata=False)
        ids = pq.read_table(f, columns=["item_id"]).column(0).to_pylist()
        assert ids == sorted(ids)
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(0).statistics
            assert stats.has_min_max
            groups.append((f.name, g, stats.min, stats.max))
    assert summary["row_groups"] == len(groups) > len(files)  # row_group_rows=20 -> several per file
    for item in got:
        hits = [(f, g) for f, g, lo, hi in groups if lo <= item <= hi]
        assert len(hits) == 1, f"{item} could be in {hits}"
        # ...and all of its rows really are in that one row group.
        f, g = hits[0]
        rows = pq.ParquetFile(next(p for p in files if p.name == f)).read_row_group(g, columns=["item_id"])
        rows = rows.column(0).to_pylist()
        assert rows.count(item) == len(got[item])
    summary_file = output_summary(path)
    assert summary_file["rows"] == summary["rows"] and summary_file["weights"].startswith("random-init")


@pytest.mark.version_independent
def test_job_k_at_least_n_minus_1_returns_all_others(spark, tmp_path):
    ids = make_ids(40, seed=2)
    x = random_vectors(40, 8, seed=2, duplicates=5)
    x[3] = 0
    summary = job.run(
        spark,
        config(
            tmp_path,
            embeddings_dir(tmp_path, ids, x, parts=2),
            k=39,
            block_rows=6,
            broadcast_max_mb=0.001,
            partitions=3,
        ),
    )
    got = read_lists(str(tmp_path / "neighbours"))
    assert_matches(got, brute_force(ids, x, 39))
    assert summary["chunks"] > 1
    assert all(len(rows) == 38 for rows in got.values()) and len(got) == 39


def test_job_candidates_table_and_min_score(spark, tmp_path):
    ids = make_ids(120, seed=3)
    x = random_vectors(120, 12, seed=3)
    x[0] = 0
    allowed = sorted(ids[::4])  # includes the zero vector ids[0]: it still cannot be recommended
    csv_path = tmp_path / "candidates.csv"
    csv_path.write_text("item_id,likes\n" + "".join(f"{i},7\n" for i in allowed + ["not-an-item"]), encoding="utf-8")
    summary = job.run(
        spark,
        config(
            tmp_path,
            embeddings_dir(tmp_path, ids, x),
            k=5,
            block_rows=9,
            broadcast_max_mb=0.002,
            candidates=str(csv_path),
            min_score=0.4,
            partitions=3,
        ),
    )
    got = read_lists(str(tmp_path / "neighbours"))
    want = brute_force(ids, x, 5, candidates=allowed, min_score=0.4)
    assert_matches(got, want)
    assert summary["candidates"] == len(allowed) - 1
    assert summary["candidates_unknown"] == 2  # not-an-item and the zero vector
    assert summary["queries"] == 119  # every valid item is a query, not only candidates
    assert summary["symmetric"] is False  # queries are not the candidates: one side per block
    assert {n for rows in got.values() for _, n, _ in rows} <= set(allowed)
    assert summary["items_without_neighbours"] == 119 - len(want) > 0  # min_score emptied some lists
    assert min(s for rows in got.values() for _, _, s in rows) >= 0.4
    assert any(len(rows) < 5 for rows in got.values())


# Five partitions: another split of the same logic (CI's compat run takes two).
@pytest.mark.parametrize("partitions", [2, pytest.param(5, marks=pytest.mark.version_independent)])
def test_job_symmetric_scoring_with_min_score_and_chunks_matches_brute_force(spark, tmp_path, partitions):
    """Even and odd partition counts (the opposite partition is shared differently), chunks that
    cut partitions, and a score floor that leaves some items short of k."""
    ids = make_ids(140, seed=8)
    x = random_vectors(140, 10, seed=8, duplicates=12)
    summary = job.run(
        spark,
        config(
            tmp_path,
            embeddings_dir(tmp_path, ids, x),
            k=6,
            block_rows=7,
            broadcast_max_mb=0.003,
            min_score=0.3,
            partitions=partitions,
        ),
    )
    assert summary["symmetric"] is True and summary["chunks"] > 2
    assert_matches(read_lists(str(tmp_path / "neighbours")), brute_force(ids, x, 6, min_score=0.3))


@pytest.mark.version_independent
def test_job_candidates_list_in_config(spark, tmp_path):
    ids = make_ids(30, seed=5)
    x = random_vectors(30, 6, seed=5)
    allowed = ids[:10]
    summary = job.run(
        spark, config(tmp_path, embeddings_dir(tmp_path, ids, x, parts=1), k=4, candidates=allowed, partitions=2)
    )
    assert_matches(read_lists(str(tmp_path / "neighbours")), brute_force(ids, x, 4, candidates=allowed))
    assert summary["candidates"] == 10 and summary["candidates_filter"] == "10 ids"


@pytest.mark.version_independent
def test_job_mixed_dimensions_is_an_error_naming_both(spark, tmp_path):
    ids = make_ids(20)
    directory = embeddings_dir(tmp_path, ids[:12], random_vectors(12, 16, seed=1), parts=1)
    other = embeddings_table(ids[12:], [f"file:///x/{i}" for i in ids[12:]], random_vectors(8, 8, seed=2))
    pq.write_table(other, Path(directory) / "part-00009.snappy.parquet")
    with pytest.raises(SchemaMismatchError) as error:
        job.run(spark, config(tmp_path, directory, k=3))
    message = str(error.value)
    assert "12 rows of model=vgg16 pooling=avg weights=random-init:seed=0 dim=16" in message
    assert "8 rows of model=vgg16 pooling=avg weights=random-init:seed=0 dim=8" in message
    assert not (tmp_path / "neighbours").exists()  # nothing published


@pytest.mark.version_independent
@pytest.mark.parametrize(
    "other_kind,names",
    [
        ({"weights": "imagenet"}, ("weights=imagenet", "weights=random-init")),
        # Same length, same weights tag, different CNNs: cosines between them would mean nothing.
        ({"model": "efficientnet_lite0"}, ("model=efficientnet_lite0", "model=vgg16")),
    ],
    ids=["weights", "backbones"],
)
def test_job_mixed_weights_or_backbones_of_one_dimension_is_an_error(spark, tmp_path, other_kind, names):
    ids = make_ids(10)
    directory = embeddings_dir(tmp_path, ids[:6], random_vectors(6, 4, seed=1), parts=1)
    other = embeddings_table(ids[6:], [f"file:///x/{i}" for i in ids[6:]], random_vectors(4, 4, seed=2), **other_kind)
    pq.write_table(other, Path(directory) / "part-00009.snappy.parquet")
    with pytest.raises(SchemaMismatchError) as error:
        job.run(spark, config(tmp_path, directory, k=3))
    assert all(name in str(error.value) for name in names), str(error.value)
    assert not (tmp_path / "neighbours").exists()


@pytest.mark.version_independent
def test_job_duplicate_item_ids_is_an_error(spark, tmp_path):
    ids = make_ids(12)
    ids[5] = ids[2]
    with pytest.raises(InputError, match=f"1 duplicate item ids, e.g. '{ids[2]}'"):
        job.run(spark, config(tmp_path, embeddings_dir(tmp_path, ids, random_vectors(12, 4, seed=1)), k=3))
    assert not (tmp_path / "neighbours").exists()


def test_job_min_score_above_every_score_publishes_an_empty_readable_table(spark, tmp_path):
    ids = make_ids(20, seed=6)
    summary = job.run(
        spark,
        config(
            tmp_path,
            embeddings_dir(tmp_path, ids, random_vectors(20, 32, seed=6), parts=1),
            k=3,
            min_score=0.99,
            partitions=2,
        ),
    )
    assert summary["rows"] == 0 and summary["items_without_neighbours"] == 20
    table = read_output(tmp_path / "neighbours")
    assert table.num_rows == 0
    assert table.schema.equals(schemas.arrow_schema(schemas.NEIGHBOURS), check_metadata=False)


def test_duckdb_point_lookup_scans_one_row_group(several_chunks):
    import duckdb  # the 'query' extra, which make test installs

    summary, got, path = several_chunks
    item = sorted(got)[len(got) // 2]
    # The snapshot's files, as DuckDB's iceberg_scan finds them from the version hint.
    files = ", ".join(f"'{f[len('file://') :]}'" for f in output_files(path))
    plan = duckdb.sql(
        f"EXPLAIN ANALYZE SELECT rank, neighbour_id FROM read_parquet([{files}]) WHERE item_id = '{item}'"
    ).fetchall()[0][1]
    scanned = re.search(r"Row Groups Scanned:\s*(\d+)\s*/\s*(\d+)", plan)
    assert scanned, plan
    assert (int(scanned.group(1)), int(scanned.group(2))) == (1, summary["row_groups"])


@pytest.mark.version_independent
def test_job_missing_inputs_are_clear_errors(spark, tmp_path):
    with pytest.raises(InputError, match="cannot read the embeddings table at .*nowhere.*run the embed job first"):
        job.run(spark, config(tmp_path, str(tmp_path / "nowhere"), k=3))
    directory = embeddings_dir(tmp_path, make_ids(6), random_vectors(6, 4), parts=1)
    with pytest.raises(ConfigError, match="neighbours.candidates.*likes.csv"):
        job.run(spark, config(tmp_path, directory, k=3, candidates=str(tmp_path / "likes.csv")))
    (tmp_path / "ids.csv").write_text("id\nx\n")
    with pytest.raises(ConfigError, match="has no item_id column \\(it has id\\)"):
        job.run(spark, config(tmp_path, directory, k=3, candidates=str(tmp_path / "ids.csv")))


def test_a_rerun_on_unchanged_embeddings_and_settings_skips_and_keeps_the_table(spark, tmp_path):

    ids = make_ids(40, seed=9)
    vectors = random_vectors(40, 8, seed=9)
    embeddings = publish_embeddings(spark, str(tmp_path / "emb"), ids, vectors, "40-content-a")
    cfg = config(tmp_path, embeddings, k=3, partitions=2)
    first = job.run(spark, cfg)
    assert not first.get("skipped") and first["rows"] == 40 * 3
    version = published_run(cfg.output.neighbours)

    again = job.run(spark, cfg)
    assert again["skipped"] is True and again["unchanged_since"] == first["run_id"]
    assert published_run(cfg.output.neighbours) == version

    # Other settings, or new embeddings, recompute.
    assert not job.run(spark, config(tmp_path, embeddings, k=4, partitions=2)).get("skipped")
    publish_embeddings(spark, embeddings, ids, vectors * 2, "40-content-b", "20260102T000000Z-embed002")
    assert not job.run(spark, config(tmp_path, embeddings, k=4, partitions=2)).get("skipped")
