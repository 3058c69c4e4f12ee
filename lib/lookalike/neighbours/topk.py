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
   within the tolerance, e.g. many duplicate vectors) is redone by ``pool.topk_exact``, which keeps
   canonical scores all along.

``tolerance(d)`` bounds the float32 dot-product error of unit vectors (d * 2**-24 per score,
twice, plus rounding of the canonical score), so no true top-k candidate is ever dropped.

Both directions at once (``topk_pair``): scores are symmetric, so an off-diagonal block of the
item x item matrix serves the queries' top-k (its rows) and the candidates' top-k (its columns)
from one matmul per sub-block. The rows run exactly as above. Each column's pool sees all of its
query rows in that one sub-block, so its first bound comes from the maxima of strided groups of
16 rows (fewer where k needs more groups), read in place rather than from a transposed copy
(which would cost a quarter of the matmul). Rescoring uses the same ``exact_scores`` with the
column's own vector first, so a column comes out bit for bit as ``topk_block(candidates,
queries)`` would return it. The matmul is
shared, but the canonical rescoring of m x k column entries is not: at d = 512 it costs about
half a matmul of the block (bench/neighbours.py, kernel section).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The canonical score and order, the pool margin and the sub-block width are part of the kernel's
# interface: its callers (the Spark stages, IVF, the tests' oracle, the benchmarks) find them here.
from lookalike.neighbours.canonical import EMPTY_ID, EMPTY_SCORE, exact_scores, keep_best, normalise, tolerance
from lookalike.neighbours.pool import POOL_MARGIN, SUB_BLOCK, Pool, kernel_inputs, sub_blocks

__all__ = [
    "EMPTY_ID",
    "EMPTY_SCORE",
    "POOL_MARGIN",
    "SUB_BLOCK",
    "PairScorer",
    "exact_scores",
    "finish_rows",
    "keep_best",
    "merge",
    "normalise",
    "offer_rows",
    "row_pool",
    "self_positions",
    "tolerance",
    "topk_block",
    "topk_pair",
]


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
    self_index: np.ndarray | None = None,
    offset: int = 0,
    min_score: float | None = None,
    sub_block: int = SUB_BLOCK,
    rules=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k candidates of each query in canonical order.

    queries (b, d) and candidates (m, d) are unit float32 rows (``normalise``). ``self_index[r]``
    is the position of query r among the candidates, or -1: that column is never returned.
    ``rules`` (lookalike.neighbours.rules.Rules of these queries and candidates) forbid pairs
    before selection, so a row still gets k allowed neighbours when there are k.
    Returns (scores float32 (b, k), ids int64 (b, k)) with ids = offset + column; rows with fewer
    than k neighbours are padded with EMPTY_SCORE / EMPTY_ID. Holds at most b x sub_block scores.
    """
    queries, candidates, best_s, best_i, eps, floor = kernel_inputs(queries, candidates, k, min_score)
    if len(queries) == 0 or len(candidates) == 0:
        return best_s, best_i
    pool = Pool(len(queries), k, eps, floor)
    for start, scores in sub_blocks(queries, candidates, sub_block, self_index, rules):
        pool.offer(scores, start, exclude=self_index)
    best_s, best_i = pool.finish(queries, candidates, min_score, sub_block, exclude=self_index, rules=rules)
    return best_s, _shifted(best_i, offset)


def topk_pair(
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    *,
    offset: int = 0,
    query_offset: int = 0,
    min_score: float | None = None,
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

    def __init__(self, candidates: np.ndarray, k: int, *, min_score: float | None = None, sub_block: int = SUB_BLOCK):
        self.candidates = np.ascontiguousarray(candidates, dtype=np.float32)
        self.k, self.min_score, self.sub_block = k, min_score, sub_block
        self.eps = np.float32(tolerance(self.candidates.shape[1]))
        self.floor = np.float32(-np.inf if min_score is None else min_score - self.eps)
        self.columns = Pool(len(self.candidates), k, self.eps, self.floor)
        self._queries: list[np.ndarray] = []
        self.rows_added = 0

    @property
    def queries_seen(self) -> np.ndarray:
        if not self._queries:
            return np.empty((0, self.candidates.shape[1]), dtype=np.float32)
        return np.concatenate(self._queries) if len(self._queries) > 1 else self._queries[0]

    def add(self, queries: np.ndarray, first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The canonical top-k candidates of each query of this block (ids: candidate positions);
        the block's scores also feed the candidates' pools, as query positions first, first + 1, ..."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        first = self.rows_added if first is None else first
        b, m = len(queries), len(self.candidates)
        if b == 0 or m == 0:
            self.offer(queries, first, None, 0)
            return (np.full((b, self.k), EMPTY_SCORE, dtype=np.float32), np.full((b, self.k), EMPTY_ID, dtype=np.int64))
        rows = Pool(b, self.k, self.eps, self.floor)
        self.offer(queries, first, rows, 0)
        return rows.finish(queries, self.candidates, self.min_score, self.sub_block)

    def offer(self, queries: np.ndarray, first: int, rows: Pool | None, row_first: int) -> None:
        """``add`` without finishing the rows: the block's scores go to the candidates' pools and
        to ``rows``, a pool of these queries whose ids are positions ``row_first`` + candidate
        (None only for a block with no queries or no candidates: nothing to score).
        A caller scoring the queries against several candidate ranges offers them all to one pool
        and finishes it once, as ``topk_block`` does across sub-blocks."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if first != self.rows_added:
            raise ValueError(f"query blocks must come in order: expected position {self.rows_added}, got {first}")
        self._queries.append(queries)
        self.rows_added += len(queries)
        if len(queries) == 0 or len(self.candidates) == 0:
            return
        if rows is None:
            raise ValueError("a block with queries and candidates needs a pool for its rows")
        for start, scores in sub_blocks(queries, self.candidates, self.sub_block, None):
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
        return self.columns.finish(
            self.candidates, np.ascontiguousarray(queries, dtype=np.float32), self.min_score, self.sub_block
        )


def _shifted(ids: np.ndarray, offset: int) -> np.ndarray:
    ids[ids != EMPTY_ID] += offset
    return ids


def row_pool(n_rows: int, k: int, dim: int, min_score: float | None = None) -> Pool:
    """An empty pool for ``n_rows`` queries, to be fed by ``offer_rows`` and ``PairScorer.offer``
    and finished with ``finish_rows``: one exact rescoring however many candidate ranges."""
    eps = np.float32(tolerance(dim))
    return Pool(n_rows, k, eps, np.float32(-np.inf if min_score is None else min_score - eps))


def offer_rows(
    pool: Pool,
    queries: np.ndarray,
    candidates: np.ndarray,
    first: int,
    self_index: np.ndarray | None = None,
    sub_block: int = SUB_BLOCK,
) -> None:
    """``topk_block``'s selection of ``queries`` against ``candidates`` into ``pool``, ids being
    ``first`` + column; ``self_index`` as in topk_block (relative to ``candidates``)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    exclude = None if self_index is None else np.where(self_index >= 0, self_index + first, -1)
    for start, scores in sub_blocks(queries, candidates, sub_block, self_index):
        pool.offer(scores, first + start, exclude=exclude)


def finish_rows(
    pool: Pool,
    queries: np.ndarray,
    candidates: np.ndarray,
    min_score: float | None = None,
    self_index: np.ndarray | None = None,
    sub_block: int = SUB_BLOCK,
):
    """Canonical top-k of every pool row; ids are positions in ``candidates`` (all the ranges
    offered, as one array); ``self_index`` here relative to ``candidates``."""
    return pool.finish(
        np.ascontiguousarray(queries, dtype=np.float32), candidates, min_score, sub_block, exclude=self_index
    )


def self_positions(query_ids: np.ndarray, candidate_ids: np.ndarray) -> np.ndarray:
    """Position of each query id in the sorted ``candidate_ids``, or -1 where it is not there."""
    query_ids = np.asarray(query_ids, dtype=object)
    if len(candidate_ids) == 0:
        return np.full(len(query_ids), -1, dtype=np.int64)
    pos = np.searchsorted(candidate_ids, query_ids)
    clipped = np.minimum(pos, len(candidate_ids) - 1)
    return np.where(candidate_ids[clipped] == query_ids, clipped, -1).astype(np.int64)
