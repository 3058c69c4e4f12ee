"""Exact cosine top-k in plain numpy: the kernel the neighbours job runs on every executor.

Canonical order (what "exact" means here, and what the tests' brute force computes):
    score(q, c) = float32(sum_i float64(u_q[i]) * float64(u_c[i]))  with u = normalise(x)
    rank by score descending, then by candidate index ascending (indices follow item_id order).

Per block of queries, so that BLAS does the heavy lifting and ties stay deterministic:
1. Select in float32. Matmul against the candidates in column sub-blocks; each row keeps a small
   pool (k + POOL_MARGIN) of its best float32 scores. Only scores within ``tolerance(d)`` of the
   row's running k-th best can matter, and finding them is the cost that decides the speed:
   ``argpartition`` on every sub-block costs more than the matmul, and even a comparison plus
   ``np.nonzero`` over every score costs ~20% of it. Instead the maxima of 64 column groups
   (one vectorised pass) say which few groups can hold a survivor, and only those are compared
   (bench/neighbours.py, kernel section). A row's first sub-block sets its threshold from the
   k-th largest of its group maxima.
2. Rescore exactly, once. The pool entries within ``tolerance(d)`` of the k-th best (usually k)
   are rescored in float64 (products of float32 are exact in float64, summed row by row in one
   fixed order), so identical vectors score bit-identically wherever they sit, and the canonical
   order decides. A row whose pool overflowed with near-ties (more than POOL_MARGIN candidates
   within the tolerance, e.g. many duplicate vectors) is redone by ``_topk_exact``, which keeps
   canonical scores all along.

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
# Survivor pairs rescored at once in float64: small enough that the copies stay in cache.
RESCORE_PAIRS = 2048
# Float32 pool slots per row beyond k: room for near-ties before a row needs the exact path.
POOL_MARGIN = 8
# Columns per group whose maximum is checked before looking at the group's scores one by one.
GROUP = 64
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
        # Each pair is one contiguous row of exact float64 products, summed by the same loop in
        # the same order wherever the pair sits: identical vectors get identical scores.
        wide = np.einsum("ij,ij->i", queries[r].astype(np.float64), candidates[c].astype(np.float64))
        out[start:start + RESCORE_PAIRS] = wide.astype(np.float32)
    return out


_NO_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)


def _order_keys(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """uint64 keys whose ascending order is the canonical order: score descending (high 32 bits,
    float32 bits mapped to an order-preserving integer; -0.0 counts as 0.0), then id ascending."""
    if len(ids) and (ids.min() < 0 or ids.max() >= 2 ** 32):
        raise ValueError("candidate indices must be in [0, 2**32)")
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.uint32).astype(np.uint64)
    ordered = np.where(bits & 0x80000000, ~bits & 0xFFFFFFFF, bits | 0x80000000)
    return ((0xFFFFFFFF - ordered) << np.uint64(32)) | ids.astype(np.uint64)


def _from_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ordered = 0xFFFFFFFF - (keys >> np.uint64(32))
    bits = np.where(ordered & 0x80000000, ordered & 0x7FFFFFFF, ~ordered & 0xFFFFFFFF)
    return bits.astype(np.uint32).view(np.float32), (keys & 0xFFFFFFFF).astype(np.int64)


def keep_best(rows: np.ndarray, ids: np.ndarray, scores: np.ndarray, n_rows: int, k: int):
    """Per row, the k best (row, id, score) entries in canonical order, as (n_rows, k) arrays.

    One sortable integer per entry, laid out row by row and sorted along the rows (a vectorised
    sort of short rows): ten times faster than a lexsort over all entries."""
    best_s = np.full((n_rows, k), EMPTY_SCORE, dtype=np.float32)
    best_i = np.full((n_rows, k), EMPTY_ID, dtype=np.int64)
    if len(rows) == 0:
        return best_s, best_i
    if len(rows) > 1 and (rows[1:] < rows[:-1]).any():
        order = np.argsort(rows, kind="stable")
        rows, ids, scores = rows[order], ids[order], scores[order]
    counts = np.bincount(rows, minlength=n_rows)
    slot = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    keys = np.full((n_rows, max(int(counts.max()), k)), _NO_KEY)
    keys[rows, slot] = _order_keys(scores, ids)
    keys.sort(axis=1)
    top = keys[:, :k]
    present = top != _NO_KEY
    best_s[present], best_i[present] = _from_keys(top[present])
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


def _prepare(queries, candidates, k: int, min_score: Optional[float]):
    """Shared start of both kernels: contiguous float32 inputs, empty (b, k) results, the float32
    error bound ``eps`` and the selection floor under ``min_score``."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    candidates = np.ascontiguousarray(candidates, dtype=np.float32)
    best_s = np.full((len(queries), k), EMPTY_SCORE, dtype=np.float32)
    best_i = np.full((len(queries), k), EMPTY_ID, dtype=np.int64)
    eps = np.float32(tolerance(queries.shape[1]))
    floor = np.float32(-np.inf if min_score is None else min_score - eps)
    return queries, candidates, best_s, best_i, eps, floor


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
    queries, candidates, best_s, best_i, eps, floor = _prepare(queries, candidates, k, min_score)
    b = len(queries)
    if b == 0 or len(candidates) == 0:
        return best_s, best_i
    size = k + POOL_MARGIN
    pool_s = np.full((b, size), EMPTY_SCORE, dtype=np.float32)  # float32 scores, best first
    pool_i = np.full((b, size), EMPTY_ID, dtype=np.int64)
    for start, scores in _sub_blocks(queries, candidates, sub_block, self_index):
        maxima = _group_maxima(scores)
        threshold = _threshold(scores, maxima, pool_s[:, k - 1], eps, floor, k)
        rows, cols = _survivors(scores, maxima, threshold)
        if self_index is not None:
            not_self = cols + start != self_index[rows]
            rows, cols = rows[not_self], cols[not_self]
        if len(rows) == 0:
            continue
        kept = pool_i != EMPTY_ID
        pool_s, pool_i = keep_best(
            np.concatenate([np.nonzero(kept)[0], rows]),
            np.concatenate([pool_i[kept], cols.astype(np.int64) + start]),
            np.concatenate([pool_s[kept], scores[rows, cols]]),
            b, size,
        )
    # Everything that can be in the canonical top-k has a float32 score >= bound.
    bound = np.maximum(pool_s[:, k - 1] - eps, floor)
    overflow = (pool_i[:, -1] != EMPTY_ID) & (pool_s[:, -1] >= bound)
    rows, slots = np.nonzero((pool_i != EMPTY_ID) & (pool_s >= bound[:, None]) & ~overflow[:, None])
    cols = pool_i[rows, slots]
    exact = exact_scores(queries, candidates, rows, cols)
    if min_score is not None:
        ok = exact >= np.float32(min_score)
        rows, cols, exact = rows[ok], cols[ok], exact[ok]
    best_s, best_i = keep_best(rows, cols, exact, b, k)
    if overflow.any():
        redo = np.flatnonzero(overflow)
        best_s[redo], best_i[redo] = _topk_exact(
            queries[redo], candidates, k, self_index=None if self_index is None else self_index[redo],
            min_score=min_score, sub_block=sub_block)
    present = best_i != EMPTY_ID
    best_i[present] += offset
    return best_s, best_i


def _sub_blocks(queries, candidates, sub_block: int, self_index):
    """(first column, float32 scores) per column sub-block; a query's own column is -inf. The
    scores live in one reused buffer (a fresh 16 MB array per sub-block costs page faults)."""
    b, m = len(queries), len(candidates)
    buffer = np.empty((b, min(sub_block, m)), dtype=np.float32)
    all_rows = np.arange(b)
    for start in range(0, m, sub_block):
        stop = min(start + sub_block, m)
        if stop - start == buffer.shape[1]:
            scores = np.matmul(queries, candidates[start:stop].T, out=buffer)
        else:
            scores = queries @ candidates[start:stop].T
        if self_index is not None:
            inside = (self_index >= start) & (self_index < stop)
            scores[all_rows[inside], self_index[inside] - start] = -np.inf
        yield start, scores


def _group_maxima(scores: np.ndarray) -> Optional[np.ndarray]:
    """(b, width // GROUP) maxima of the column groups j, j + g, j + 2g, ... (g = width // GROUP):
    one reduction over whole contiguous rows, far cheaper than comparing every score. None when
    the sub-block is too narrow or ragged for groups."""
    b, width = scores.shape
    if width % GROUP or width < 4 * GROUP:
        return None
    return np.maximum.reduce(scores.reshape(b, GROUP, width // GROUP), axis=1)


def _threshold(scores, maxima, kth, eps, floor, k: int) -> np.ndarray:
    """Per row, the lowest score of this sub-block that can still matter: the running k-th best
    minus the tolerance, or for rows without k yet, a lower bound of this sub-block's own k-th
    best minus it. With groups, that bound is the k-th largest group maximum (k groups hold a
    score at least that high), which costs a partition of 64 values instead of 4096."""
    threshold = np.maximum(kth - eps, floor)
    unfilled = np.flatnonzero(kth == EMPTY_SCORE)
    source = maxima if maxima is not None and maxima.shape[1] >= k else scores
    width = source.shape[1]
    if len(unfilled) and width > k:
        # Self is -inf, so it never raises the bound.
        own = np.partition(source[unfilled], width - k, axis=1)[:, width - k]
        threshold[unfilled] = np.maximum(threshold[unfilled], own - eps)
    return threshold


def _survivors(scores: np.ndarray, maxima: Optional[np.ndarray], threshold: np.ndarray):
    """(rows, columns) where scores >= threshold[row]. Survivors are rare: only the members of
    the groups whose maximum passes are compared one by one."""
    if maxima is None:
        return np.nonzero(scores >= threshold[:, None])
    b, width = scores.shape
    g = width // GROUP
    hit_rows, hit_groups = np.nonzero(maxima >= threshold[:, None])
    members = scores.reshape(b, GROUP, g)[hit_rows, :, hit_groups]  # (hits, GROUP)
    hit, member = np.nonzero(members >= threshold[hit_rows, None])
    return hit_rows[hit], member * g + hit_groups[hit]


def _topk_exact(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    *,
    self_index: Optional[np.ndarray] = None,
    min_score: Optional[float] = None,
    sub_block: int = SUB_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """``topk_block`` keeping canonical (float64-rescored) scores all along: every survivor of
    every sub-block is rescored. Slower, but never short of room for ties."""
    queries, candidates, best_s, best_i, eps, floor = _prepare(queries, candidates, k, min_score)
    b = len(queries)
    if b == 0 or len(candidates) == 0:
        return best_s, best_i
    for start, scores in _sub_blocks(queries, candidates, sub_block, self_index):
        maxima = _group_maxima(scores)
        threshold = _threshold(scores, maxima, best_s[:, k - 1], eps, floor, k)
        rows, cols = _survivors(scores, maxima, threshold)
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
    return best_s, best_i


def self_positions(query_ids: np.ndarray, candidate_ids: np.ndarray) -> np.ndarray:
    """Position of each query id in the sorted ``candidate_ids``, or -1 where it is not there."""
    query_ids = np.asarray(query_ids, dtype=object)
    if len(candidate_ids) == 0:
        return np.full(len(query_ids), -1, dtype=np.int64)
    pos = np.searchsorted(candidate_ids, query_ids)
    clipped = np.minimum(pos, len(candidate_ids) - 1)
    return np.where(candidate_ids[clipped] == query_ids, clipped, -1).astype(np.int64)
