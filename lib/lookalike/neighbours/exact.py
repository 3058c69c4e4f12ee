"""The neighbours stage as DataFrame -> DataFrame: embeddings in, exact cosine top-k per item out.

Plan (lookalike.jobs.neighbours drives it):
1. ``ordered_items``: the table range-partitioned and sorted by item_id (in the JVM, on the raw
   rows), then every vector L2-normalised once on the executors and packed as float32 bytes with a
   validity flag (finite, non-zero norm). The job caches this one DataFrame; its order serves the
   candidates (collected to the driver partition by partition, already in id order, so a
   candidate's index is its rank by id) and the output files (disjoint, sorted id ranges).
2. ``inspect``: one pass over it for the counts, the kinds of embedding (which must agree),
   duplicate ids and examples of invalid ones.
3. ``candidate_chunks`` on the driver cuts the candidates into chunks of at most
   ``neighbours.broadcast_max_mb``; each is broadcast and ``score`` runs ``topk.topk_block`` on
   every query partition, block by block.
4. ``write_ranked`` merges the partial lists of all chunks per item (one chunk: nothing to merge),
   numbers the ranks and writes each partition's file itself (lookalike.partfiles).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from lookalike import schemas
from lookalike.neighbours import topk
from lookalike.config import S3Config
from lookalike.errors import SchemaMismatchError

log = logging.getLogger(__name__)

PREPARED = ("item_id string, model string, pooling string, weights string, dim int, length int, "
            "is_candidate boolean, valid boolean, vector binary")
# Scored but not yet ranked: neighbour_index is the candidate's position in item_id order.
PARTIAL = "item_id string, neighbour_index long, neighbour_id string, score float"
WRITTEN = "partition int, path string, rows long, items long, row_groups int, first_id string, last_id string"
# What must be equal for two embeddings to be comparable.
KIND = ("model", "pooling", "weights", "dim", "length")
# Per-candidate overhead of a broadcast chunk besides the vector (the pickled id and its slot).
ID_BYTES = 64
SAMPLE_IDS = 5


@dataclass(frozen=True)
class Chunk:
    """Candidates ``offset .. offset + len(ids) - 1`` in item_id order, as broadcast."""

    offset: int
    ids: np.ndarray  # object array of str, sorted
    vectors: np.ndarray  # float32 (len(ids), dim), unit rows

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + ID_BYTES * len(self.ids))


# --------------------------------------------------------------------------------------------
# 1. Order and normalise

def _prepare_batches(batches):
    import pyarrow as pa
    import pyarrow.compute as pc

    for batch in batches:
        n = batch.num_rows
        column = batch.column(batch.schema.get_field_index("embedding"))
        lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy(zero_copy_only=False).astype(np.int32)
        valid = np.zeros(n, dtype=bool)
        blobs = np.full(n, b"", dtype=object)
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False)  # nulls inside a vector -> NaN -> invalid
        for length in np.unique(lengths[lengths > 0]):
            rows = np.flatnonzero(lengths == length)
            if len(rows) == n and offsets[-1] - offsets[0] == n * length:  # the usual, contiguous case
                matrix = values[offsets[0]:offsets[-1]].reshape(n, length)
            else:
                matrix = values[offsets[rows][:, None] + np.arange(length)]
            unit, ok = topk.normalise(matrix)
            valid[rows] = ok
            blobs[rows] = [row.tobytes() for row in unit]
        field = batch.schema.get_field_index
        yield pa.RecordBatch.from_arrays(
            [batch.column(field(name)) for name in ("item_id", "model", "pooling", "weights")]
            + [batch.column(field("dim")).cast(pa.int32()), pa.array(lengths, pa.int32()),
               batch.column(field("is_candidate")), pa.array(valid), pa.array(blobs, pa.binary())],
            names=["item_id", "model", "pooling", "weights", "dim", "length", "is_candidate", "valid", "vector"],
        )


def ordered_items(embeddings, partitions: int, candidate_ids=None):
    """Embeddings table -> PREPARED rows, range-partitioned and sorted by item_id.

    ``candidate_ids`` (a DataFrame with item_id) marks the items that may be recommended; None
    marks every item. Ordering happens before the Python step so that Spark's range sampling
    reads the raw rows in the JVM instead of running the normalisation twice."""
    from pyspark.sql import functions as F

    rows = embeddings.select("item_id", "model", "pooling", "weights", "dim", "embedding")
    if candidate_ids is None:
        rows = rows.withColumn("is_candidate", F.lit(True))
    else:
        flagged = (candidate_ids.select(F.col("item_id").cast("string")).distinct()
                   .withColumn("is_candidate", F.lit(True)))
        rows = (rows.join(flagged, "item_id", "left")
                .withColumn("is_candidate", F.coalesce(F.col("is_candidate"), F.lit(False))))
    return (rows.repartitionByRange(partitions, "item_id").sortWithinPartitions("item_id")
            .mapInArrow(_prepare_batches, PREPARED))


# --------------------------------------------------------------------------------------------
# 2. Inspect

def _inspect_batches(batches):
    import pyarrow as pa
    import pyarrow.compute as pc

    kinds: dict = {}
    duplicates, duplicate_sample, invalid_sample = 0, [], []
    previous = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        ids = table.column("item_id")
        # Range-sorted: equal ids are adjacent (and never in two partitions), also across batches.
        before = pa.concat_arrays([pa.array([previous], pa.string()), ids.slice(0, len(ids) - 1).combine_chunks()])
        same = pc.fill_null(pc.equal(ids, before), False)
        duplicates += pc.sum(same).as_py() or 0
        duplicate_sample += pc.filter(ids, same).slice(0, SAMPLE_IDS).to_pylist()
        invalid_sample += pc.filter(ids, pc.invert(table.column("valid"))).slice(0, SAMPLE_IDS).to_pylist()
        previous = ids[len(ids) - 1].as_py()
        usable = pc.and_(table.column("valid"), table.column("is_candidate"))
        grouped = (table.append_column("candidate", usable).group_by(list(KIND))
                   .aggregate([("valid", "count"), ("valid", "sum"), ("candidate", "sum")]))
        for row in grouped.to_pylist():
            counts = kinds.setdefault(tuple(row[c] for c in KIND), [0, 0, 0])
            counts[0] += row["valid_count"]
            counts[1] += row["valid_sum"] or 0
            counts[2] += row["candidate_sum"] or 0
    stats = {"kinds": [[*key, *counts] for key, counts in kinds.items()], "duplicates": duplicates,
             "duplicate_sample": duplicate_sample[:SAMPLE_IDS], "invalid_sample": invalid_sample[:SAMPLE_IDS]}
    yield pa.RecordBatch.from_arrays([pa.array([json.dumps(stats)])], names=["stats"])


def inspect(ordered) -> dict:
    """One pass over ``ordered_items``: {"kinds": [{model, pooling, weights, dim, length, rows,
    valid, candidates}] largest first, "duplicates", "duplicate_sample", "invalid_sample"}."""
    columns = ordered.select("item_id", *KIND, "valid", "is_candidate")  # the cache scan skips vectors
    parts = [json.loads(row.stats) for row in columns.mapInArrow(_inspect_batches, "stats string").collect()]
    kinds: dict = {}
    for part in parts:
        for *key, rows, valid, candidates in part["kinds"]:
            counts = kinds.setdefault(tuple(key), [0, 0, 0])
            for j, value in enumerate((rows, valid, candidates)):
                counts[j] += value
    return {
        "kinds": sorted(({**dict(zip(KIND, key)), "rows": c[0], "valid": c[1], "candidates": c[2]}
                         for key, c in kinds.items()), key=lambda g: -g["rows"]),
        "duplicates": sum(p["duplicates"] for p in parts),
        "duplicate_sample": [i for p in parts for i in p["duplicate_sample"]][:SAMPLE_IDS],
        "invalid_sample": [i for p in parts for i in p["invalid_sample"]][:SAMPLE_IDS],
    }


def check_comparable(kinds: list[dict], table: str) -> dict:
    """The one kind of embedding in the table; SchemaMismatchError naming two kinds otherwise.
    Rows without any vector (length <= 0) are just invalid and do not count as a kind."""
    real = [g for g in kinds if g["length"] > 0]
    if len(real) > 1:
        a, b = real[0], real[1]
        more = f" (and {len(real) - 2} more kinds)" if len(real) > 2 else ""
        raise SchemaMismatchError(
            f"the embeddings table {table} mixes embeddings that cannot be compared: {a['rows']} rows "
            f"of {_kind(a)} and {b['rows']} rows of {_kind(b)}{more}. Re-run the embed job for the "
            f"whole input with one model configuration, or point output.embeddings at one of them.")
    if real and real[0]["dim"] != real[0]["length"]:
        raise SchemaMismatchError(
            f"the embeddings table {table} is inconsistent: its dim column says {real[0]['dim']} but "
            f"the embeddings hold {real[0]['length']} values ({_kind(real[0])}); re-run the embed job.")
    return real[0] if real else {}


def _kind(group: dict) -> str:
    return (f"model={group['model']} pooling={group['pooling']} weights={group['weights']} "
            f"dim={group['length']}")


# --------------------------------------------------------------------------------------------
# 3. Score

def rows_per_chunk(broadcast_max_mb: float, dim: int) -> int:
    return max(1, int(broadcast_max_mb * 2 ** 20 // (4 * dim + ID_BYTES)))


def queries(ordered):
    """The valid rows of ``ordered_items``: every one is a query."""
    return ordered.filter("valid")


def _chunk(offset: int, ids: list, vectors: np.ndarray) -> Chunk:
    ids = np.array(ids, dtype=object)
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        raise RuntimeError("candidates arrived out of item_id order")
    return Chunk(offset, ids, np.ascontiguousarray(vectors))


def candidate_chunks(ordered, n_candidates: int, chunk_rows: int, dim: int) -> Iterator[Chunk]:
    """Candidates brought to the driver in item_id order, at most ``chunk_rows`` at a time.

    Partitions are range-sorted, so reading them one after another is global id order. When all
    fit in one chunk they come in one Arrow collect; otherwise partition by partition, so that the
    driver never holds more than a chunk and a partition."""
    rows = ordered.filter("valid AND is_candidate").select("item_id", "vector")
    if n_candidates <= chunk_rows:
        table = _to_arrow(rows)
        yield _chunk(0, table.column("item_id").to_pylist(), _vectors(table.column("vector").combine_chunks(), dim))
        return
    ids: list[str] = []
    blobs: list = []
    offset = 0
    last: Optional[str] = None
    for item_id, vector in rows.toLocalIterator(True):
        if last is not None and not item_id > last:
            raise RuntimeError(f"candidates arrived out of item_id order ({last!r} then {item_id!r})")
        last = item_id
        ids.append(item_id)
        blobs.append(vector)
        if len(ids) == chunk_rows:
            yield _chunk(offset, ids, np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim))
            offset += len(ids)
            ids, blobs = [], []
    if ids:
        yield _chunk(offset, ids, np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim))


USABLE = "valid AND is_candidate"


def _count_true(batches):
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark import TaskContext

    n = 0
    for batch in batches:
        n += int(pc.sum(batch.column(0)).as_py() or 0)
    yield pa.RecordBatch.from_pylist([{"partition": TaskContext.get().partitionId(), "rows": n}],
                                     schema=pa.schema([("partition", pa.int32()), ("rows", pa.int64())]))


def candidate_offsets(ordered) -> np.ndarray:
    """(partitions + 1,) global index of each partition's first usable candidate (a candidate's
    global index is its rank by item_id, as in ``candidate_chunks``)."""
    flags = ordered.selectExpr(f"{USABLE} AS usable")
    counts = dict(flags.mapInArrow(_count_true, "partition int, rows long").collect())
    n = ordered.rdd.getNumPartitions()
    return np.concatenate([[0], np.cumsum([counts.get(p, 0) for p in range(n)])]).astype(np.int64)


def _to_arrow(frame):
    """``frame.toArrow()``, which Spark 3.5 (EMR 7, make test-compat) lacks: there, the private
    collect that toArrow() wraps in Spark 4."""
    if hasattr(frame, "toArrow"):
        return frame.toArrow()
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    batches = frame._collect_as_arrow()
    return pa.Table.from_batches(batches) if batches else to_arrow_schema(frame.schema).empty_table()


def _vectors(column, dim: int) -> np.ndarray:
    """A binary column of packed float32 vectors as an (n, dim) array, without a copy if it can."""
    import pyarrow as pa

    n = len(column)
    width = 8 if pa.types.is_large_binary(column.type) else 4
    buffers = column.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if width == 8 else np.int32,
                            count=n + 1, offset=column.offset * width)
    if n and not (np.diff(offsets) == 4 * dim).all():
        raise ValueError(f"vectors of unexpected size in a block of {n} queries (want {dim} floats)")
    vectors = np.frombuffer(buffers[2], dtype=np.float32, count=n * dim, offset=int(offsets[0])).reshape(n, dim)
    return vectors if vectors.flags.aligned else vectors.copy()


def _query_blocks(batches, block_rows: int, dim: int):
    """(ids, unit vectors) of the queries of a partition, ``block_rows`` at a time, in order."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        ids = batch.column(batch.schema.get_field_index("item_id")).to_numpy(zero_copy_only=False)
        vectors = _vectors(batch.column(batch.schema.get_field_index("vector")), dim)
        for start in range(0, len(ids), block_rows):
            yield ids[start:start + block_rows], vectors[start:start + block_rows]


def _score_function(chunk_bc, k: int, block_rows: int, min_score: Optional[float], dim: int):
    def score(batches):
        chunk: Chunk = chunk_bc.value
        for block_ids, block in _query_blocks(batches, block_rows, dim):
            scores, found = topk.topk_block(
                block, chunk.vectors, k,
                self_index=topk.self_positions(block_ids, chunk.ids), offset=chunk.offset,
                min_score=min_score)
            present = found != topk.EMPTY_ID
            rows = np.nonzero(present)[0]
            neighbours = found[present]
            yield _partial_batch(block_ids[rows], neighbours, chunk.ids[neighbours - chunk.offset], scores[present])

    return score


def score(queries, chunk_bc, k: int, block_rows: int, min_score: Optional[float], dim: int):
    """Each query's top-k among one broadcast chunk of candidates, as PARTIAL rows (same
    partitioning and order as ``queries``)."""
    return queries.mapInArrow(_score_function(chunk_bc, k, block_rows, min_score, dim), PARTIAL)


def paired_partitions(p: int, n: int) -> list[int]:
    """The partitions q != p whose block of scores with p is computed by p's task when queries are
    the candidates. Each unordered pair once, and the same share for every task: p takes the next
    (n - 1) // 2 partitions round the circle, plus, for even n, the opposite one if p < n / 2."""
    out = [(p + d) % n for d in range(1, (n - 1) // 2 + 1)]
    if n % 2 == 0 and n > 1 and p < n // 2:
        out.append(p + n // 2)
    return out


def _partial_batch(item_ids, neighbour_index, neighbour_ids, scores):
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(
        [pa.array(item_ids, pa.string()), pa.array(neighbour_index, pa.int64()),
         pa.array(neighbour_ids, pa.string()), pa.array(scores, pa.float32())],
        names=["item_id", "neighbour_index", "neighbour_id", "score"])


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
            yield _partial_batch(block_ids[rows], found, chunk.ids[found - lo], best_s[present])
        if first + len(ids_seen) != bounds[p + 1]:
            raise RuntimeError(f"partition {p} has {len(ids_seen)} queries, {bounds[p + 1] - first} expected")
        if paired is not None:
            query_ids = np.array(ids_seen, dtype=object)
            col_s, col_i = paired.finish(paired.queries_seen)
            present = col_i != topk.EMPTY_ID
            rows = np.nonzero(present)[0]
            items = global_index[n_own + rows]
            yield _partial_batch(chunk.ids[items - lo], col_i[present] + first, query_ids[col_i[present]],
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
    return queries.mapInArrow(_symmetric_function(chunk_bc, bounds_bc, k, block_rows, min_score, dim), PARTIAL)


# --------------------------------------------------------------------------------------------
# 4. Rank and write

def rank_items(table, k: int):
    """PARTIAL rows of whole items (any order) -> NEIGHBOURS rows: per item the k best in the
    canonical order (score descending, then smaller neighbour index), ranks 1..n, sorted by item."""
    import pyarrow as pa

    schema = schemas.arrow_schema(schemas.NEIGHBOURS)
    if table.num_rows == 0:
        return schema.empty_table()
    ids = table.column("item_id").to_numpy(zero_copy_only=False)
    items, codes = np.unique(ids, return_inverse=True)
    index = table.column("neighbour_index").to_numpy()
    best_s, best_i = topk.keep_best(codes, index, table.column("score").to_numpy(), len(items), k)
    present = best_i != topk.EMPTY_ID
    rows, slots = np.nonzero(present)
    # The neighbour id of each chosen index, found through any row that carries that index.
    known, first = np.unique(index, return_index=True)
    neighbour_ids = table.column("neighbour_id").take(pa.array(first[np.searchsorted(known, best_i[present])]))
    return pa.table([pa.array(items[rows], pa.string()), pa.array(slots + 1, pa.int32()),
                     neighbour_ids.combine_chunks(), pa.array(best_s[present], pa.float32())], schema=schema)


def _whole_items(batches) -> Iterator:
    """Tables of complete items from batches sorted by item_id, where one item's rows may span
    two batches: the last item of each batch waits for the next."""
    import pyarrow as pa

    held = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        if held is not None:
            table = pa.concat_tables([held, table])
        ids = table.column("item_id")
        last = ids[table.num_rows - 1].as_py()
        cut = table.num_rows
        while cut > 0 and ids[cut - 1].as_py() == last:
            cut -= 1
        if cut:
            yield table.slice(0, cut)
        held = table.slice(cut)
    if held is not None and held.num_rows:
        yield held


def _write_function(directory: str, k: int, s3: Optional[S3Config], row_group_rows: int):
    def write(batches):
        import pyarrow as pa
        from pyspark import TaskContext

        from lookalike.io.partfiles import PartWriter

        partition = TaskContext.get().partitionId()
        writer = None
        items = 0
        first = last = None
        try:
            for table in _whole_items(batches):
                ranked = rank_items(table, k)
                if ranked.num_rows == 0:
                    continue
                if writer is None:
                    writer = PartWriter(directory, f"part-{partition:05d}.parquet",
                                        schemas.arrow_schema(schemas.NEIGHBOURS), s3, row_group_rows,
                                        sorting_columns=("item_id", "rank"))
                column = ranked.column("item_id")
                first = first if first is not None else column[0].as_py()
                last = column[ranked.num_rows - 1].as_py()
                items += int((ranked.column("rank").to_numpy() == 1).sum())
                writer.add(ranked)
            if writer is None:
                return
            written = writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        yield pa.RecordBatch.from_pylist(
            [{"partition": partition, "path": written["path"], "rows": written["rows"], "items": items,
              "row_groups": written["row_groups"], "first_id": first, "last_id": last}],
            schema=pa.schema([("partition", pa.int32()), ("path", pa.string()), ("rows", pa.int64()),
                              ("items", pa.int64()), ("row_groups", pa.int32()), ("first_id", pa.string()),
                              ("last_id", pa.string())]))

    return write


def score_and_write(queries, chunk_bc, k: int, block_rows: int, min_score: Optional[float], dim: int,
                    directory: str, s3: Optional[S3Config], row_group_rows: int):
    """``score`` then ``write_ranked`` in the same Python function, for when one chunk holds every
    candidate: the partial rows never travel back to the JVM."""
    scorer = _score_function(chunk_bc, k, block_rows, min_score, dim)
    writer = _write_function(directory, k, s3, row_group_rows)
    return queries.mapInArrow(lambda batches: writer(scorer(batches)), WRITTEN)


def write_ranked(partials, directory: str, k: int, s3: Optional[S3Config], row_group_rows: int):
    """PARTIAL rows, range-partitioned and sorted by item_id -> one Parquet file per non-empty
    partition under ``directory``, row groups of about ``row_group_rows`` rows cut between items
    (neighbours.row_group_rows: what a point lookup reads); returns WRITTEN rows (one per file)."""
    return partials.mapInArrow(_write_function(directory, k, s3, row_group_rows), WRITTEN)
