"""Every pair of items whose cosine is at least a threshold, without an N x N matrix.

``pairs_above`` is the numpy core (no Spark): one block of queries against one range of
candidates. ``find_pairs`` is the Spark stage, laid out like the neighbours job's symmetric exact
scoring (lookalike.neighbours.exact): candidates broadcast in chunks of at most
``broadcast_max_mb``, and each task scores its own partition's upper triangle plus the partitions
``exact.paired_partitions`` gives it, so every unordered pair of partitions is scored once and
every task does the same share.

Scores are the neighbours job's canonical ones (``lookalike.neighbours.canonical``): the float32
matmul only selects (everything within ``tolerance(d)`` of the threshold), survivors are rescored
exactly, and a pair is kept when its canonical score is >= float32(threshold). A pair therefore
scores the same here as in the neighbour table, and a threshold equal to a pair's score keeps it.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from lookalike.neighbours import chunks, exact, watch
from lookalike.neighbours.canonical import exact_scores, tolerance
from lookalike.neighbours.pool import SUB_BLOCK, sub_blocks
from lookalike.neighbours.prepare import Prepared, candidate_offsets

log = logging.getLogger(__name__)

# One row per unordered pair: global indices (item_id order) with i < j, their ids, the score.
PAIRS = "i long, j long, item_i string, item_j string, score float"


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)


def pairs_above(
    queries: np.ndarray,
    candidates: np.ndarray,
    threshold: float,
    *,
    query_offset: int = 0,
    candidate_offset: int = 0,
    sub_block: int = SUB_BLOCK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every unordered pair of distinct items {a, b}, a a query and b a candidate, whose canonical
    cosine is >= float32(threshold), once, as (rows, cols, scores) with rows < cols.

    queries (b, d) and candidates (m, d) are unit float32 rows (``normalise``); the queries are the
    items ``query_offset .. query_offset + b - 1`` and the candidates ``candidate_offset ..
    candidate_offset + m - 1`` (global indices). Where the two ranges overlap, a pair of two items
    that sit on both sides is reported once, and an item never pairs with itself, so
    ``pairs_above(x, x, t)`` is the upper triangle of the all-pairs matrix. Holds at most
    b x sub_block scores."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    candidates = np.ascontiguousarray(candidates, dtype=np.float32)
    b, m = len(queries), len(candidates)
    if not b or not m:
        return _empty()
    bar = np.float32(threshold)
    # No float32 score of a pair that reaches the bar canonically is further below it than this.
    floor = np.float32(float(bar) - tolerance(queries.shape[1]))
    q_end, c_end = query_offset + b, candidate_offset + m
    rows, cols, scores = [], [], []
    for start, block in sub_blocks(queries, candidates, sub_block, None):
        r, c = np.nonzero(block >= floor)
        if not len(r):
            continue
        c = c + start
        qi, ci = r + query_offset, c + candidate_offset
        # Found from both sides when both items are queries and candidates: keep (smaller, larger).
        both = (ci >= query_offset) & (ci < q_end) & (qi >= candidate_offset) & (qi < c_end)
        keep = ~both | (qi < ci)
        r, c, qi, ci = r[keep], c[keep], qi[keep], ci[keep]
        canonical = exact_scores(queries, candidates, r, c)
        ok = canonical >= bar
        rows.append(np.minimum(qi, ci)[ok])
        cols.append(np.maximum(qi, ci)[ok])
        scores.append(canonical[ok])
    if not rows:
        return _empty()
    return (
        np.concatenate(rows).astype(np.int64),
        np.concatenate(cols).astype(np.int64),
        np.concatenate(scores).astype(np.float32),
    )


def _pairs_batch(rows, cols, row_ids, col_ids, scores):
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(
        [
            pa.array(rows, pa.int64()),
            pa.array(cols, pa.int64()),
            pa.array(row_ids, pa.string()),
            pa.array(col_ids, pa.string()),
            pa.array(scores, pa.float32()),
        ],
        names=["i", "j", "item_i", "item_j", "score"],
    )


def block_calls(bounds, p: int, base: int, rows: int, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """The ``pairs_above`` calls that score one block of partition ``p`` (``rows`` queries from
    global index ``base`` on) against the chunk of candidates ``lo .. hi - 1``: (how many of the
    block's queries, first column, end column), columns as global indices. ``bounds``: (partitions
    + 1,) global index of each partition's first item. Over every block of every partition and every
    chunk, each unordered pair of items is scored exactly once."""
    calls = []
    # Own partition: the columns from the block on (earlier blocks paired with this one already).
    # Queries at or past the chunk's end have no larger partner in it: the chunk holding their
    # larger partners pairs them, so scoring them here would find the pair twice.
    own_a, own_b = max(base, lo), min(int(bounds[p + 1]), hi)
    if own_a < own_b:
        calls.append((min(rows, own_b - base), own_a, own_b))
    for q in exact.paired_partitions(p, len(bounds) - 1):
        a, b = max(int(bounds[q]), lo), min(int(bounds[q + 1]), hi)
        if a < b:
            calls.append((rows, a, b))
    return calls


def _pairs_function(chunk_bc, bounds_bc, threshold: float, block_rows: int, dim: int):
    def score(batches):
        from pyspark import TaskContext

        chunk: chunks.Chunk = chunk_bc.value
        bounds = bounds_bc.value
        p = TaskContext.get().partitionId()
        lo, hi = chunk.offset, chunk.offset + len(chunk.ids)
        base = int(bounds[p])
        for block_ids, block in exact._query_blocks(batches, block_rows, dim):
            for rows, a, b in block_calls(bounds, p, base, len(block_ids), lo, hi):
                found, partner, scores = pairs_above(
                    block[:rows], chunk.vectors[a - lo : b - lo], threshold, query_offset=base, candidate_offset=a
                )
                if len(found):
                    yield _pairs_batch(
                        found,
                        partner,
                        _ids(found, base, block_ids, lo, chunk.ids),
                        _ids(partner, base, block_ids, lo, chunk.ids),
                        scores,
                    )
            base += len(block_ids)
        if base != bounds[p + 1]:
            raise RuntimeError(f"partition {p} has {base - bounds[p]} items, {bounds[p + 1] - bounds[p]} expected")

    return score


def _ids(index: np.ndarray, base: int, block_ids: np.ndarray, lo: int, chunk_ids: np.ndarray) -> np.ndarray:
    """Item ids of global indices that are each either in the query block or in the chunk."""
    in_block = (index >= base) & (index < base + len(block_ids))
    out = np.empty(len(index), dtype=object)
    out[in_block] = block_ids[index[in_block] - base]
    out[~in_block] = chunk_ids[index[~in_block] - lo]
    return out


def find_pairs(
    spark, run_id: str, items: Prepared, threshold: float, block_rows: int, broadcast_max_mb: float, held: list
):
    """PAIRS rows (a persisted DataFrame) of every pair of valid items with canonical cosine >=
    ``threshold``, and the summary's entries for the scoring. The broadcasts and persisted frames
    go into ``held``, for the caller to release once the table is written."""
    from pyspark import StorageLevel

    ordered, dim, n = items.ordered, items.dim, items.queries
    chunk_rows = chunks.rows_per_chunk(broadcast_max_mb, dim)
    n_chunks = math.ceil(n / chunk_rows)
    log.info(
        "duplicates: %d items of dim %d in %d chunk(s) of up to %d rows, %d partitions, blocks of %d, min_score %s",
        n,
        dim,
        n_chunks,
        chunk_rows,
        items.partitions,
        block_rows,
        threshold,
    )
    sc = spark.sparkContext
    bounds_bc = sc.broadcast(candidate_offsets(ordered))
    held.append(bounds_bc)
    pieces = chunks.candidate_chunks(ordered, n, chunk_rows, dim)
    valid = chunks.queries(ordered)
    found, counted = [], 0
    phases = {"collect_broadcast": 0.0, "score": 0.0}
    for number in range(1, n_chunks + 1):
        mark = time.perf_counter()
        chunk_bc = sc.broadcast(next(pieces))
        held.append(chunk_bc)
        phases["collect_broadcast"] += time.perf_counter() - mark
        mark = time.perf_counter()
        scored = valid.mapInArrow(_pairs_function(chunk_bc, bounds_bc, threshold, block_rows, dim), PAIRS)
        scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
        held.append(scored)
        (count,) = watch.collect(spark, run_id, f"duplicates chunk {number}/{n_chunks}", n, scored.groupBy().count())
        counted += count["count"]
        log.info("duplicates chunk %d/%d: %d pairs (%d so far)", number, n_chunks, count["count"], counted)
        found.append(scored)
        chunk_bc.unpersist()  # executors drop it; the driver keeps it for recomputation
        phases["score"] += time.perf_counter() - mark
    if next(pieces, None) is not None:
        raise RuntimeError(f"more items than the {n} counted; was the table changed?")
    pairs = found[0]
    for other in found[1:]:
        pairs = pairs.union(other)
    return pairs, {"pairs": counted, "chunks": n_chunks, "chunk_rows": chunk_rows, "phase_seconds": phases}
