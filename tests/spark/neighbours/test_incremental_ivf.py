"""neighbours.incremental with method ivf on a real local SparkSession: the first run trains the
lists and keeps their centroids (the neighbours_centroids table); later days put new and changed
items in the same lists, and after every run the published table equals an IVF search with the
kept centroids on that day's embeddings (oracle: brute force over the candidates of the lists
each query probes). A day whose new items the kept lists fit badly lowers the sampled recall
below the trained one: that run retrains, in full."""

from __future__ import annotations

import numpy as np

from lookalike.neighbours import ivf
from lookalike.neighbours.incremental_ivf import RETRAIN_DROP
from lookalike.neighbours.topk import normalise
from tests.spark.neighbours.test_incremental_job import DIM, RESERVE, Catalogue, K, _publish, _run
from tests.support.brute_force import brute_force
from tests.support.neighbour_tables import assert_matches, read_lists
from tests.support.outputs import read_output

NLIST, NPROBE = 6, 2
IVF = {"method": "ivf", "nlist": NLIST, "nprobe": NPROBE, "seed": 3, "recall_sample": 10_000}


def _centroids(tmp) -> np.ndarray:
    rows = sorted(read_output(tmp / "neighbours_centroids").to_pylist(), key=lambda r: r["list"])
    return np.asarray([r["centroid"] for r in rows], dtype=np.float32)


def _ivf_oracle(catalogue: Catalogue, centroids: np.ndarray, k: int) -> dict:
    unit, _ = normalise(catalogue.vectors)
    probes, lists = ivf.assignment(unit, centroids, NPROBE)
    at = {item: i for i, item in enumerate(catalogue.ids)}
    return brute_force(
        catalogue.ids, catalogue.vectors, k, allow=lambda item, other: lists[at[other]] in set(probes[at[item]])
    )


def _recall(catalogue: Catalogue, centroids: np.ndarray, depth: int) -> float:
    found = _ivf_oracle(catalogue, centroids, depth)
    exact = brute_force(catalogue.ids, catalogue.vectors, depth)
    as_sets = lambda lists: {q: {n for n, _ in v} for q, v in lists.items()}  # noqa: E731
    return ivf.recall(as_sets(found), as_sets(exact))


def test_ivf_days_keep_the_lists_equal_an_ivf_search_with_them_and_retrain_when_they_drift(spark, tmp_path):
    catalogue = Catalogue(300, seed=21)
    depth = K + RESERVE
    first = _run(spark, tmp_path, _publish(spark, tmp_path, catalogue, 0), **IVF)
    assert first["mode"] == "full" and "no previous lists" in first["mode_reason"]
    trained = _centroids(tmp_path)
    assert trained.shape == (NLIST, DIM)
    assert_matches(read_lists(str(tmp_path / "neighbours")), _ivf_oracle(catalogue, trained, K))
    # Every query is sampled (recall_sample >= items): the trained recall is the oracle's.
    assert abs(first["recall_at_k"] - _recall(catalogue, trained, depth)) < 1e-4

    for day, change in enumerate(
        ({"new": 4, "changed": 3, "deleted": 3, "exhaust": 2}, {"new": 3, "changed": 1, "deleted": 2}), 1
    ):
        catalogue.churn(**change)
        summary = _run(spark, tmp_path, _publish(spark, tmp_path, catalogue, day), **IVF)
        assert summary["mode"] == "incremental", summary["mode_reason"]
        assert summary["ivf"]["lists"] == "kept from the previous run"
        np.testing.assert_array_equal(_centroids(tmp_path), trained)
        assert_matches(read_lists(str(tmp_path / "neighbours")), _ivf_oracle(catalogue, trained, K))
        assert abs(summary["recall_at_k"] - _recall(catalogue, trained, depth)) < 1e-4
        assert summary["scored_pairs"] < 0.35 * first["scored_pairs"] * NLIST / NPROBE

    # New items spread evenly over the sphere, unlike anything the lists were trained on.
    rng = np.random.default_rng(5)
    catalogue.ids += [f"odd-{i}" for i in range(50)]
    catalogue.vectors = np.vstack([catalogue.vectors, rng.standard_normal((50, DIM)).astype(np.float32)])
    drifted = _recall(catalogue, trained, depth)
    assert drifted < first["recall_at_k"] - RETRAIN_DROP  # the scenario does drift
    summary = _run(spark, tmp_path, _publish(spark, tmp_path, catalogue, 9), **IVF)
    assert summary["mode"] == "full" and "drifted" in summary["mode_reason"], summary["mode_reason"]
    retrained = _centroids(tmp_path)
    assert not np.array_equal(retrained, trained)
    assert_matches(read_lists(str(tmp_path / "neighbours")), _ivf_oracle(catalogue, retrained, K))
