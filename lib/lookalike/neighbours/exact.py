"""Exact scoring (neighbours.method: exact): every query against every candidate.

1. ``candidate_chunks`` on the driver cuts the candidates (``prepare.ordered_items``' usable
   rows, in item_id order) into chunks of at most ``neighbours.broadcast_max_mb``; each is
   broadcast and ``score`` runs ``topk.topk_block`` on every query partition, block by block.
2. When the queries are the candidates, ``score_symmetric`` instead scores each task's queries
   against its own and its ``paired_partitions``' candidates, each block serving both sides
   (about half the matmuls).
3. With neighbours.same and more candidates than one chunk holds, ``group_packs`` cuts the
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
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from lookalike.config import NeighboursConfig, S3Config
from lookalike.neighbours import arrow, rules, topk, watch
from lookalike.neighbours.prepare import USABLE, Prepared, candidate_offsets
from lookalike.neighbours.write import Scored, score_and_write

log = logging.getLogger(__name__)

# Per-candidate overhead of a broadcast chunk besides the vector (the pickled id and its slot).
ID_BYTES = 64


@dataclass(frozen=True)
class Chunk:
    """Candidates ``offset .. offset + len(ids) - 1`` in item_id order, as broadcast."""

    offset: int
    ids: np.ndarray  # object array of str, sorted
    vectors: np.ndarray  # float32 (len(ids), dim), unit rows; with neighbours.same, rows ``order``
    codes: Optional[np.ndarray] = None  # (len(ids), width) int64 rule codes, id order
    # neighbours.same: the vectors are stored by (group, id), so that a group is one slice and a
    # query block is scored against its own group only (sum of n_g^2 work, not N^2). ``order``:
    # the chunk position of each stored row (candidates without a group are left out).
    order: Optional[np.ndarray] = None
    group_values: Optional[np.ndarray] = None  # sorted group codes present
    group_bounds: Optional[np.ndarray] = None  # (len(group_values) + 1,) slices of the stored rows

    @property
    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self.codes, self.order) if a is not None)
        return int(self.vectors.nbytes + ID_BYTES * len(self.ids) + extra)

    def group_slice(self, value: int) -> tuple[int, int]:
        at = int(np.searchsorted(self.group_values, value))
        if at == len(self.group_values) or self.group_values[at] != value:
            return 0, 0
        return int(self.group_bounds[at]), int(self.group_bounds[at + 1])


def rows_per_chunk(broadcast_max_mb: float, dim: int) -> int:
    return max(1, int(broadcast_max_mb * 2 ** 20 // (4 * dim + ID_BYTES)))


def queries(ordered):
    """The valid rows of ``ordered_items``: every one is a query."""
    return ordered.filter("valid")


def _chunk(offset: int, ids: list, vectors: np.ndarray, codes: Optional[np.ndarray] = None,
           layout: rules.Layout = rules.Layout()) -> Chunk:
    ids = np.array(ids, dtype=object)
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        raise RuntimeError("candidates arrived out of item_id order")
    if not layout.same:
        return Chunk(offset, ids, np.ascontiguousarray(vectors), codes)
    group = codes[:, 0]
    grouped = np.flatnonzero(group != rules.NULL)
    # Stable: within a group, stored order is id order, so a column's rank is its id's rank.
    order = grouped[np.argsort(group[grouped], kind="stable")]
    values, starts = np.unique(group[order], return_index=True)
    return Chunk(offset, ids, np.ascontiguousarray(vectors[order]), codes, order, values,
                 np.append(starts, len(order)).astype(np.int64))


def candidate_chunks(ordered, n_candidates: int, chunk_rows: int, dim: int,
                     layout: rules.Layout = rules.Layout(), base: int = 0) -> Iterator[Chunk]:
    """Candidates brought to the driver in item_id order, at most ``chunk_rows`` at a time, the
    first numbered ``base``.

    Partitions are range-sorted, so reading them one after another is global id order. When all
    fit in one chunk they come in one Arrow collect; otherwise partition by partition, so that the
    driver never holds more than a chunk and a partition."""
    rows = ordered.filter(USABLE).select("item_id", "vector", "codes")
    if n_candidates <= chunk_rows:
        table = arrow.to_arrow(rows)
        unit = arrow.vectors(table.column("vector").combine_chunks(), dim)
        codes = rules.codes_of(table.column("codes").combine_chunks(), layout)
        yield _chunk(base, table.column("item_id").to_pylist(), unit, codes, layout)
        return
    ids: list[str] = []
    blobs: list = []
    codes: list = []
    offset = base
    last: Optional[str] = None

    def cut():
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
        packed = np.array(codes, dtype=np.int64).reshape(len(ids), layout.width) if layout.active else None
        return _chunk(offset, ids, vectors, packed, layout)

    for item_id, vector, item_codes in rows.toLocalIterator(True):
        if last is not None and not item_id > last:
            raise RuntimeError(f"candidates arrived out of item_id order ({last!r} then {item_id!r})")
        last = item_id
        ids.append(item_id)
        blobs.append(vector)
        codes.append(item_codes)
        if len(ids) == chunk_rows:
            yield cut()
            offset += len(ids)
            ids, blobs, codes = [], [], []
    if ids:
        yield cut()


@dataclass(frozen=True)
class Pack:
    """The candidates of groups ``low`` .. ``high`` - 1 (``same`` codes), ``rows`` of them."""

    low: int
    high: int
    rows: int

    def of(self, frame):
        """The rows of ``frame`` whose group is in the pack."""
        from pyspark.sql import functions as F

        group = F.col("codes")[0]
        return frame.filter((group >= self.low) & (group < self.high))


def group_packs(codes: np.ndarray, counts: np.ndarray, chunk_rows: int) -> list[Pack]:
    """Consecutive ``same`` codes packed into as few chunks as whole groups allow: a pack holds at
    most ``chunk_rows`` candidates, except a group larger than that, which is a pack of its own
    (``candidate_chunks`` then cuts it into pieces). ``codes`` ascending, with each's candidate
    count; the codes are numbered densely (keys._numbered), so a pack is a range of them."""
    packs: list[Pack] = []
    low, rows = None, 0
    for code, count in zip(codes.tolist(), counts.tolist()):
        if low is not None and rows + count > chunk_rows:
            packs.append(Pack(low, code, rows))
            low, rows = None, 0
        if low is None:
            low = code
        rows += count
    if low is not None:
        packs.append(Pack(low, int(codes[-1]) + 1, rows))
    return packs


def grouped_candidate_chunks(ordered, chunk_rows: int, dim: int, layout: rules.Layout
                             ) -> tuple[list[Pack], Iterator[tuple[Pack, Chunk]]]:
    """neighbours.same over more candidates than one chunk: the packs, and each pack's chunks (one,
    or a large group's pieces) in order, numbered consecutively. A candidate's number is then its
    rank by (pack, item_id), not by item_id; within a group, the only place a query's candidates
    come from, both orders agree, so ties still break by id."""
    from pyspark.sql import functions as F

    group = F.col("codes")[0]
    sizes = arrow.to_arrow(ordered.filter(USABLE).filter(group != rules.NULL)
                           .groupBy(group.alias("code")).count().orderBy("code"))
    packs = group_packs(sizes.column("code").to_numpy(), sizes.column("count").to_numpy(), chunk_rows)

    def chunks():
        base = 0
        for pack in packs:
            for chunk in candidate_chunks(pack.of(ordered), pack.rows, chunk_rows, dim, layout, base):
                yield pack, chunk
            base += pack.rows
    return packs, chunks()


def _query_batches(batches, dim: int, layout: rules.Layout = rules.Layout()):
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
            yield ids[start:start + block_rows], unit[start:start + block_rows]


def _partial(chunk: Chunk, ids, scores, found):
    present = found != topk.EMPTY_ID
    rows = np.nonzero(present)[0]
    neighbours = found[present]
    return arrow.partial_batch(ids[rows], neighbours, chunk.ids[neighbours - chunk.offset], scores[present])


def grouped_topk(chunk: Chunk, ids, unit, codes, k: int, block_rows: int, min_score: Optional[float],
                 layout: rules.Layout):
    """neighbours.same: each query's top-k among the chunk's candidates of its own group, scoring
    only those (the queries of a batch are taken group by group). Returns (scores, global
    indices) as ``topk.topk_block`` does; queries without a group get nothing."""
    best_s = np.full((len(ids), k), topk.EMPTY_SCORE, dtype=np.float32)
    best_i = np.full((len(ids), k), topk.EMPTY_ID, dtype=np.int64)
    rest, rest_codes = rules.without_same(layout, codes)
    group = codes[:, 0]
    for value in np.unique(group[group != rules.NULL]):
        lo, hi = chunk.group_slice(value)
        if lo == hi:
            continue
        members = np.flatnonzero(group == value)
        positions = chunk.order[lo:hi]  # ascending: id order within the group
        for start in range(0, len(members), block_rows):
            block = members[start:start + block_rows]
            found_s, found = topk.topk_block(
                unit[block], chunk.vectors[lo:hi], k, self_index=topk.self_positions(ids[block], chunk.ids[positions]),
                min_score=min_score,
                rules=rules.make(rest, rest_codes[block], chunk.codes[positions, 1:]) if rest.active else None)
            present = found != topk.EMPTY_ID
            best_s[block] = found_s
            best_i[block] = np.where(present, positions[np.where(present, found, 0)] + chunk.offset, topk.EMPTY_ID)
    return best_s, best_i


def _score_function(chunk_bc, k: int, block_rows: int, min_score: Optional[float], dim: int,
                    layout: rules.Layout = rules.Layout()):
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
                    unit[block], chunk.vectors, k,
                    self_index=topk.self_positions(ids[block], chunk.ids), offset=chunk.offset,
                    min_score=min_score, rules=rules.make(layout, codes[block], chunk.codes) if layout.active else None)
                yield _partial(chunk, ids[block], scores, found)

    return score


def score(queries, chunk_bc, k: int, block_rows: int, min_score: Optional[float], dim: int,
          layout: rules.Layout = rules.Layout()):
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


def _symmetric_function(chunk_bc, bounds_bc, k: int, block_rows: int, min_score: Optional[float], dim: int):
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
        columns = np.concatenate([chunk.vectors[a - lo:b - lo] for a, b in ranges])
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
            yield arrow.partial_batch(chunk.ids[items - lo], col_i[present] + first, query_ids[col_i[present]],
                                 col_s[present])

    return score


def score_symmetric(queries, chunk_bc, bounds_bc, k: int, block_rows: int, min_score: Optional[float], dim: int):
    """``score`` for when the queries are the candidates (every valid item may be recommended):
    each task scores its queries against its own partition's candidates and against those of
    ``paired_partitions``, and each of those blocks serves both sides (topk.topk_pair), so the
    matmul work is about halved. PARTIAL rows, for each query (its best among the task's columns)
    and for each candidate of a paired partition (its best among the task's queries): several
    partial lists per item, merged by ``write_ranked``. ``bounds_bc``: (partitions + 1,) global
    index of each partition's first item (queries and candidates alike)."""
    return queries.mapInArrow(_symmetric_function(chunk_bc, bounds_bc, k, block_rows, min_score, dim), arrow.PARTIAL)


def search(spark, run_id: str, items: Prepared, settings: NeighboursConfig, held: list, directory: str,
           s3: Optional[S3Config]) -> Scored:
    """Every query against every candidate, one broadcast chunk of candidates at a time: PARTIAL
    rows to merge, or, when one chunk held every candidate (and no symmetry), the WRITTEN rows of
    the table the tasks wrote under ``directory`` themselves. The broadcasts and persisted frames
    go into ``held``, for the caller to release once the table is written."""
    from pyspark import StorageLevel

    # With hide_duplicates the lists are scored deeper and cut to k by the writer.
    k, block_rows, min_score = items.depth or settings.k, settings.block_rows, settings.min_score
    ordered, dim, partitions, layout = items.ordered, items.dim, items.partitions, items.layout
    n_queries, n_candidates = items.queries, items.candidates
    chunk_rows = rows_per_chunk(settings.broadcast_max_mb, dim)
    valid = queries(ordered)
    if layout.same and n_candidates > chunk_rows:
        packs, grouped = grouped_candidate_chunks(ordered, chunk_rows, dim, layout)
        # A group larger than a chunk is cut into pieces; every other pack is one chunk.
        n_chunks = sum(math.ceil(pack.rows / chunk_rows) for pack in packs)
        chunks = ((chunk, pack.of(valid)) for pack, chunk in grouped)
    else:
        packs = None
        n_chunks = math.ceil(n_candidates / chunk_rows)
        chunks = ((chunk, valid) for chunk in candidate_chunks(ordered, n_candidates, chunk_rows, dim, layout))
    log.info("%d queries, %d candidates of dim %d in %d chunk(s) of up to %d rows (%.1f MB)%s, %d partitions, "
             "blocks of %d queries", n_queries, n_candidates, dim, n_chunks, chunk_rows,
             min(chunk_rows, n_candidates) * (4 * dim + ID_BYTES) / 2 ** 20,
             "" if packs is None else f", whole groups packed into {len(packs)}", partitions, block_rows)
    sc = spark.sparkContext
    # When the queries are the candidates, score(a, b) = score(b, a): each block serves both.
    # Rules make the pairs one-sided (a query may get a candidate that may not get it back).
    symmetric = settings.symmetric and n_candidates == n_queries and partitions > 1 and not layout.active
    out = Scored(summary={"chunks": n_chunks, "chunk_rows": chunk_rows, "symmetric": symmetric},
                 phases={"collect_broadcast": 0.0, "score": 0.0})
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
        log.info("chunk %d/%d: candidates %d..%d (%s .. %s), %.1f MB broadcast", number, n_chunks,
                 chunk.offset, chunk.offset + len(chunk.ids) - 1, chunk.ids[0], chunk.ids[-1],
                 chunk.nbytes / 2 ** 20)
        del chunk
        if n_chunks == 1 and not symmetric and packs is None:
            # Already in the output's partitioning and order: rank and write in the same tasks.
            scorer = _score_function(chunk_bc, k, block_rows, min_score, dim, layout)
            out.written = watch.collect(spark, run_id, "neighbours", n_queries, score_and_write(
                valid, scorer, directory, settings.k, s3, settings.row_group_rows, items.hide))
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
