"""IVF (neighbours.method: ivf): the Spark job against the exact answer (probing every list) and
against its own reported recall. The numpy core is tested in tests/unit/neighbours/test_ivf_kernel.py."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.jobs import neighbours as job
from lookalike.neighbours import ivf, ivf_stage
from lookalike.neighbours.chunks import rows_per_chunk
from lookalike.neighbours.topk import normalise
from tests.support.brute_force import brute_force, random_vectors
from tests.support.neighbour_tables import assert_matches, config, embeddings_dir, make_ids, read_lists
from tests.support.outputs import read_output


def unit(x):
    return normalise(x)[0]


# --------------------------------------------------------------------------------------------
# The Spark job

N = 257


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """Clustered vectors with exact ties and two invalid vectors."""
    tmp = tmp_path_factory.mktemp("ivf")
    ids = make_ids(N, seed=3)
    x = random_vectors(N, 16, seed=6, duplicates=30, clusters=8)
    x[11] = 0
    x[12, 3] = np.nan
    return tmp, ids, x, embeddings_dir(tmp, ids, x)


def test_ivf_reported_recall_is_the_recall_of_its_table(spark, clustered):
    tmp, ids, x, embeddings = clustered
    out = tmp / "one-list"
    # recall_sample above N: every query is in the sample, so the reported figure must be exact.
    summary = job.run(spark, config(out, embeddings, k=5, method="ivf", nlist=12, nprobe=1, recall_sample=10_000))
    got = read_lists(str(out / "neighbours"))
    want = brute_force(ids, x, 5)
    found = sum(len({n for _, n, _ in got.get(item, [])} & {n for n, _ in rows}) for item, rows in want.items())
    measured = found / sum(len(rows) for rows in want.values())
    assert summary["recall_sample"]["queries"] == N - 2
    assert summary["recall_at_k"] == pytest.approx(measured, abs=1e-4)
    assert 0.5 < measured < 1.0  # one list of twelve: most but not all neighbours
    # What IVF returns is exact for what it found: every score is the true cosine.
    unit_x = unit(x).astype(np.float64)
    index = {item: i for i, item in enumerate(ids)}
    for item, rows in got.items():
        for _, neighbour, score in rows:
            assert score == pytest.approx(float(unit_x[index[item]] @ unit_x[index[neighbour]]), abs=1e-5)
        assert [r for r, _, _ in rows] == list(range(1, len(rows) + 1))
    assert summary["ivf"]["lists"] == 12 and sum(1 for _ in summary["ivf"]["list_size"]) == 5


def test_nprobe_0_chooses_the_fewest_lists_that_reach_target_recall(spark, clustered):
    """neighbours.nprobe 0 (the default): nprobe is chosen before the search from where the sampled
    queries' exact neighbours sit in the lists. With every query sampled the recall predicted there
    is the recall of the table, and one list fewer (same seed: same lists) falls short."""
    tmp, ids, x, embeddings = clustered
    settings = {"k": 5, "method": "ivf", "nlist": 12, "recall_sample": 10_000}
    summary = job.run(spark, config(tmp / "auto", embeddings, target_recall=0.9, **settings))
    chosen = summary["ivf"]
    assert chosen["nprobe_from"] == "target_recall" and chosen["target_met"] is True
    assert summary["recall_at_k"] >= 0.9
    assert chosen["sampled_recall_at_chosen_nprobe"] == pytest.approx(summary["recall_at_k"], abs=1e-4)
    assert 1 < chosen["nprobe"] <= 12 // 4
    fewer = job.run(spark, config(tmp / "fewer", embeddings, nprobe=chosen["nprobe"] - 1, **settings))
    assert fewer["ivf"]["nprobe_from"] == "neighbours.nprobe" and fewer["recall_at_k"] < 0.9
    # A target no nprobe up to a quarter of the lists reaches (vectors without clusters): the best
    # there, reported as such.
    spread = embeddings_dir(tmp / "spread", make_ids(N, seed=4), random_vectors(N, 16, seed=8))
    unreachable = job.run(spark, config(tmp / "unreachable", spread, target_recall=1.0, **settings))
    assert unreachable["ivf"]["target_met"] is False and unreachable["ivf"]["nprobe"] == 12 // 4
    assert unreachable["recall_at_k"] < 1.0


@pytest.mark.parametrize("passes", [1, 2])
def test_ivf_over_several_chunks_is_brute_force_over_the_lists_each_query_probes(spark, clustered, monkeypatch, passes):
    """The lists are trained on every candidate (6 lists x 64 > 255 items: no sampling, id order),
    so the test trains the same ones; each query then meets the members of the one list it probes
    in each of 4 broadcast chunks, across 3 query tasks, in one pass over the queries or in two
    (two partial lists per query to merge). The table must be brute force restricted to those
    members, ties and scores included."""
    tmp, ids, x, embeddings = clustered
    out = tmp / f"chunked-{passes}"
    mb = 65 * (4 * 16 + 64) / 2**20  # 65 candidates of dim 16 per chunk: 255 in 4 chunks
    assert rows_per_chunk(mb, 16) == 65
    monkeypatch.setattr(ivf_stage, "PASS_MB", 4.5 * mb / passes)
    summary = job.run(
        spark,
        config(out, embeddings, k=5, method="ivf", nlist=6, nprobe=1, seed=4, broadcast_max_mb=mb, partitions=3),
    )
    unit, valid = normalise(x)
    by_id = sorted((i for i in range(N) if valid[i]), key=lambda i: ids[i])
    centroids = ivf.train(unit[by_id], 6, seed=4)
    probes, lists = ivf.assignment(unit, centroids, 1)
    at = {item: i for i, item in enumerate(ids)}
    oracle = brute_force(ids, x, 5, allow=lambda item, other: lists[at[other]] in set(probes[at[item]].tolist()))
    assert_matches(read_lists(str(out / "neighbours")), oracle)
    assert oracle != brute_force(ids, x, 5)  # one list of six does miss neighbours
    chunks = summary["ivf"]
    assert chunks["chunks"] == 4 and chunks["chunk_rows"] == 65 and chunks["tasks"] == 3
    assert chunks["passes"] == passes and chunks["partial_rows_per_query"] == pytest.approx(5 * passes, abs=0.1)
    assert chunks["task_queries"]["min"] >= 1 and chunks["task_queries"]["max"] < N - 2
    assert sum(chunks["list_size"].values()) > 0 and chunks["lists"] == 6


def test_ivf_with_candidates_and_min_score_matches_brute_force(spark, clustered):
    tmp, ids, x, embeddings = clustered
    out = tmp / "filtered"
    allowed = ids[::3]
    summary = job.run(
        spark, config(out, embeddings, k=4, method="ivf", nprobe=1000, candidates=allowed, min_score=0.2, partitions=3)
    )
    assert_matches(read_lists(str(out / "neighbours")), brute_force(ids, x, 4, candidates=allowed, min_score=0.2))
    assert summary["ivf"]["nprobe"] == summary["ivf"]["nlist"] == round(np.sqrt(summary["candidates"]))


def test_ivf_probing_every_list_gives_the_exact_jobs_table_bit_for_bit(spark, clustered):
    """Same scores and the same tie-break (smaller id first) as the exact job, across partitions;
    and both are brute force's answer (ties and invalid vectors included)."""

    tmp, ids, x, embeddings = clustered
    exact_out, ivf_out = tmp / "tie-exact", tmp / "tie-ivf"
    job.run(spark, config(exact_out, embeddings, k=6, partitions=3))
    summary = job.run(
        spark, config(ivf_out, embeddings, k=6, method="ivf", nlist=9, nprobe=9, block_rows=16, partitions=5)
    )
    a = read_output(exact_out / "neighbours").sort_by([("item_id", "ascending"), ("rank", "ascending")])
    b = read_output(ivf_out / "neighbours").sort_by([("item_id", "ascending"), ("rank", "ascending")])
    assert a.equals(b)
    assert_matches(read_lists(str(ivf_out / "neighbours")), brute_force(ids, x, 6))
    assert summary["method"] == "ivf" and summary["ivf"]["nlist"] == 9 and summary["ivf"]["nprobe"] == 9
    assert summary["recall_at_k"] == 1.0 and summary["recall_sample"]["queries"] > 0
    assert summary["invalid"] == 2
