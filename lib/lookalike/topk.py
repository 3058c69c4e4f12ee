"""Exact cosine top-k in plain numpy: the kernel the neighbours job runs on every executor.

Canonical order (what "exact" means here, and what the tests' brute force computes):
    score(q, c) = float32(sum_i float64(u_q[i]) * float64(u_c[i]))  with u = normalise(x)
    rank by score descending, then by candidate index ascending (indices follow item_id order).

Two stages per block of queries, so that BLAS does the heavy lifting and ties stay deterministic:
1. float32 matmul against the candidates in column sub-blocks. A running k-th best score per row
   gives a threshold; only columns within ``tolerance(d)`` of it survive (``np.nonzero`` over a
   comparison costs ~2 ns per score; ``argpartition`` on every sub-block costs more than the
   matmul itself, see bench/neighbours.py). Only a row's first sub-block needs ``np.partition``.
2. The few survivors are rescored in float64 (products of float32 are exact in float64, summed
   row by row in a fixed order), so identical vectors score bit-identically wherever they sit,
   and the canonical order decides.

``tolerance(d)`` bounds the float32 dot-product error of unit vectors (d * 2**-24 per score,
twice, plus rounding of the canonical score), so no true top-k candidate is ever dropped.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# Scores of padding slots (fewer than k neighbours) and their ids.
EMPTY_SCORE = np.float32(-np.inf)
EMPTY_ID = -1
# Columns scored per matmul; measured best between 2048 and 8192 (bench/neighbours.py --kernel).
SUB_BLOCK = 4096
# Survivor pairs rescored at once in float64 (bounds the temporary float64 copies).
RESCORE_PAIRS = 8192
_U = 2.0 ** -24


def tolerance(dim: int) -> float:
    """Stage-1 margin: a float32 score may be off by dim*u; a candidate and the running k-th best
    may be off in opposite directions; plus the float32 rounding of the canonical score."""
    return float((2 * dim + 8) * _U)


def normalise(vectors) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit L2 norm as float32, and a mask of the rows that could be (finite values
    and a non-zero norm). Invalid rows come back as zeros."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    valid = np.isfinite(x).all(axis=1) & np.isfinite(norms) & (norms > 0)
    unit = np.zeros(x.shape, dtype=np.float32)
    unit[valid] = (x[valid] / norms[valid, None]).astype(np.float32)
    return unit, valid


def exact_scores(queries: np.ndarray, candidates: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Canonical scores of the pairs (queries[rows[i]], candidates[cols[i]]) as float32."""
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), RESCORE_PAIRS):
        r, c = rows[start:start + RESCORE_PAIRS], cols[start:start + RESCORE_PAIRS]
        products = queries[r].astype(np.float64) * candidates[c].astype(np.float64)
        # A C-contiguous row sum has one summation order for every row: position-independent.
        out[start:start + RESCORE_PAIRS] = products.sum(axis=1).astype(np.float32)
    return out


def keep_best(rows: np.ndarray, ids: np.ndarray, scores: np.ndarray, n_rows: int, k: int):
    """Per row, the k best (row, id, score) entries in canonical order, as (n_rows, k) arrays."""
    best_s = np.full((n_rows, k), EMPTY_SCORE, dtype=np.float32)
    best_i = np.full((n_rows, k), EMPTY_ID, dtype=np.int64)
    if len(rows) == 0:
        return best_s, best_i
    order = np.lexsort((ids, -scores, rows))
    rows, ids, scores = rows[order], ids[order], scores[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    slot = np.arange(len(rows)) - starts[rows]
    keep = slot < k
    best_s[rows[keep], slot[keep]] = scores[keep]
    best_i[rows[keep], slot[keep]] = ids[keep]
    return best_s, best_i


def merge(scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-chunk top-k lists of the same queries (ids already offset to global indices, as
    in faiss contrib/exhaustive_search.py) into one top-k list in canonical order."""
    all_s = np.concatenate([np.asarray(s, dtype=np.float32) for s in scores], axis=1)
    all_i = np.concatenate([np.asarray(i, dtype=np.int64) for i in ids], axis=1)
    n_rows = all_s.shape[0]
    rows = np.repeat(np.arange(n_rows), all_s.shape[1])
    flat_s, flat_i = all_s.ravel(), all_i.ravel()
    present = flat_i != EMPTY_ID
    return keep_best(rows[present], flat_i[present], flat_s[present], n_rows, k)


def topk_block(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    *,
    self_index: Optional[np.ndarray] = None,
    offset: int = 0,
    min_score: Optional[float] = None,
    sub_block: int = SUB_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k candidates of each query in canonical order.

    queries (b, d) and candidates (m, d) are unit float32 rows (``normalise``). ``self_index[r]``
    is the position of query r among the candidates, or -1: that column is never returned.
    Returns (scores float32 (b, k), ids int64 (b, k)) with ids = offset + column; rows with fewer
    than k neighbours are padded with EMPTY_SCORE / EMPTY_ID. Holds at most b x sub_block scores.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    candidates = np.ascontiguousarray(candidates, dtype=np.float32)
    b, m = len(queries), len(candidates)
    best_s = np.full((b, k), EMPTY_SCORE, dtype=np.float32)
    best_i = np.full((b, k), EMPTY_ID, dtype=np.int64)
    if b == 0 or m == 0:
        return best_s, best_i
    eps = np.float32(tolerance(queries.shape[1]))
    floor = np.float32(-np.inf if min_score is None else min_score - eps)
    all_rows = np.arange(b)
    for start in range(0, m, sub_block):
        stop = min(start + sub_block, m)
        width = stop - start
        scores = queries @ candidates[start:stop].T
        if self_index is not None:
            inside = (self_index >= start) & (self_index < stop)
            scores[all_rows[inside], self_index[inside] - start] = -np.inf
        threshold = np.maximum(best_s[:, k - 1] - eps, floor)
        unfilled = np.flatnonzero(best_s[:, k - 1] == EMPTY_SCORE)
        if len(unfilled) and width > k:
            # Rows without k neighbours yet: their k-th best score in this sub-block bounds what
            # can enter (self is -inf, so it never raises the bound).
            kth = np.partition(scores[unfilled], width - k, axis=1)[:, width - k]
            threshold[unfilled] = np.maximum(threshold[unfilled], kth - eps)
        rows, cols = np.nonzero(scores >= threshold[:, None])
        if self_index is not None:
            not_self = cols + start != self_index[rows]
            rows, cols = rows[not_self], cols[not_self]
        if len(rows) == 0:
            continue
        exact = exact_scores(queries, candidates, rows, cols + start)
        if min_score is not None:
            ok = exact >= np.float32(min_score)
            rows, cols, exact = rows[ok], cols[ok], exact[ok]
        filled = best_i != EMPTY_ID
        best_s, best_i = keep_best(
            np.concatenate([np.nonzero(filled)[0], rows]),
            np.concatenate([best_i[filled], cols.astype(np.int64) + start]),
            np.concatenate([best_s[filled], exact]),
            b, k,
        )
    present = best_i != EMPTY_ID
    best_i[present] += offset
    return best_s, best_i


def self_positions(query_ids: np.ndarray, candidate_ids: np.ndarray) -> np.ndarray:
    """Position of each query id in the sorted ``candidate_ids``, or -1 where it is not there."""
    query_ids = np.asarray(query_ids, dtype=object)
    if len(candidate_ids) == 0:
        return np.full(len(query_ids), -1, dtype=np.int64)
    pos = np.searchsorted(candidate_ids, query_ids)
    clipped = np.minimum(pos, len(candidate_ids) - 1)
    return np.where(candidate_ids[clipped] == query_ids, clipped, -1).astype(np.int64)
