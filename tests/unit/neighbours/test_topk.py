"""The numpy kernel (lookalike.neighbours.topk) against brute force: exact ids and ranks, scores to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.neighbours import pool, topk
from tests.support.brute_force import brute_force, random_vectors
from tests.support.unit_brute_force import brute_force_queries


def kernel_all(vectors, k, chunk_rows=None, block_rows=64, sub_block=topk.SUB_BLOCK, candidates=None, min_score=None):
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
        q = query_index[qs : qs + block_rows]
        parts_s, parts_i = [], []
        for cs in range(0, max(1, len(cand_index)), chunk_rows):
            ids = cand_index[cs : cs + chunk_rows]
            self_index = topk.self_positions(q.astype(object), ids.astype(object))
            s, i = topk.topk_block(
                unit[q],
                cand_vectors[cs : cs + chunk_rows],
                k,
                self_index=self_index,
                offset=cs,
                min_score=min_score,
                sub_block=sub_block,
            )
            parts_s.append(s)
            parts_i.append(i)
        s, i = topk.merge(parts_s, parts_i, k)
        for row, item in enumerate(q):
            got = [(int(cand_index[j]), float(v)) for j, v in zip(i[row], s[row], strict=False) if j != topk.EMPTY_ID]
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


@pytest.mark.parametrize(
    "n,dim,k,block_rows,sub_block,chunk_rows",
    [
        (200, 16, 5, 64, 4096, None),  # one chunk, one sub-block
        (301, 32, 10, 37, 50, None),  # many sub-blocks: the threshold path
        (257, 8, 7, 100, 16, 60),  # several chunks merged with offsets, ragged everything
        (700, 32, 10, 128, 256, None),  # sub-blocks of 4 x GROUP columns: the grouped selection
        (650, 16, 3, 200, 320, 300),  # grouped selection, chunks, and a ragged last sub-block
    ],
)
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
    assert [n for n, _ in got[17][: len(copies)]] == copies


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
    parts = [
        topk.topk_block(
            q,
            unit[s : s + 25],
            5,
            offset=s,
            self_index=topk.self_positions(
                np.arange(20).astype(object), np.arange(s, s + 25)[: len(unit[s : s + 25])].astype(object)
            ),
        )
        for s in range(0, 90, 25)
    ]
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
    exact_path = pool.topk_exact

    def spy(queries, *args, **kwargs):
        redone.append(len(queries))
        return exact_path(queries, *args, **kwargs)

    monkeypatch.setattr(pool, "topk_exact", spy)
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


# ---------------------------------------------------------------------------------------------
# topk_pair: one matmul per sub-block, both directions of an off-diagonal block


def pair_oracle(vectors, b, k, min_score=None):
    """Brute force over the block queries = rows [0, b), candidates = rows [b, n): per query its
    best candidates, per candidate its best queries, as {index: [(index, score), ...]}. A row of
    the block is valid when its vector is; the rest of the matrix does not exist for the block.
    (brute_force's oracle for the asked queries only: tests/support/unit_brute_force.py.)"""
    n = len(vectors)
    rows = brute_force_queries(vectors, k, range(b), range(b, n), min_score=min_score)
    cols = brute_force_queries(vectors, k, range(b, n), range(b), min_score=min_score)
    return rows, cols


@pytest.mark.parametrize("seed,n,b,k,min_score", [(0, 90, 30, 5, None), (1, 120, 64, 9, 0.1), (2, 40, 1, 50, None)])
def test_restricted_oracle_equals_brute_force(seed, n, b, k, min_score):
    """The pair tests' oracle (brute force for the asked queries only) is brute_force's answer,
    ties, invalid vectors and the score floor included."""
    x = random_vectors(n, 8, seed=seed, duplicates=n // 4)
    x[[2, n - 1]] = 0
    x[5, 1] = np.nan
    for queries, candidates in ((range(b), range(b, n)), (range(b, n), range(b))):
        full = oracle(x, k, candidates=candidates, min_score=min_score)
        assert brute_force_queries(x, k, queries, candidates, min_score=min_score) == {
            q: v for q, v in full.items() if q in queries
        }


def pair_kernel(vectors, b, k, **kw):
    """topk_pair on the same block, in the oracle's form (ids mapped back to global indices with
    offset = b, query_offset = 0), plus the raw arrays."""
    unit, valid = topk.normalise(vectors)
    (rs, ri), (cs, ci) = topk.topk_pair(unit[:b], unit[b:], k, offset=b, query_offset=0, **kw)

    def table(scores, ids, first, ok):
        out = {}
        for r in range(len(ids)):
            got = [(int(j), float(s)) for j, s in zip(ids[r], scores[r], strict=False) if j != topk.EMPTY_ID]
            if got and ok[first + r]:
                out[first + r] = got
        return out

    return (table(rs, ri, 0, valid), table(cs, ci, b, valid)), ((rs, ri), (cs, ci))


def assert_same_pair(got: dict, want: dict):
    """Ids and ranks exactly, scores to 1e-6."""
    assert sorted(got) == sorted(want)
    for item, expected in want.items():
        assert [n for n, _ in got[item]] == [n for n, _ in expected], f"item {item}"
        np.testing.assert_allclose([s for _, s in got[item]], [s for _, s in expected], atol=1e-6, rtol=0)


def check_pair(x, b, k, sub_block=topk.SUB_BLOCK, min_score=None):
    """topk_pair against brute force on both sides, and against topk_block in both directions:
    the row side equals topk_block(queries, candidates), the column side equals
    topk_block(candidates, queries) bit for bit, and a pair found by both sides scores the same."""
    (rows, cols), ((rs, ri), (cs, ci)) = pair_kernel(x, b, k, sub_block=sub_block, min_score=min_score)
    want_rows, want_cols = pair_oracle(x, b, k, min_score=min_score)
    assert_same_pair(rows, want_rows)
    assert_same_pair(cols, want_cols)
    unit, _ = topk.normalise(x)
    bs, bi = topk.topk_block(unit[:b], unit[b:], k, offset=b, min_score=min_score, sub_block=sub_block)
    np.testing.assert_array_equal(ri, bi)
    np.testing.assert_array_equal(rs, bs)
    ts, ti = topk.topk_block(unit[b:], unit[:b], k, offset=0, min_score=min_score, sub_block=sub_block)
    np.testing.assert_array_equal(ci, ti)
    np.testing.assert_array_equal(cs.view(np.uint32), ts.view(np.uint32))
    row_scores = {(q, int(j)): s for q in range(b) for j, s in zip(ri[q], rs[q], strict=False) if j != topk.EMPTY_ID}
    for c in range(len(ci)):
        for q, s in zip(ci[c], cs[c], strict=False):
            if (int(q), b + c) in row_scores:
                assert row_scores[int(q), b + c].view(np.uint32) == s.view(np.uint32)
    return rs, ri, cs, ci


# Blocks of every kind for the column side (COLUMN_GROUP = 16 rows a group): groups and the
# threshold from their maxima (b = 64, 256), the same with leftover rows compared one by one
# (b = 100, 70, 250), groups shrunk to have k of them (b = 128 and 100 with k = 9: 8 rows a
# group; b = 64 with k = 20: 2 rows), too few rows for groups (b = 37, 16).
@pytest.mark.parametrize(
    "seed,b,k,sub_block",
    [
        (0, 64, 2, 4096),
        (1, 100, 5, 256),
        (2, 128, 9, 50),
        (3, 37, 2, 320),
        (4, 70, 3, 7),
        (5, 16, 15, 64),
        (6, 250, 10, 256),
        (7, 256, 1, 300),
        (8, 100, 9, 128),
        (9, 64, 20, 64),
    ],
)
def test_pair_matches_brute_force_random(seed, b, k, sub_block):
    rng = np.random.default_rng(100 + seed)
    dim = int(rng.integers(3, 65))
    n = b + int(rng.integers(150, 500))
    x = random_vectors(n, dim, seed=seed, duplicates=n // 5)
    # Copies across the block boundary, so both sides see exact ties.
    x[[3, b + 5, b + 40, n - 1]] = x[b + 11]
    check_pair(x, b, k, sub_block=sub_block, min_score=None if seed % 2 else 0.05)


@pytest.mark.parametrize(
    "b,m,k,sub_block",
    [
        (1, 1, 1, 4096),  # a single pair
        (1, 30, 5, 7),  # one query: each column has one candidate row
        (30, 1, 5, 7),  # one candidate
        (5, 9, 12, 4),  # k larger than both sides: everything, padded
        (80, 11, 20, 3),  # k >= m on the row side, grouped column side
        (64, 300, 64, 100),  # k = b on the column side
    ],
)
def test_pair_tiny_and_padded(b, m, k, sub_block):
    x = random_vectors(b + m, 6, seed=b * 31 + m)
    rs, ri, cs, ci = check_pair(x, b, k, sub_block=sub_block)
    assert ri.shape == (b, k) and ci.shape == (m, k)
    assert ((ri != topk.EMPTY_ID).sum(axis=1) == min(k, m)).all()
    assert ((ci != topk.EMPTY_ID).sum(axis=1) == min(k, b)).all()
    assert (rs[ri == topk.EMPTY_ID] == topk.EMPTY_SCORE).all()
    assert (cs[ci == topk.EMPTY_ID] == topk.EMPTY_SCORE).all()


def test_pair_min_score_leaves_short_lists():
    x = random_vectors(400, 12, seed=21)
    rs, ri, cs, ci = check_pair(x, 128, 6, sub_block=64, min_score=0.5)
    assert (cs[ci != topk.EMPTY_ID] >= np.float32(0.5)).all()
    assert (rs[ri != topk.EMPTY_ID] >= np.float32(0.5)).all()
    assert (ci == topk.EMPTY_ID).any() and (ri == topk.EMPTY_ID).any()


@pytest.mark.parametrize("side", ["rows", "columns"])
def test_pair_min_score_one_step_above_a_score(side):
    # The float32 selection keeps scores down to min_score - tolerance; only the exact rescoring
    # can drop a pair whose canonical score is one float32 step below min_score.
    x = random_vectors(300, 12, seed=23)
    b, k = 96, 4
    want_rows, want_cols = pair_oracle(x, b, k)
    lists = want_rows if side == "rows" else want_cols
    item = sorted(lists)[7]
    kth = np.float32(lists[item][k - 1][1])
    # At the k-th score it stays; one step above, the list loses its last entry.
    check_pair(x, b, k, sub_block=64, min_score=float(kth))
    rs, ri, cs, ci = check_pair(x, b, k, sub_block=64, min_score=float(np.nextafter(kth, np.float32(np.inf))))
    ids = ri[item] if side == "rows" else ci[item - b]
    assert (ids != topk.EMPTY_ID).sum() == k - 1


def test_pair_close_scores_clustered_grouped_blocks():
    # Groups on both sides (sub-blocks of 4 x GROUP columns, b a multiple of COLUMN_GROUP).
    x = random_vectors(1100, 48, seed=4, clusters=3)
    check_pair(x, 256, 10, sub_block=256)


def test_pair_offsets():
    x = random_vectors(60, 8, seed=6)
    unit, _ = topk.normalise(x)
    (rs, ri), (cs, ci) = topk.topk_pair(unit[:20], unit[20:], 4, offset=1000, query_offset=500)
    (rs0, ri0), (cs0, ci0) = topk.topk_pair(unit[:20], unit[20:], 4)
    np.testing.assert_array_equal(ri, ri0 + 1000)
    np.testing.assert_array_equal(ci, ci0 + 500)
    assert ri0.min() >= 0 and ri0.max() < 40 and ci0.min() >= 0 and ci0.max() < 20
    (es, ei), (fs, fi) = topk.topk_pair(unit[:0], unit[20:], 4)
    assert ei.shape == (0, 4) and (fi == topk.EMPTY_ID).all() and fi.shape == (40, 4)


def test_pair_overflow_with_many_ties_takes_the_exact_path_on_both_sides(monkeypatch):
    x = random_vectors(500, 16, seed=9)
    b = 192
    x[::13] = x[1]  # 39 copies, on both sides of the block: far more near-ties than POOL_MARGIN
    redone = []
    exact_path = pool.topk_exact

    def spy(queries, candidates, *args, **kwargs):
        redone.append((len(queries), len(candidates)))
        return exact_path(queries, candidates, *args, **kwargs)

    monkeypatch.setattr(pool, "topk_exact", spy)
    rs, ri, cs, ci = check_pair(x, b, 5, sub_block=64)
    copies = np.append(np.arange(0, 500, 13), 1)
    # Rows are redone against the candidates, then columns against the queries; every copy's
    # pool overflowed (and any other whose top 5 reach the copies).
    (rows_redone, against_candidates), (cols_redone, against_queries) = redone[:2]
    assert against_candidates == 500 - b and against_queries == b
    assert rows_redone >= (copies < b).sum() and cols_redone >= (copies >= b).sum()
    # A copy's best neighbours on the other side are the copies there, smallest index first.
    first_queries = np.sort(copies[copies < b])[:5]
    assert (ci[copies[copies >= b] - b] == first_queries).all()


def test_pair_one_matmul_per_sub_block(monkeypatch):
    calls = []

    class CountingNumpy:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def matmul(*args, **kwargs):
            calls.append(args[0].shape[0])
            return np.matmul(*args, **kwargs)

    x = random_vectors(300, 16, seed=12)
    unit, _ = topk.normalise(x)
    monkeypatch.setattr(pool, "np", CountingNumpy())
    topk.topk_pair(unit[:100], unit[100:], 5, sub_block=64)
    assert calls == [100] * 4  # ceil(200 / 64) sub-blocks, each scored once for both sides
    calls.clear()
    topk.topk_block(unit[:100], unit[100:], 5, sub_block=64)
    topk.topk_block(unit[100:], unit[:100], 5, sub_block=64)
    assert len(calls) == 4 + 2  # what the two directions cost without the pair kernel


def test_pair_scorer_over_many_blocks_equals_topk_block_both_ways():
    """Column pools run across query blocks and are rescored once: the same as scoring all the
    queries in one go, bit for bit, including near-ties that overflow a pool."""
    rng = np.random.default_rng(21)
    x = topk.normalise(random_vectors(400, 24, seed=21, duplicates=40))[0]
    x[rng.choice(400, 30, replace=False)] = x[5]  # 31 equal vectors: pools overflow
    queries, candidates = x[:230], x[230:]
    scorer = topk.PairScorer(candidates, 7, min_score=-0.2, sub_block=64)
    rows = [scorer.add(queries[s : s + 50], s) for s in range(0, 230, 50)]
    col_s, col_i = scorer.finish(queries)
    want_rows = topk.topk_block(queries, candidates, 7, min_score=-0.2)
    assert np.array_equal(np.concatenate([r[1] for r in rows]), want_rows[1])
    assert np.array_equal(np.concatenate([r[0] for r in rows]), want_rows[0])
    want_cols = topk.topk_block(candidates, queries, 7, min_score=-0.2)
    assert np.array_equal(col_i, want_cols[1]) and np.array_equal(col_s, want_cols[0])
    with pytest.raises(ValueError):
        scorer.add(queries[:3], 0)
