"""One pass over every item against a broadcast chunk of changed items (neighbours.incremental,
duplicates.incremental): the items' new entries among the changed candidates, and the changed
items' own lists among every candidate, from one read of the catalogue. And the Arrow plumbing of
the lists those passes and the merge produce (LISTS rows)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from lookalike.neighbours import arrow, rules, topk, watch
from lookalike.neighbours.chunks import rows_per_chunk
from lookalike.neighbours.incremental import Merged, full_list
from lookalike.neighbours.prepare import PREPARED, Prepared, candidate_offsets
from lookalike.neighbours.write import _whole_items, rank_items

LISTS = "item_id string, neighbour_ids array<string>, scores array<float>, bound_score float, bound_id string"
# What a pass over every item yields: an item's new entries (own false), or a chunk item's partial
# own list from one task (own true, neighbour indexes global, for rank_items).
STREAMED = (
    "item_id string, own boolean, neighbour_indexes array<bigint>, neighbour_ids array<string>, scores array<float>"
)


def only_rows(ids_bc):
    """PREPARED batches -> only the rows whose id is in ``ids_bc``."""

    def select(batches):
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = pa.array(sorted(ids_bc.value), pa.string())
        for batch in batches:
            yield batch.filter(pc.is_in(batch.column(batch.schema.get_field_index("item_id")), value_set=ids))

    return select


@dataclass(frozen=True)
class Changed:
    """A chunk of changed items, as broadcast: ids sorted, unit vectors, rule codes, candidacy."""

    ids: np.ndarray
    vectors: np.ndarray
    codes: np.ndarray | None
    candidate: np.ndarray  # bool


def changed_chunks(ordered, ids_bc, dim: int, layout: rules.Layout, chunk_rows: int) -> list[Changed]:
    """The valid items of ``ids_bc`` collected to the driver in id order, cut into chunks."""
    rows = ordered.filter("valid").mapInArrow(only_rows(ids_bc), PREPARED)
    table = arrow.to_arrow(rows.select("item_id", "vector", "codes", "is_candidate")).combine_chunks()
    if not table.num_rows:
        return []
    ids = np.array(table.column("item_id").to_pylist(), dtype=object)
    vectors = arrow.vectors(table.column("vector").chunk(0), dim)
    codes = rules.codes_of(table.column("codes").chunk(0), layout)
    candidate = table.column("is_candidate").to_numpy(zero_copy_only=False).astype(bool)
    return [
        Changed(
            ids[at : at + chunk_rows],
            np.ascontiguousarray(vectors[at : at + chunk_rows]),
            None if codes is None else codes[at : at + chunk_rows],
            candidate[at : at + chunk_rows],
        )
        for at in range(0, len(ids), chunk_rows)
    ]


def stream_function(chunk_bc, bounds_bc, depth: int, block_rows: int, min_score, dim: int, layout, new_entries: bool):
    """ORDERED batches (every row, in partition order) -> STREAMED rows: with ``new_entries``, each
    valid item's best ``depth`` among the chunk's candidates; always, each chunk item's best
    ``depth`` among this task's candidates (one partial list per chunk item and task)."""

    def score(batches):
        import pyarrow as pa
        from pyspark import TaskContext

        chunk: Changed = chunk_bc.value
        first = int(bounds_bc.value[TaskContext.get().partitionId()])  # global index of the first candidate
        offered = chunk.ids[chunk.candidate]
        offered_vectors = np.ascontiguousarray(chunk.vectors[chunk.candidate])
        offered_codes = None if chunk.codes is None else chunk.codes[chunk.candidate]
        own_s: list = []
        own_i: list = []
        own_ids: dict = {}
        names = [f.split()[0] for f in STREAMED.split(", ")]
        for batch in batches:
            column = batch.schema.get_field_index
            batch = batch.filter(batch.column(column("valid")))
            if batch.num_rows == 0:
                continue
            ids = batch.column(column("item_id")).to_numpy(zero_copy_only=False)
            unit = arrow.vectors(batch.column(column("vector")), dim)
            codes = rules.codes_of(batch.column(column("codes")), layout)
            usable = batch.column(column("is_candidate")).to_numpy(zero_copy_only=False).astype(bool)
            if new_entries and len(offered):
                for start in range(0, len(ids), block_rows):
                    block = slice(start, start + block_rows)
                    scores, found = topk.topk_block(
                        unit[block],
                        offered_vectors,
                        depth,
                        self_index=topk.self_positions(ids[block], offered),
                        min_score=min_score,
                        rules=rules.make(layout, codes[block], offered_codes) if layout.active else None,
                    )
                    yield entries_batch(ids[block], offered, scores, found)
            if usable.any():
                candidates = np.flatnonzero(usable)
                scores, found = topk.topk_block(
                    chunk.vectors,
                    unit[candidates],
                    depth,
                    self_index=topk.self_positions(chunk.ids, ids[candidates]),
                    offset=first,
                    min_score=min_score,
                    rules=rules.make(layout, chunk.codes, codes[candidates]) if layout.active else None,
                )
                own_s.append(scores)
                own_i.append(found)
                present = found != topk.EMPTY_ID
                # Global index -> id of the candidates found, for the merged lists below.
                own_ids.update(
                    zip(found[present].tolist(), ids[candidates][found[present] - first].tolist(), strict=True)
                )
                first += len(candidates)
        if own_s:
            # The chunk items' best across every batch of this task (global indexes order ties).
            best_s, best_i = topk.merge(own_s, own_i, depth)
            out: dict = {name: [] for name in names}
            for row, item in enumerate(chunk.ids):
                present = best_i[row] != topk.EMPTY_ID
                if present.any():
                    out["item_id"].append(item)
                    out["own"].append(True)
                    out["neighbour_indexes"].append(best_i[row][present].tolist())
                    out["neighbour_ids"].append([own_ids[i] for i in best_i[row][present].tolist()])
                    out["scores"].append(best_s[row][present].tolist())
            if out["item_id"]:
                yield pa.RecordBatch.from_pydict(out, schema=arrow_schema(STREAMED))

    return score


def entries_batch(item_ids, offered: np.ndarray, scores: np.ndarray, found: np.ndarray):
    """STREAMED rows (own false) of a block's new entries, built as Arrow lists without a Python
    loop per item: every pass runs this for every item of the catalogue."""
    import pyarrow as pa

    present = found != topk.EMPTY_ID
    counts = present.sum(axis=1)
    rows = np.flatnonzero(counts)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts[rows])]).astype(np.int32))
    neighbours = offered[found[present]]
    return pa.RecordBatch.from_arrays(
        [
            pa.array(item_ids[rows], pa.string()),
            pa.array(np.zeros(len(rows), bool)),
            pa.ListArray.from_arrays(offsets, pa.array(np.full(len(neighbours), -1, np.int64))),
            pa.ListArray.from_arrays(offsets, pa.array(neighbours, pa.string())),
            pa.ListArray.from_arrays(offsets, pa.array(scores[present], pa.float32())),
        ],
        schema=arrow_schema(STREAMED),
    )


def lists_function(depth: int):
    """PARTIAL rows sorted by item -> LISTS rows: each item's best ``depth``, bounded when full."""

    def lists(batches):
        import pyarrow as pa

        for table in _whole_items(batches):
            ranked = rank_items(table, depth).to_pydict()
            out: dict = {"item_id": [], "neighbour_ids": [], "scores": [], "bound_score": [], "bound_id": []}
            rows = range(len(ranked["item_id"]))
            for item, group in itertools.groupby(rows, key=ranked["item_id"].__getitem__):
                at = list(group)
                made = full_list([ranked["neighbour_id"][i] for i in at], [ranked["score"][i] for i in at], depth)
                append_list(out, item, made)
            yield pa.RecordBatch.from_pydict(out, schema=arrow_schema(LISTS))

    return lists


def append_list(out: dict, item: str, lists: Merged | None) -> None:
    """One LISTS (or MERGED) row into ``out``'s columns; None: a row to score again."""
    out["item_id"].append(item)
    out["neighbour_ids"].append([] if lists is None else lists.neighbours)
    out["scores"].append([] if lists is None else lists.scores)
    bound = None if lists is None else lists.bound
    out["bound_score"].append(None if bound is None else float(bound.score))
    out["bound_id"].append(None if bound is None else bound.neighbour)
    if "rescore" in out:
        out["rescore"].append(lists is None)


def arrow_schema(ddl: str):
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "float": pa.float32(),
        "boolean": pa.bool_(),
        "int": pa.int32(),
        "long": pa.int64(),
        "array<string>": pa.list_(pa.string()),
        "array<float>": pa.list_(pa.float32()),
        "array<bigint>": pa.list_(pa.int64()),
    }
    return pa.schema([(name, types[kind]) for name, kind in (f.split() for f in ddl.split(", "))])


def own_lists(streamed, partitions: int, depth: int):
    """LISTS rows of the chunk items from their partial own lists (STREAMED rows with own)."""
    from pyspark.sql import functions as F

    partials = (
        streamed.filter("own")
        .select("item_id", F.explode(F.arrays_zip("neighbour_indexes", "neighbour_ids", "scores")).alias("e"))
        .select(
            "item_id",
            F.col("e.neighbour_indexes").alias("neighbour_index"),
            F.col("e.neighbour_ids").alias("neighbour_id"),
            F.col("e.scores").alias("score"),
        )
    )
    ordered = partials.repartitionByRange(partitions, "item_id").sortWithinPartitions("item_id")
    return ordered.mapInArrow(lists_function(depth), LISTS)


def stream(spark, run_id, items: Prepared, settings, held, ids: set, depth: int, new_entries: bool, label: str):
    """STREAMED rows of one pass per chunk of ``ids`` over every item (persisted), and the pairs
    it scored."""
    from pyspark import StorageLevel

    sc = spark.sparkContext
    ids_bc = sc.broadcast(frozenset(ids))
    bounds_bc = sc.broadcast(candidate_offsets(items.ordered))
    held.extend([ids_bc, bounds_bc])
    chunks = changed_chunks(
        items.ordered, ids_bc, items.dim, items.layout, rows_per_chunk(settings.broadcast_max_mb, items.dim)
    )
    passes, pairs = [], 0
    for number, chunk in enumerate(chunks, 1):
        chunk_bc = sc.broadcast(chunk)
        held.append(chunk_bc)
        function = stream_function(
            chunk_bc, bounds_bc, depth, settings.block_rows, settings.min_score, items.dim, items.layout, new_entries
        )
        streamed = items.ordered.mapInArrow(function, STREAMED).persist(StorageLevel.MEMORY_AND_DISK)
        held.append(streamed)
        watch.collect(spark, run_id, f"{label} {number}/{len(chunks)}", items.queries, streamed.groupBy().count())
        chunk_bc.unpersist()
        passes.append(streamed)
        pairs += len(chunk.ids) * items.candidates + (items.queries * int(chunk.candidate.sum()) if new_entries else 0)
    if not passes:
        return None, 0
    out = passes[0]
    for more in passes[1:]:
        out = out.union(more)
    return out, pairs
