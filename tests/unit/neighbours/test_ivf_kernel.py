"""IVF's numpy core (lookalike.neighbours.ivf) against brute force: nearest lists, k-means, the lists'
statistics, scoring a group of candidates, recall. The Spark job is tested in the
Spark tier."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.neighbours import ivf
from lookalike.neighbours.topk import normalise
from tests.support.brute_force import random_vectors


def unit(x):
    return normalise(x)[0]


# --------------------------------------------------------------------------------------------
# numpy core


def test_nearest_lists_are_the_best_scoring_centroids_in_order():
    rng = np.random.default_rng(0)
    vectors, centroids = unit(rng.standard_normal((300, 8))), unit(rng.standard_normal((20, 8)))
    got = ivf.nearest(vectors, centroids, 5)
    scores = vectors.astype(np.float64) @ centroids.T.astype(np.float64)
    want = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    assert (got == want).mean() > 0.999  # float32 vs float64 may swap two near-equal centroids
    assert (ivf.nearest(vectors, centroids, 20)[:, 0] == got[:, 0]).all()


def test_kmeans_is_deterministic_converges_and_beats_its_start():
    x = unit(random_vectors(2000, 16, seed=1, clusters=10))
    a = ivf.train(x, 10, seed=3)
    assert np.array_equal(a, ivf.train(x, 10, seed=3))
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)

    def fit(centroids):  # mean cosine of each point to its nearest centroid
        return float(np.max(x @ centroids.T, axis=1).mean())

    assert fit(a) > fit(ivf.train(x, 10, iterations=0, seed=3)) + 0.02
    # A fixed point: each centroid is the normalised mean of the points assigned to it.
    lists = ivf.nearest(x, a, 1)[:, 0]
    for j in np.unique(lists):
        mean = x[lists == j].mean(axis=0)
        assert float(a[j] @ (mean / np.linalg.norm(mean))) > 0.999


def test_kmeans_never_leaves_a_list_empty():
    x = unit(random_vectors(200, 8, seed=2, clusters=3))  # 3 real clusters, 12 lists asked
    sizes = np.bincount(ivf.nearest(x, ivf.train(x, 12, seed=0), 1)[:, 0], minlength=12)
    assert (sizes > 0).sum() >= 10


def test_list_stats_say_how_uneven_the_lists_are():
    stats = ivf.list_stats(np.array([10, 10, 400, 10, 0, 10, 10, 10]))
    assert stats["lists"] == 8 and stats["empty_lists"] == 1
    assert stats["list_size"] == {"min": 0, "median": 10.0, "mean": 57.5, "p99": pytest.approx(372.7), "max": 400}
    assert stats["largest_list_vs_mean"] == round(400 / 57.5, 2)


def test_score_group_equals_brute_force_over_the_probed_lists():
    rng = np.random.default_rng(5)
    n, dim, k = 120, 12, 6
    x = random_vectors(n, dim, seed=5, duplicates=15)
    u = unit(x)
    lists = rng.integers(0, 4, n)
    group = ivf.GroupCandidates.build(lists, np.arange(n), np.array([f"c{i:03d}" for i in range(n)], dtype=object), u)
    queries = np.arange(0, n, 3)
    probes = np.stack([rng.choice(4, 2, replace=False) for _ in queries])
    best_s, best_i = ivf.score_group(group, probes, queries.astype(np.int64), u[queries], k)
    wide = u.astype(np.float64)
    for r, q in enumerate(queries):
        allowed = [j for j in range(n) if lists[j] in probes[r] and j != q]
        want = sorted(allowed, key=lambda j: (-np.float32(wide[q] @ wide[j]), j))[:k]
        assert best_i[r].tolist() == want
        assert np.allclose(best_s[r], [np.float32(wide[q] @ wide[j]) for j in want], atol=1e-6)
    assert group.ids_of(np.array([7, 0, 119])).tolist() == ["c007", "c000", "c119"]


def test_recall_counts_found_exact_neighbours():
    assert ivf.recall({"a": {1, 2}, "b": {3}}, {"a": {1, 2, 9}, "b": {3, 4}}) == pytest.approx(3 / 5)
    assert ivf.recall({}, {"a": set()}) is None


def test_score_group_with_many_exact_ties_takes_the_listwise_path_and_agrees():
    """40 copies of one vector: more near-ties than the float32 pool holds, in one list and
    across lists, so queries are redone list by list; the answer is still brute force's."""
    rng = np.random.default_rng(9)
    n, k = 90, 5
    x = random_vectors(n, 8, seed=9)
    x[rng.choice(n, 40, replace=False)] = x[0] * 2
    u = unit(x)
    lists = rng.integers(0, 3, n)
    group = ivf.GroupCandidates.build(lists, np.arange(n), np.array([f"c{i:03d}" for i in range(n)], dtype=object), u)
    probes = np.stack([rng.choice(3, 2, replace=False) for _ in range(n)])
    best_s, best_i = ivf.score_group(group, probes, np.arange(n), u, k)
    slow_s, slow_i = ivf._score_group_listwise(group, probes, np.arange(n), u, k, None)
    assert np.array_equal(best_i, slow_i) and np.array_equal(best_s, slow_s)
    wide = u.astype(np.float64)
    for q in range(n):
        allowed = [j for j in range(n) if lists[j] in probes[q] and j != q]
        assert best_i[q].tolist() == sorted(allowed, key=lambda j: (-np.float32(wide[q] @ wide[j]), j))[:k]


def test_recall_at_every_nprobe_from_the_exact_neighbours_lists_equals_ivf_by_brute_force():
    """nprobe chosen for neighbours.target_recall: the recall predicted for every nprobe from where
    the sample's exact neighbours sit equals the recall of an IVF search (brute force over the
    probed lists) at that nprobe; the fewest lists reaching the target are chosen."""
    from lookalike.neighbours.topk import normalise

    rng = np.random.default_rng(9)
    centres = rng.standard_normal((10, 12))
    unit, _ = normalise(centres[rng.integers(0, 10, 500)] + 0.6 * rng.standard_normal((500, 12)))
    nlist, k = 16, 5
    centroids = ivf.train(unit, nlist, seed=2)
    lists = ivf.nearest(unit, centroids, 1)[:, 0]
    sample = rng.choice(500, 60, replace=False)
    scores = unit[sample].astype(np.float64) @ unit.astype(np.float64).T
    scores[np.arange(60), sample] = -np.inf
    exact = [np.argsort(-row, kind="stable")[:k] for row in scores]
    ranking = ivf.nearest(unit[sample], centroids, nlist)
    predicted = ivf.recall_by_nprobe(ranking, [lists[e] for e in exact])
    assert predicted[0] == 0 and predicted[nlist] == 1
    for p in range(1, nlist + 1):
        found = 0
        for q, row in enumerate(scores):
            allowed = np.isin(lists, ranking[q, :p])
            best = np.argsort(-np.where(allowed, row, -np.inf), kind="stable")[:k]
            found += len(set(best.tolist()) & set(exact[q].tolist()))
        assert predicted[p] == pytest.approx(found / (60 * k)), p
    chosen = ivf.choose_nprobe(predicted, 0.9, cap=nlist // 4)
    lower = [predicted[p] - ivf.CONFIDENCE_Z * predicted.error[p] for p in range(nlist + 1)]
    reached = [p for p in range(1, nlist // 4 + 1) if lower[p] >= 0.9]
    assert chosen.nprobe == (reached[0] if reached else nlist // 4)
    assert chosen.target_met == bool(reached) and chosen.recall == predicted[chosen.nprobe]
    assert chosen.lower_bound == pytest.approx(lower[chosen.nprobe]) and chosen.lower_bound < chosen.recall
    capped = ivf.choose_nprobe(predicted, 1.0, cap=2)
    assert (capped.nprobe, capped.recall, capped.target_met) == (2, predicted[2], False)


def test_the_recall_error_is_the_ratio_estimators_and_vanishes_when_every_query_is_sampled():
    # Three queries with 2, 2 and 1 exact neighbours, over 3 lists ranked differently by each.
    ranking = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    neighbour_lists = [np.array([0, 1]), np.array([1, 0]), np.array([0])]
    sampled = ivf.recall_by_nprobe(ranking, neighbour_lists)
    # Neighbours found per query when probing 0..3 lists.
    found = np.array([[0, 1, 2, 2], [0, 1, 1, 2], [0, 0, 1, 1]], dtype=np.float64)
    wanted = np.array([2, 2, 1], dtype=np.float64)
    recall = found.sum(axis=0) / wanted.sum()
    np.testing.assert_allclose(sampled.recall, recall)
    by_hand = np.array(
        [
            np.sqrt(sum((found[q, p] - recall[p] * wanted[q]) ** 2 for q in range(3)) / (3 * 2)) / wanted.mean()
            for p in range(4)
        ]
    )
    np.testing.assert_allclose(sampled.error, by_hand)
    assert sampled.error[1] > 0
    # The whole population sampled: no sampling error; half of it: sqrt(1 - 1/2) of the error.
    np.testing.assert_allclose(ivf.recall_by_nprobe(ranking, neighbour_lists, population=3).error, 0)
    np.testing.assert_allclose(
        ivf.recall_by_nprobe(ranking, neighbour_lists, population=6).error, np.sqrt(0.5) * by_hand
    )
