"""Stage 1 of the kernel (lookalike.neighbours.topk): float32 selection into per-row pools.

A ``Pool`` keeps, per row, the k + POOL_MARGIN best float32 scores seen; ``sub_blocks`` runs the
matmuls; the group-maxima selection finds the few scores of a sub-block that can still matter;
``Pool.finish`` rescores the survivors canonically and sends rows that overflowed with near-ties
to ``topk_exact``.
"""

from __future__ import annotations

import numpy as np

from lookalike.neighbours.canonical import EMPTY_ID, EMPTY_SCORE, exact_scores, keep_best, tolerance

# Columns scored per matmul; measured best between 2048 and 8192 (bench/neighbours.py --kernel).
SUB_BLOCK = 4096
# Float32 pool slots per row beyond k: room for near-ties before a row needs the exact path.
POOL_MARGIN = 8
# Columns per group whose maximum is checked before looking at the group's scores one by one.
GROUP = 64
# Query rows per group on the column side of topk_pair, where every sub-block starts its columns
# afresh from their group maxima: smaller groups than GROUP give a tighter bound and fewer
# strided reads (16 measured best of 8, 16, 32 and 64 at b = 1024, d = 512, k = 10).
COLUMN_GROUP = 16


def kernel_inputs(queries, candidates, k: int, min_score: float | None):
    """Shared start of both kernels: contiguous float32 inputs, empty (b, k) results, the float32
    error bound ``eps`` and the selection floor under ``min_score``."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    candidates = np.ascontiguousarray(candidates, dtype=np.float32)
    best_s = np.full((len(queries), k), EMPTY_SCORE, dtype=np.float32)
    best_i = np.full((len(queries), k), EMPTY_ID, dtype=np.int64)
    eps = np.float32(tolerance(queries.shape[1]))
    floor = np.float32(-np.inf if min_score is None else min_score - eps)
    return queries, candidates, best_s, best_i, eps, floor


class Pool:
    """Per pool row (a query; in ``topk_pair`` also a candidate), the k + POOL_MARGIN best float32
    scores seen so far, best first, with their positions on the other side (EMPTY_ID: none)."""

    def __init__(self, n_rows: int, k: int, eps: np.float32, floor: np.float32):
        self.k, self.eps, self.floor = k, eps, floor
        self.scores = np.full((n_rows, k + POOL_MARGIN), EMPTY_SCORE, dtype=np.float32)
        self.ids = np.full((n_rows, k + POOL_MARGIN), EMPTY_ID, dtype=np.int64)

    def offer(
        self,
        scores: np.ndarray,
        first: int,
        *,
        first_row: int = 0,
        across: bool = False,
        exclude: np.ndarray | None = None,
    ) -> None:
        """Keep what can still matter of one float32 sub-block. Pool rows first_row, ... are the
        rows of ``scores`` (``across``: its columns); the other axis holds positions first, ...
        ``exclude[row]`` is a position never kept for that row (its own), or -1."""
        n = scores.shape[1] if across else scores.shape[0]
        here = slice(first_row, first_row + n)
        pool_s, pool_i = self.scores[here], self.ids[here]
        rows, others = _select(scores, pool_s[:, self.k - 1], self.eps, self.floor, self.k, across)
        if exclude is not None:
            # Self is -inf, which survives a threshold of -inf (no floor, k not yet filled).
            keep = others + first != exclude[rows]
            rows, others = rows[keep], others[keep]
        picked = scores[others, rows] if across else scores[rows, others]
        # Pairs masked by rules (lookalike.neighbours.rules) are -inf too and must never be kept:
        # finish would rescore them into real scores.
        real = picked != -np.inf
        if not real.all():
            rows, others, picked = rows[real], others[real], picked[real]
        if len(rows) == 0:
            return
        kept = pool_i != EMPTY_ID
        self.scores[here], self.ids[here] = keep_best(
            np.concatenate([np.nonzero(kept)[0], rows]),
            np.concatenate([pool_i[kept], others.astype(np.int64) + first]),
            np.concatenate([pool_s[kept], picked]),
            n,
            self.scores.shape[1],
        )

    def finish(
        self,
        mine: np.ndarray,
        theirs: np.ndarray,
        min_score: float | None,
        sub_block: int,
        exclude: np.ndarray | None = None,
        rules=None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Canonical top-k of every pool row, ids as positions in ``theirs``: the pool entries that
        can be in it are rescored exactly, rows that overflowed with near-ties are redone. The
        pool rows' vectors are ``mine``, so both sides of ``topk_pair`` rescore a pair with its
        own side's vector first, exactly as ``topk_block`` would with that side as the queries."""
        k, pool_s, pool_i = self.k, self.scores, self.ids
        # Everything that can be in the canonical top-k has a float32 score >= bound.
        bound = np.maximum(pool_s[:, k - 1] - self.eps, self.floor)
        overflow = (pool_i[:, -1] != EMPTY_ID) & (pool_s[:, -1] >= bound)
        rows, slots = np.nonzero((pool_i != EMPTY_ID) & (pool_s >= bound[:, None]) & ~overflow[:, None])
        cols = pool_i[rows, slots]
        exact = exact_scores(mine, theirs, rows, cols)
        if min_score is not None:
            ok = exact >= np.float32(min_score)
            rows, cols, exact = rows[ok], cols[ok], exact[ok]
        best_s, best_i = keep_best(rows, cols, exact, len(pool_s), k)
        if overflow.any():
            redo = np.flatnonzero(overflow)
            best_s[redo], best_i[redo] = topk_exact(
                mine[redo],
                theirs,
                k,
                self_index=None if exclude is None else exclude[redo],
                min_score=min_score,
                sub_block=sub_block,
                rules=None if rules is None else rules.rows(redo),
            )
        return best_s, best_i


def _sub_block_bounds(m: int, sub_block: int) -> list[tuple[int, int]]:
    """Column ranges of the sub-blocks: ``sub_block`` wide, and a ragged rest cut into a part
    that is a multiple of GROUP (so that it still takes the group-maxima path) and the last few
    columns (partitions and chunks are rarely a multiple of 4096)."""
    bounds = [(start, min(start + sub_block, m)) for start in range(0, m, sub_block)]
    if len(bounds) > 1 or m >= 4 * GROUP:
        start, stop = bounds[-1]
        grouped = (stop - start) // GROUP * GROUP
        if stop - start >= 4 * GROUP and grouped < stop - start:
            bounds[-1:] = [(start, start + grouped), (start + grouped, stop)]
    return bounds


def sub_blocks(queries, candidates, sub_block: int, self_index, rules=None):
    """(first column, float32 scores) per column sub-block; a query's own column, and the pairs
    ``rules`` (lookalike.neighbours.rules) forbid, are -inf. The scores live in one reused buffer
    (a fresh 16 MB array per sub-block costs page faults)."""
    b, m = len(queries), len(candidates)
    buffer = np.empty((b, min(sub_block, m)), dtype=np.float32)
    all_rows = np.arange(b)
    for start, stop in _sub_block_bounds(m, sub_block):
        if stop - start == buffer.shape[1]:
            scores = np.matmul(queries, candidates[start:stop].T, out=buffer)
        else:
            scores = np.matmul(queries, candidates[start:stop].T)
        if self_index is not None:
            inside = (self_index >= start) & (self_index < stop)
            scores[all_rows[inside], self_index[inside] - start] = -np.inf
        if rules is not None:
            rules.mask(scores, start)
        yield start, scores


def _select(scores: np.ndarray, kth: np.ndarray, eps, floor, k: int, across: bool = False):
    """(pool rows, positions) of the scores of one sub-block that can still matter, given each
    pool row's running k-th best ``kth``. Pool rows are the rows of ``scores``, or its columns
    when ``across`` (the column side of ``topk_pair``, read in place: a transposed copy of the
    sub-block costs a quarter of its matmul)."""
    if across:
        size = _column_group(len(scores), k)
        maxima = _column_maxima(scores, size)
        threshold = _threshold(scores.T, maxima, kth, eps, floor, k)
        return _column_survivors(scores, maxima, size, threshold)
    maxima = _group_maxima(scores)
    threshold = _threshold(scores, maxima, kth, eps, floor, k)
    return _survivors(scores, maxima, threshold)


def _group_maxima(scores: np.ndarray) -> np.ndarray | None:
    """(b, width // GROUP) maxima of the column groups j, j + g, j + 2g, ... (g = width // GROUP):
    one reduction over whole contiguous rows, far cheaper than comparing every score. None when
    the sub-block is too narrow or ragged for groups."""
    b, width = scores.shape
    if width % GROUP or width < 4 * GROUP:
        return None
    return np.maximum.reduce(scores.reshape(b, GROUP, width // GROUP), axis=1)


def _threshold(scores, maxima, kth, eps, floor, k: int) -> np.ndarray:
    """Per pool row (a row of ``scores``), the lowest score of this sub-block that can still
    matter: the running k-th best minus the tolerance, or for rows without k yet, a lower bound
    of this sub-block's own k-th best minus it. With groups, that bound is the k-th largest group
    maximum (k groups hold a score at least that high), which costs a partition of 64 values
    instead of 4096."""
    threshold = np.maximum(kth - eps, floor)
    unfilled = np.flatnonzero(kth == EMPTY_SCORE)
    source = maxima if maxima is not None and maxima.shape[1] >= k else scores
    width = source.shape[1]
    if len(unfilled) and width > k:
        # Self is -inf, so it never raises the bound.
        own = np.partition(source[unfilled], width - k, axis=1)[:, width - k]
        threshold[unfilled] = np.maximum(threshold[unfilled], own - eps)
    return threshold


def _survivors(scores: np.ndarray, maxima: np.ndarray | None, threshold: np.ndarray):
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


def _column_group(b: int, k: int) -> int:
    """Rows per group on the column side, or 0 for no groups. A column's bound needs k groups
    (see _threshold), and every sub-block starts its columns afresh, so rather than fall back to
    partitioning whole columns, the groups shrink until there are k of them."""
    size = COLUMN_GROUP
    while size > 2 and b // size < k:
        size //= 2
    return size if b // size >= max(k, 4) else 0


def _column_maxima(scores: np.ndarray, size: int) -> np.ndarray | None:
    """(width, g) maxima of the row groups i, i + g, ... (g = b // size) of the first g * size
    rows, per column; the rows left over (b not a multiple) are compared one by one. The
    reduction runs over whole contiguous rows, as on the row side."""
    if not size:
        return None
    b, width = scores.shape
    g = b // size
    lead = scores[: g * size].reshape(size, g, width)
    # Contiguous, so that partitioning and scanning it run along whole rows.
    return np.maximum.reduce(lead, axis=0).T.copy()


def _column_survivors(scores: np.ndarray, maxima: np.ndarray | None, size: int, threshold: np.ndarray):
    """(columns, rows) where scores >= threshold[column], columns ascending. Flat indices
    throughout: np.nonzero on 2-d arrays is several times slower."""
    b, width = scores.shape
    grouped = 0 if maxima is None else maxima.shape[1] * size
    cols, rows = np.empty(0, np.int64), np.empty(0, np.int64)
    if maxima is not None and grouped:
        # Hits in column order, members in row order within a hit: the columns come out sorted
        # and keep_best need not sort them.
        g = maxima.shape[1]
        hit_cols, hit_groups = np.divmod(np.flatnonzero(maxima >= threshold[:, None]), g)
        members = scores[:grouped].reshape(size, g * width).T[hit_groups * width + hit_cols]  # (hits, size)
        hit, member = np.divmod(np.flatnonzero(members >= threshold[hit_cols, None]), size)
        cols, rows = hit_cols[hit], member * g + hit_groups[hit]
    if grouped < b:
        rest_rows, rest_cols = np.divmod(np.flatnonzero(scores[grouped:] >= threshold), width)
        cols, rows = np.concatenate([cols, rest_cols]), np.concatenate([rows, rest_rows + grouped])
    return cols, rows


def topk_exact(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    *,
    self_index: np.ndarray | None = None,
    min_score: float | None = None,
    sub_block: int = SUB_BLOCK,
    rules=None,
) -> tuple[np.ndarray, np.ndarray]:
    """``topk_block`` keeping canonical (float64-rescored) scores all along: every survivor of
    every sub-block is rescored. Slower, but never short of room for ties."""
    queries, candidates, best_s, best_i, eps, floor = kernel_inputs(queries, candidates, k, min_score)
    b = len(queries)
    if b == 0 or len(candidates) == 0:
        return best_s, best_i
    for start, scores in sub_blocks(queries, candidates, sub_block, self_index, rules):
        rows, cols = _select(scores, best_s[:, k - 1], eps, floor, k)
        if self_index is not None:
            not_self = cols + start != self_index[rows]
            rows, cols = rows[not_self], cols[not_self]
        if rules is not None:
            allowed = scores[rows, cols] != -np.inf
            rows, cols = rows[allowed], cols[allowed]
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
            b,
            k,
        )
    return best_s, best_i
