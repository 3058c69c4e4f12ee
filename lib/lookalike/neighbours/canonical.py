"""The canonical score and order that define an exact neighbour list (see lookalike.neighbours.topk).

    score(q, c) = float32(sum_i float64(u_q[i]) * float64(u_c[i]))  with u = normalise(x)
    rank by score descending, then by candidate index ascending (indices follow item_id order).

Everything that returns neighbours (the kernel, the Spark merge, IVF) orders through ``keep_best``
and rescores through ``exact_scores``, so the same pair gets the same score and rank everywhere.
"""

from __future__ import annotations

import numpy as np

# Scores of padding slots (fewer than k neighbours) and their ids.
EMPTY_SCORE = np.float32(-np.inf)
EMPTY_ID = -1
# Float64 values per operand rescored at once (512 KB): the copies stay in cache, and reused
# buffers spare the allocator, which otherwise hands megabyte temporaries back to the OS and
# page-faults them in again (3-4x the cost of the arithmetic at d=512).
RESCORE_VALUES = 2**16
_U = 2.0**-24


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
    dim = queries.shape[1]
    step = max(1, RESCORE_VALUES // max(dim, 1))
    size = min(step, len(rows))
    wide_q, wide_c = np.empty((size, dim)), np.empty((size, dim))
    wide = np.empty(size)
    for start in range(0, len(rows), step):
        r, c = rows[start : start + step], cols[start : start + step]
        n = len(r)
        wide_q[:n], wide_c[:n] = queries[r], candidates[c]
        # Each pair is one contiguous row of exact float64 products, summed by the same loop in
        # the same order wherever the pair sits (the order depends on d alone): identical
        # vectors get identical scores, and so does a pair with its sides swapped.
        np.einsum("ij,ij->i", wide_q[:n], wide_c[:n], out=wide[:n])
        out[start : start + n] = wide[:n]
    return out


_NO_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)


def _order_keys(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """uint64 keys whose ascending order is the canonical order: score descending (high 32 bits,
    float32 bits mapped to an order-preserving integer; -0.0 counts as 0.0), then id ascending."""
    if len(ids) and (ids.min() < 0 or ids.max() >= 2**32):
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
