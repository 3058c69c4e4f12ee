"""The numpy kernel (lookalike.topk) against brute force: exact ids and ranks, scores to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest

from brute_force import brute_force, random_vectors
from lookalike import topk


def kernel_all(vectors, k, chunk_rows=None, block_rows=64, sub_block=topk.SUB_BLOCK,
               candidates=None, min_score=None):
    """Every valid item's top-k the way the job does it: candidates in chunks with offset ids,
    queries in blocks, chunk results merged. Returns {index: [(index, score), ...]}."""
    unit, valid = topk.normalise(vectors)
    index = np.arange(len(vectors))
    cand = valid if candidates is None else valid & np.isin(index, candidates)
    cand_index = index[cand]
    cand_vectors = unit[cand]
    chunk_rows = chunk_rows or max(1, len(cand_index))
    query_index = index[valid]
    result = {}
    for qs in range(0, len(query_index), block_rows):
        q = query_index[qs:qs + block_rows]
        parts_s, parts_i = [], []
        for cs in range(0, max(1, len(cand_index)), chunk_rows):
            ids = cand_index[cs:cs + chunk_rows]
            self_index = topk.self_positions(q.astype(object), ids.astype(object))
            s, i = topk.topk_block(unit[q], cand_vectors[cs:cs + chunk_rows], k, self_index=self_index,
                                   offset=cs, min_score=min_score, sub_block=sub_block)
            parts_s.append(s)
            parts_i.append(i)
        s, i = topk.merge(parts_s, parts_i, k)
        for row, item in enumerate(q):
            got = [(int(cand_index[j]), float(v)) for j, v in zip(i[row], s[row]) if j != topk.EMPTY_ID]
            if got:
                result[int(item)] = got
    return result


def assert_same(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for item, expected in want.items():
        assert [n for n, _ in got[item]] == [n for n, _ in expected], f"item {item}"
        np.testing.assert_allclose([s for _, s in got[item]], [s for _, s in expected], atol=1e-5)


def oracle(vectors, k, **kw):
    return brute_force(list(range(len(vectors))), vectors, k, **kw)


def test_normalise_marks_zero_and_non_finite_rows():
    x = np.array([[3, 4], [0, 0], [np.nan, 1], [np.inf, 1], [1e-30, 0]], dtype=np.float32)
    unit, valid = topk.normalise(x)
    assert valid.tolist() == [True, False, False, False, True]
    np.testing.assert_allclose(unit[0], [0.6, 0.8], rtol=1e-7)
    np.testing.assert_allclose(unit[4], [1, 0])
    assert not unit[1:4].any()


@pytest.mark.parametrize("n,dim,k,block_rows,sub_block,chunk_rows", [
    (200, 16, 5, 64, 4096, None),     # one chunk, one sub-block
    (301, 32, 10, 37, 50, None),      # many sub-blocks: the threshold path
    (257, 8, 7, 100, 16, 60),         # several chunks merged with offsets, ragged everything
    (700, 32, 10, 128, 256, None),    # sub-blocks of 4 x GROUP columns: the grouped selection
    (650, 16, 3, 200, 320, 300),      # grouped selection, chunks, and a ragged last sub-block
])
def test_kernel_matches_brute_force_random(n, dim, k, block_rows, sub_block, chunk_rows):
    x = random_vectors(n, dim, seed=n)
    got = kernel_all(x, k, chunk_rows=chunk_rows, block_rows=block_rows, sub_block=sub_block)
    assert_same(got, oracle(x, k))


def test_kernel_ties_break_by_smaller_index_wherever_duplicates_sit():
    x = random_vectors(240, 24, seed=3, duplicates=60)
    # Many exact ties: copies of one vector at scattered positions, across chunk and block edges.
    x[[5, 77, 130, 131, 200, 239]] = x[17]
    got = kernel_all(x, 8, chunk_rows=50, block_rows=33, sub_block=23)
    want = oracle(x, 8)
    assert_same(got, want)
    # Query 17's first neighbours are all its copies (score 1), in index order.
    unit, _ = topk.normalise(x)
    copies = [j for j in range(len(x)) if j != 17 and np.array_equal(unit[j], unit[17])]
    assert {5, 77, 130, 131, 200, 239} <= set(copies)
    assert [n for n, _ in got[17][:len(copies)]] == copies


def test_kernel_close_scores_clustered():
    x = random_vectors(300, 64, seed=11, clusters=3)
    assert_same(kernel_all(x, 10, chunk_rows=70, sub_block=40), oracle(x, 10))


def test_kernel_k_at_least_n_minus_1_returns_all_others():
    x = random_vectors(40, 6, seed=5)
    x[3] = 0
    x[9, 2] = np.nan
    got = kernel_all(x, 39, chunk_rows=11, sub_block=7)
    assert_same(got, oracle(x, 39))
    assert 3 not in got and 9 not in got
    assert all(len(v) == 37 for v in got.values())
    assert all(item not in [n for n, _ in v] for item, v in got.items())


def test_kernel_candidates_and_min_score():
    x = random_vectors(150, 12, seed=8)
    candidates = list(range(0, 150, 3))
    got = kernel_all(x, 6, chunk_rows=20, sub_block=9, candidates=candidates, min_score=0.2)
    want = oracle(x, 6, candidates=candidates, min_score=0.2)
    assert_same(got, want)
    assert all(n % 3 == 0 and s >= 0.2 for v in got.values() for n, s in v)
    assert any(len(v) < 6 for v in got.values())  # the floor really cut some lists


def test_merge_offsets_and_orders_like_one_pass():
    x = random_vectors(90, 10, seed=2)
    unit, _ = topk.normalise(x)
    q = unit[:20]
    one_s, one_i = topk.topk_block(q, unit, 5, self_index=np.arange(20))
    parts = [topk.topk_block(q, unit[s:s + 25], 5, offset=s,
                             self_index=topk.self_positions(np.arange(20).astype(object),
                                                            np.arange(s, s + 25)[:len(unit[s:s + 25])].astype(object)))
             for s in range(0, 90, 25)]
    s, i = topk.merge([p[0] for p in parts], [p[1] for p in parts], 5)
    np.testing.assert_array_equal(i, one_i)
    np.testing.assert_array_equal(s, one_s)


def test_self_positions():
    cands = np.array(["a", "c", "e"], dtype=object)
    assert topk.self_positions(np.array(["c", "b", "e", "z", "a"], dtype=object), cands).tolist() == [1, -1, 2, -1, 0]
    assert topk.self_positions(np.array(["a"], dtype=object), np.array([], dtype=object)).tolist() == [-1]


def test_kernel_pool_overflow_with_many_ties_takes_the_exact_path(monkeypatch):
    x = random_vectors(400, 16, seed=9)
    x[::13] = x[1]  # 31 copies: far more near-ties than POOL_MARGIN has room for
    redone = []
    exact_path = topk._topk_exact

    def spy(queries, *args, **kwargs):
        redone.append(len(queries))
        return exact_path(queries, *args, **kwargs)

    monkeypatch.setattr(topk, "_topk_exact", spy)
    got = kernel_all(x, 5, chunk_rows=None, block_rows=100, sub_block=256)
    assert_same(got, oracle(x, 5))
    assert sum(redone) >= 31  # every copy's row overflowed its pool and was redone exactly
    unit, _ = topk.normalise(x)
    s, i = topk.topk_block(unit, unit, 5, self_index=np.arange(400))
    s2, i2 = exact_path(unit, unit, 5, self_index=np.arange(400))
    np.testing.assert_array_equal(i, i2)  # the two paths agree everywhere
    np.testing.assert_array_equal(s, s2)


def test_keep_best_orders_by_score_then_id_with_signed_zeros_and_infinities():
    rows = np.array([0, 0, 0, 0, 1, 1, 0])
    ids = np.array([5, 3, 9, 1, 4, 2, 7])
    scores = np.array([0.0, -0.0, -1.5, 2.0, -np.inf, 0.25, 2.0], dtype=np.float32)
    s, i = topk.keep_best(rows, ids, scores, 3, 4)
    assert i.tolist() == [[1, 7, 3, 5], [2, 4, -1, -1], [-1, -1, -1, -1]]
    assert s[0].tolist() == [2.0, 2.0, 0.0, 0.0] and s[1, 0] == np.float32(0.25) and s[1, 1] == -np.inf
