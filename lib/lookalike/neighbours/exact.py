"""Exact scoring (neighbours.method: exact): every query against every candidate.

1. ``chunks.candidate_chunks`` on the driver cuts the candidates (``prepare.ordered_items``' usable
   rows, in item_id order) into chunks of at most ``neighbours.broadcast_max_mb``; each is
   broadcast and ``score`` runs ``topk.topk_block`` on every query partition, block by block.
2. When the queries are the candidates, ``score_symmetric`` instead scores each task's queries
   against its own and its ``paired_partitions``' candidates, each block serving both sides
   (about half the matmuls).
3. With neighbours.same and more candidates than one chunk holds, ``chunks.group_packs`` cuts the
   candidates by group instead: whole groups packed into chunks (a group larger than a chunk alone,
   in pieces), and each chunk is scored only by the queries of its groups, filtered in Spark, so
   each query crosses to Python once (per piece of its group) instead of once per chunk.
4. ``search`` drives the chunks and hands the PARTIAL rows to ``write.merge_and_write``; with one
   chunk and no symmetry the tasks rank and write the table themselves (``write.score_and_write``).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from lookalike.config import NeighboursConfig, S3Config
from lookalike.neighbours import arrow, rules, topk, watch
from lookalike.neighbours.chunks import (
    ID_BYTES,
    Chunk,
    candidate_chunks,
    grouped_candidate_chunks,
    queries,
    rows_per_chunk,
)
from lookalike.neighbours.prepare import Prepared, candidate_offsets
from lookalike.neighbours.write import Scored, score_and_write

log = logging.getLogger(__name__)


def _query_batches(batches, dim: int, layout: rules.Layout = rules.NO_RULES):
    """(ids, unit vectors, rule codes or None) of the queries of a partition, batch by batch."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        column = batch.schema.get_field_index
        ids = batch.column(column("item_id")).to_numpy(zero_copy_only=False)
        unit = arrow.vectors(batch.column(column("vector")), dim)
        codes = rules.codes_of(batch.column(column("codes")), layout) if layout.active else None
        yield ids, unit, codes


def _query_blocks(batches, block_rows: int, dim: int):
    """(ids, unit vectors) of the queries of a partition, ``block_rows`` at a time, in order."""
    for ids, unit, _ in _query_batches(batches, dim):
        for start in range(0, len(ids), block_rows):
            yield ids[start : start + block_rows], unit[start : start + block_rows]


def _partial(chunk: Chunk, ids, scores, found):
    present = found != topk.EMPTY_ID
    rows = np.nonzero(present)[0]
    neighbours = found[present]
    return arrow.partial_batch(ids[rows], neighbours, chunk.ids[neighbours - chunk.offset], scores[present])


def grouped_topk(
    chunk: Chunk, ids, unit, codes, k: int, block_rows: int, min_score: float | None, layout: rules.Layout
):
    """neighbours.same: each query's top-k among the chunk's candidates of its own group, scoring
    only those (the queries of a batch are taken group by group). Returns (scores, global
    indices) as ``topk.topk_block`` does; queries without a group get nothing."""
    best_s = np.full((len(ids), k), topk.EMPTY_SCORE, dtype=np.float32)
    best_i = np.full((len(ids), k), topk.EMPTY_ID, dtype=np.int64)
    if chunk.order is None or chunk.codes is None:
        raise ValueError("the chunk's candidates are not stored by group (neighbours.same)")
    rest, rest_codes = rules.without_same(layout, codes)
    group = codes[:, 0]
    for value in np.unique(group[group != rules.NULL]):
        lo, hi = chunk.group_slice(value)
        if lo == hi:
            continue
        members = np.flatnonzero(group == value)
        positions = chunk.order[lo:hi]  # ascending: id order within the group
        for start in range(0, len(members), block_rows):
            block = members[start : start + block_rows]
            found_s, found = topk.topk_block(
                unit[block],
                chunk.vectors[lo:hi],
                k,
                self_index=topk.self_positions(ids[block], chunk.ids[positions]),
                min_score=min_score,
                rules=rules.make(rest, rest_codes[block], chunk.codes[positions, 1:]) if rest.active else None,
            )
            present = found != topk.EMPTY_ID
            best_s[block] = found_s
            best_i[block] = np.where(present, positions[np.where(present, found, 0)] + chunk.offset, topk.EMPTY_ID)
    return best_s, best_i


def _score_function(
    chunk_bc, k: int, block_rows: int, min_score: float | None, dim: int, layout: rules.Layout = rules.NO_RULES
):
    def score(batches):
        chunk: Chunk = chunk_bc.value
        if layout.same:
            for ids, unit, codes in _query_batches(batches, dim, layout):
                scores, found = grouped_topk(chunk, ids, unit, codes, k, block_rows, min_score, layout)
                yield _partial(chunk, ids, scores, found)
            return
        for ids, unit, codes in _query_batches(batches, dim, layout):
            for start in range(0, len(ids), block_rows):
                block = slice(start, start + block_rows)
                scores, found = topk.topk_block(
                    unit[block],
                    chunk.vectors,
                    k,
                    self_index=topk.self_positions(ids[block], chunk.ids),
                    offset=chunk.offset,
                    min_score=min_score,
                    rules=rules.make(layout, codes[block], chunk.codes) if layout.active else None,
                )
                yield _partial(chunk, ids[block], scores, found)

    return score


def score(
    queries, chunk_bc, k: int, block_rows: int, min_score: float | None, dim: int, layout: rules.Layout = rules.NO_RULES
):
    """Each query's top-k among one broadcast chunk of candidates, as PARTIAL rows (same
    partitioning and order as ``queries``)."""
    return queries.mapInArrow(_score_function(chunk_bc, k, block_rows, min_score, dim, layout), arrow.PARTIAL)


def paired_partitions(p: int, n: int) -> list[int]:
    """The partitions q != p whose block of scores with p is computed by p's task when queries are
    the candidates. Each unordered pair once, and the same share for every task: p takes the next
    (n - 1) // 2 partitions round the circle, plus, for even n, the opposite one if p < n / 2."""
    out = [(p + d) % n for d in range(1, (n - 1) // 2 + 1)]
    if n % 2 == 0 and n > 1 and p < n // 2:
        out.append(p + n // 2)
    return out


def _symmetric_function(chunk_bc, bounds_bc, k: int, block_rows: int, min_score: float | None, dim: int):
    def score(batches):
        from pyspark import TaskContext

        chunk: Chunk = chunk_bc.value
        bounds = bounds_bc.value
        p, n_parts = TaskContext.get().partitionId(), len(bounds) - 1
        lo, hi = chunk.offset, chunk.offset + len(chunk.ids)

        def in_chunk(start, stop):
            return max(start, lo), min(stop, hi)

        own = in_chunk(bounds[p], bounds[p + 1])
        others = [r for r in (in_chunk(bounds[q], bounds[q + 1]) for q in paired_partitions(p, n_parts)) if r[0] < r[1]]
        # This task's columns side by side, its own range first: its queries' pools hold
        # positions in them, and a query redone for near-ties is redone against exactly these
        # (the other pairs come from the tasks that own them; scoring them here too would list a
        # neighbour twice).
        ranges = ([own] if own[0] < own[1] else []) + others
        if not ranges:  # this chunk holds none of this task's columns
            for _ in batches:
                pass
            return
        columns = np.concatenate([chunk.vectors[a - lo : b - lo] for a, b in ranges])
        global_index = np.concatenate([np.arange(a, b) for a, b in ranges])
        n_own = own[1] - own[0] if own[0] < own[1] else 0
        # The paired partitions' items, as one block of columns, collect their best among this
        # task's queries across all blocks, rescored once at the end.
        paired = topk.PairScorer(columns[n_own:], k, min_score=min_score) if others else None
        first = int(bounds[p])
        ids_seen: list = []
        for block_ids, block in _query_blocks(batches, block_rows, dim):
            block = np.ascontiguousarray(block)
            position = len(ids_seen)  # of the block's first query in this task
            base = first + position
            ids_seen.extend(block_ids)
            # One pool per block across the own and the paired columns, rescored once, as
            # topk_block does across its sub-blocks.
            pool = topk.row_pool(len(block), k, dim, min_score)
            self_index = np.full(len(block), -1, dtype=np.int64)
            if n_own:
                self_index = np.arange(base, base + len(block)) - own[0]
                self_index[(self_index < 0) | (self_index >= n_own)] = -1
                topk.offer_rows(pool, block, columns[:n_own], 0, self_index)
            if paired is not None:
                paired.offer(block, position, pool, n_own)
            best_s, best_i = topk.finish_rows(pool, block, columns, min_score, self_index)
            present = best_i != topk.EMPTY_ID
            rows = np.nonzero(present)[0]
            found = global_index[best_i[present]]
            yield arrow.partial_batch(block_ids[rows], found, chunk.ids[found - lo], best_s[present])
        if first + len(ids_seen) != bounds[p + 1]:
            raise RuntimeError(f"partition {p} has {len(ids_seen)} queries, {bounds[p + 1] - first} expected")
        if paired is not None:
            query_ids = np.array(ids_seen, dtype=object)
            col_s, col_i = paired.finish(paired.queries_seen)
            present = col_i != topk.EMPTY_ID
            rows = np.nonzero(present)[0]
            items = global_index[n_own + rows]
            yield arrow.partial_batch(
                chunk.ids[items - lo], col_i[present] + first, query_ids[col_i[present]], col_s[present]
            )

    return score


def score_symmetric(queries, chunk_bc, bounds_bc, k: int, block_rows: int, min_score: float | None, dim: int):
    """``score`` for when the queries are the candidates (every valid item may be recommended):
    each task scores its queries against its own partition's candidates and against those of
    ``paired_partitions``, and each of those blocks serves both sides (topk.topk_pair), so the
    matmul work is about halved. PARTIAL rows, for each query (its best among the task's columns)
    and for each candidate of a paired partition (its best among the task's queries): several
    partial lists per item, merged by ``write_ranked``. ``bounds_bc``: (partitions + 1,) global
    index of each partition's first item (queries and candidates alike)."""
    return queries.mapInArrow(_symmetric_function(chunk_bc, bounds_bc, k, block_rows, min_score, dim), arrow.PARTIAL)


def search(
    spark,
    run_id: str,
    items: Prepared,
    settings: NeighboursConfig,
    held: list,
    directory: str | None,
    s3: S3Config | None,
) -> Scored:
    """Every query against every candidate, one broadcast chunk of candidates at a time: PARTIAL
    rows to merge, or, when one chunk held every candidate (and no symmetry) and ``directory`` is
    given, the WRITTEN rows of the table the tasks wrote there themselves. The broadcasts and
    persisted frames go into ``held``, for the caller to release once the table is written."""
    from pyspark import StorageLevel

    # With hide_duplicates the lists are scored deeper and cut to k by the writer.
    k, block_rows, min_score = items.depth or settings.k, settings.block_rows, settings.min_score
    ordered, dim, partitions, layout = items.ordered, items.dim, items.partitions, items.layout
    n_queries, n_candidates = items.queries, items.candidates
    chunk_rows = rows_per_chunk(settings.broadcast_max_mb, dim)
    valid = queries(ordered) if items.query_rows is None else items.query_rows
    if layout.same and n_candidates > chunk_rows:
        packs, grouped = grouped_candidate_chunks(ordered, chunk_rows, dim, layout)
        # A group larger than a chunk is cut into pieces; every other pack is one chunk.
        n_chunks = sum(math.ceil(pack.rows / chunk_rows) for pack in packs)
        chunks = ((chunk, pack.of(valid)) for pack, chunk in grouped)
    else:
        packs = None
        n_chunks = math.ceil(n_candidates / chunk_rows)
        chunks = ((chunk, valid) for chunk in candidate_chunks(ordered, n_candidates, chunk_rows, dim, layout))
    log.info(
        "%d queries, %d candidates of dim %d in %d chunk(s) of up to %d rows (%.1f MB)%s, %d partitions, "
        "blocks of %d queries",
        n_queries,
        n_candidates,
        dim,
        n_chunks,
        chunk_rows,
        min(chunk_rows, n_candidates) * (4 * dim + ID_BYTES) / 2**20,
        "" if packs is None else f", whole groups packed into {len(packs)}",
        partitions,
        block_rows,
    )
    sc = spark.sparkContext
    # When the queries are the candidates, score(a, b) = score(b, a): each block serves both.
    # Rules make the pairs one-sided (a query may get a candidate that may not get it back).
    symmetric = (
        settings.symmetric
        and items.query_rows is None
        and n_candidates == n_queries
        and partitions > 1
        and not layout.active
    )
    out = Scored(
        summary={"chunks": n_chunks, "chunk_rows": chunk_rows, "symmetric": symmetric},
        phases={"collect_broadcast": 0.0, "score": 0.0},
    )
    if packs is not None:
        out.summary["group_packs"] = len(packs)
    phases = out.phases
    partials = []
    if symmetric:
        bounds_bc = sc.broadcast(candidate_offsets(ordered))
        held.append(bounds_bc)
    for number in range(1, n_chunks + 1):
        mark = time.perf_counter()
        chunk, chunk_queries = next(chunks)
        chunk_bc = sc.broadcast(chunk)
        held.append(chunk_bc)
        phases["collect_broadcast"] += time.perf_counter() - mark
        mark = time.perf_counter()
        log.info(
            "chunk %d/%d: candidates %d..%d (%s .. %s), %.1f MB broadcast",
            number,
            n_chunks,
            chunk.offset,
            chunk.offset + len(chunk.ids) - 1,
            chunk.ids[0],
            chunk.ids[-1],
            chunk.nbytes / 2**20,
        )
        del chunk
        if n_chunks == 1 and not symmetric and packs is None and directory is not None:
            # Already in the output's partitioning and order: rank and write in the same tasks.
            scorer = _score_function(chunk_bc, k, block_rows, min_score, dim, layout)
            out.written = watch.collect(
                spark,
                run_id,
                "neighbours",
                n_queries,
                score_and_write(valid, scorer, directory, settings.k, s3, settings.row_group_rows, items.hide),
            )
            phases["score"] += time.perf_counter() - mark
            return out
        if symmetric:
            scored = score_symmetric(valid, chunk_bc, bounds_bc, k, block_rows, min_score, dim)
        else:
            scored = score(chunk_queries, chunk_bc, k, block_rows, min_score, dim, layout)
        scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
        held.append(scored)
        watch.collect(spark, run_id, f"neighbours chunk {number}/{n_chunks}", n_queries, scored.groupBy().count())
        partials.append(scored)
        chunk_bc.unpersist()  # executors drop it; the driver keeps it for recomputation
        phases["score"] += time.perf_counter() - mark
    if next(chunks, None) is not None:
        raise RuntimeError(f"more candidates than the {n_candidates} counted; was the table changed?")
    if not partials:  # neighbours.same and no candidate has a group: nobody gets a neighbour
        out.partials = spark.createDataFrame([], arrow.PARTIAL)
        return out
    out.partials = partials[0]
    for other in partials[1:]:
        out.partials = out.partials.union(other)
    return out
