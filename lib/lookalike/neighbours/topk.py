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

Both directions at once (``topk_pair``): scores are symmetric, so an off-diagonal block of the
item x item matrix serves the queries' top-k (its rows) and the candidates' top-k (its columns)
from one matmul per sub-block. The rows run exactly as above. Each column's pool sees all of its
query rows in that one sub-block, so its first bound comes from the maxima of strided groups of
16 rows (fewer where k needs more groups), read in place rather than from a transposed copy
(which would cost a quarter of the matmul). Rescoring uses the same ``exact_scores`` with the column's own vector first, so a column
comes out bit for bit as ``topk_block(candidates, queries)`` would return it. The matmul is
shared, but the canonical rescoring of m x k column entries is not: at d = 512 it costs about
half a matmul of the block (bench/neighbours.py, kernel section).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# Scores of padding slots (fewer than k neighbours) and their ids.
EMPTY_SCORE = np.float32(-np.inf)
EMPTY_ID = -1
# Columns scored per matmul; measured best between 2048 and 8192 (bench/neighbours.py --kernel).
SUB_BLOCK = 4096
# Float64 values per operand rescored at once (512 KB): the copies stay in cache, and reused
# buffers spare the allocator, which otherwise hands megabyte temporaries back to the OS and
# page-faults them in again (3-4x the cost of the arithmetic at d=512).
RESCORE_VALUES = 2 ** 16
# Float32 pool slots per row beyond k: room for near-ties before a row needs the exact path.
POOL_MARGIN = 8
# Columns per group whose maximum is checked before looking at the group's scores one by one.
GROUP = 64
# Query rows per group on the column side of topk_pair, where every sub-block starts its columns
# afresh from their group maxima: smaller groups than GROUP give a tighter bound and fewer
# strided reads (16 measured best of 8, 16, 32 and 64 at b = 1024, d = 512, k = 10).
COLUMN_GROUP = 16
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
    dim = queries.shape[1]
    step = max(1, RESCORE_VALUES // max(dim, 1))
    size = min(step, len(rows))
    wide_q, wide_c = np.empty((size, dim)), np.empty((size, dim))
    wide = np.empty(size)
    for start in range(0, len(rows), step):
        r, c = rows[start:start + step], cols[start:start + step]
        n = len(r)
        wide_q[:n], wide_c[:n] = queries[r], candidates[c]
        # Each pair is one contiguous row of exact float64 products, summed by the same loop in
        # the same order wherever the pair sits (the order depends on d alone): identical
        # vectors get identical scores, and so does a pair with its sides swapped.
        np.einsum("ij,ij->i", wide_q[:n], wide_c[:n], out=wide[:n])
        out[start:start + n] = wide[:n]
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
    if len(queries) == 0 or len(candidates) == 0:
        return best_s, best_i
    pool = _Pool(len(queries), k, eps, floor)
    for start, scores in _sub_blocks(queries, candidates, sub_block, self_index):
        pool.offer(scores, start, exclude=self_index)
    best_s, best_i = pool.finish(queries, candidates, min_score, sub_block, exclude=self_index)
    return best_s, _shifted(best_i, offset)


def topk_pair(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    *,
    offset: int = 0,
    query_offset: int = 0,
    min_score: Optional[float] = None,
    sub_block: int = SUB_BLOCK,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Both directions of one block of the score matrix: the top-k candidates of each query, and
    the top-k queries of each candidate, from one matmul per column sub-block.

    Returns ((row_scores (b, k) float32, row_ids (b, k) int64), (col_scores (m, k) float32,
    col_ids (m, k) int64)); row_ids are offset + candidate column, col_ids are query_offset +
    query row. Order, padding, exactness and ``min_score`` as in ``topk_block``: the column side
    equals ``topk_block(candidates, queries, k, offset=query_offset)`` bit for bit. There is no
    self exclusion: it is for off-diagonal blocks, where no query is among the candidates.
    Holds at most b x sub_block scores.
    """
    scorer = PairScorer(candidates, k, min_score=min_score, sub_block=sub_block)
    row_s, row_i = scorer.add(queries, 0)
    col_s, col_i = scorer.finish(scorer.queries_seen)
    return (row_s, _shifted(row_i, offset)), (col_s, _shifted(col_i, query_offset))


class PairScorer:
    """``topk_pair`` over many query blocks against the same candidates: each block's rows are
    finished as it comes (``add``), while the candidates' pools run across all blocks and are
    rescored once at the end (``finish``). Rescoring the m x k column entries per block would
    cost about half a matmul each time; once per task it is noise.

    Column ids are positions among all the queries added, in order (``add``'s ``first``)."""

    def __init__(self, candidates: np.ndarray, k: int, *, min_score: Optional[float] = None,
                 sub_block: int = SUB_BLOCK):
        self.candidates = np.ascontiguousarray(candidates, dtype=np.float32)
        self.k, self.min_score, self.sub_block = k, min_score, sub_block
        self.eps = np.float32(tolerance(self.candidates.shape[1]))
        self.floor = np.float32(-np.inf if min_score is None else min_score - self.eps)
        self.columns = _Pool(len(self.candidates), k, self.eps, self.floor)
        self._queries: list[np.ndarray] = []
        self.rows_added = 0

    @property
    def queries_seen(self) -> np.ndarray:
        if not self._queries:
            return np.empty((0, self.candidates.shape[1]), dtype=np.float32)
        return np.concatenate(self._queries) if len(self._queries) > 1 else self._queries[0]

    def add(self, queries: np.ndarray, first: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """The canonical top-k candidates of each query of this block (ids: candidate positions);
        the block's scores also feed the candidates' pools, as query positions first, first + 1, ..."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        first = self.rows_added if first is None else first
        b, m = len(queries), len(self.candidates)
        if b == 0 or m == 0:
            self.offer(queries, first, None, 0)
            return (np.full((b, self.k), EMPTY_SCORE, dtype=np.float32), np.full((b, self.k), EMPTY_ID, dtype=np.int64))
        rows = _Pool(b, self.k, self.eps, self.floor)
        self.offer(queries, first, rows, 0)
        return rows.finish(queries, self.candidates, self.min_score, self.sub_block)

    def offer(self, queries: np.ndarray, first: int, rows: "_Pool", row_first: int) -> None:
        """``add`` without finishing the rows: the block's scores go to the candidates' pools and
        to ``rows``, a pool of these queries whose ids are positions ``row_first`` + candidate.
        A caller scoring the queries against several candidate ranges offers them all to one pool
        and finishes it once, as ``topk_block`` does across sub-blocks."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if first != self.rows_added:
            raise ValueError(f"query blocks must come in order: expected position {self.rows_added}, got {first}")
        self._queries.append(queries)
        self.rows_added += len(queries)
        if len(queries) == 0 or len(self.candidates) == 0:
            return
        for start, scores in _sub_blocks(queries, self.candidates, self.sub_block, None):
            rows.offer(scores, row_first + start)
            self.columns.offer(scores, first, first_row=start, across=True)

    def finish(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The canonical top-k queries of each candidate; ``queries`` are all the blocks added,
        in order (the caller usually holds them anyway)."""
        if len(queries) != self.rows_added:
            raise ValueError(f"finish needs the {self.rows_added} queries added, got {len(queries)}")
        m = len(self.candidates)
        if self.rows_added == 0 or m == 0:
            return (np.full((m, self.k), EMPTY_SCORE, dtype=np.float32), np.full((m, self.k), EMPTY_ID, dtype=np.int64))
        return self.columns.finish(self.candidates, np.ascontiguousarray(queries, dtype=np.float32),
                                   self.min_score, self.sub_block)


def _shifted(ids: np.ndarray, offset: int) -> np.ndarray:
    ids[ids != EMPTY_ID] += offset
    return ids


def row_pool(n_rows: int, k: int, dim: int, min_score: Optional[float] = None) -> "_Pool":
    """An empty pool for ``n_rows`` queries, to be fed by ``offer_rows`` and ``PairScorer.offer``
    and finished with ``finish_rows``: one exact rescoring however many candidate ranges."""
    eps = np.float32(tolerance(dim))
    return _Pool(n_rows, k, eps, np.float32(-np.inf if min_score is None else min_score - eps))


def offer_rows(pool: "_Pool", queries: np.ndarray, candidates: np.ndarray, first: int,
               self_index: Optional[np.ndarray] = None, sub_block: int = SUB_BLOCK) -> None:
    """``topk_block``'s selection of ``queries`` against ``candidates`` into ``pool``, ids being
    ``first`` + column; ``self_index`` as in topk_block (relative to ``candidates``)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    exclude = None if self_index is None else np.where(self_index >= 0, self_index + first, -1)
    for start, scores in _sub_blocks(queries, candidates, sub_block, self_index):
        pool.offer(scores, first + start, exclude=exclude)


def finish_rows(pool: "_Pool", queries: np.ndarray, candidates: np.ndarray, min_score: Optional[float] = None,
                self_index: Optional[np.ndarray] = None, sub_block: int = SUB_BLOCK):
    """Canonical top-k of every pool row; ids are positions in ``candidates`` (all the ranges
    offered, as one array); ``self_index`` here relative to ``candidates``."""
    return pool.finish(np.ascontiguousarray(queries, dtype=np.float32), candidates, min_score, sub_block,
                       exclude=self_index)


class _Pool:
    """Per pool row (a query; in ``topk_pair`` also a candidate), the k + POOL_MARGIN best float32
    scores seen so far, best first, with their positions on the other side (EMPTY_ID: none)."""

    def __init__(self, n_rows: int, k: int, eps: np.float32, floor: np.float32):
        self.k, self.eps, self.floor = k, eps, floor
        self.scores = np.full((n_rows, k + POOL_MARGIN), EMPTY_SCORE, dtype=np.float32)
        self.ids = np.full((n_rows, k + POOL_MARGIN), EMPTY_ID, dtype=np.int64)

    def offer(self, scores: np.ndarray, first: int, *, first_row: int = 0, across: bool = False,
              exclude: Optional[np.ndarray] = None) -> None:
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
        if len(rows) == 0:
            return
        kept = pool_i != EMPTY_ID
        self.scores[here], self.ids[here] = keep_best(
            np.concatenate([np.nonzero(kept)[0], rows]),
            np.concatenate([pool_i[kept], others.astype(np.int64) + first]),
            np.concatenate([pool_s[kept], scores[others, rows] if across else scores[rows, others]]),
            n, self.scores.shape[1],
        )

    def finish(self, mine: np.ndarray, theirs: np.ndarray, min_score: Optional[float], sub_block: int,
               exclude: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
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
            best_s[redo], best_i[redo] = _topk_exact(
                mine[redo], theirs, k, self_index=None if exclude is None else exclude[redo],
                min_score=min_score, sub_block=sub_block)
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


def _sub_blocks(queries, candidates, sub_block: int, self_index):
    """(first column, float32 scores) per column sub-block; a query's own column is -inf. The
    scores live in one reused buffer (a fresh 16 MB array per sub-block costs page faults)."""
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


def _group_maxima(scores: np.ndarray) -> Optional[np.ndarray]:
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


def _column_group(b: int, k: int) -> int:
    """Rows per group on the column side, or 0 for no groups. A column's bound needs k groups
    (see _threshold), and every sub-block starts its columns afresh, so rather than fall back to
    partitioning whole columns, the groups shrink until there are k of them."""
    size = COLUMN_GROUP
    while size > 2 and b // size < k:
        size //= 2
    return size if b // size >= max(k, 4) else 0


def _column_maxima(scores: np.ndarray, size: int) -> Optional[np.ndarray]:
    """(width, g) maxima of the row groups i, i + g, ... (g = b // size) of the first g * size
    rows, per column; the rows left over (b not a multiple) are compared one by one. The
    reduction runs over whole contiguous rows, as on the row side."""
    if not size:
        return None
    b, width = scores.shape
    g = b // size
    lead = scores[:g * size].reshape(size, g, width)
    # Contiguous, so that partitioning and scanning it run along whole rows.
    return np.maximum.reduce(lead, axis=0).T.copy()


def _column_survivors(scores: np.ndarray, maxima: Optional[np.ndarray], size: int, threshold: np.ndarray):
    """(columns, rows) where scores >= threshold[column], columns ascending. Flat indices
    throughout: np.nonzero on 2-d arrays is several times slower."""
    b, width = scores.shape
    grouped = 0 if maxima is None else maxima.shape[1] * size
    cols, rows = np.empty(0, np.int64), np.empty(0, np.int64)
    if grouped:
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
        rows, cols = _select(scores, best_s[:, k - 1], eps, floor, k)
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
