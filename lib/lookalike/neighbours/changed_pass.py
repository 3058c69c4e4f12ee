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
from lookalike.neighbours.prepare import Prepared
from lookalike.neighbours.write import _whole_items, rank_items

LISTS = "item_id string, neighbour_ids array<string>, scores array<float>, bound_score float, bound_id string"
# What a pass over every item yields: an item's new entries (own false), or a chunk item's partial
# own list from one task (own true, neighbour indexes global, for rank_items).
STREAMED = (
    "item_id string, own boolean, neighbour_indexes array<bigint>, neighbour_ids array<string>, scores array<float>"
)


@dataclass(frozen=True)
class Changed:
    """A chunk of changed items, as broadcast: ids sorted, unit vectors, rule codes, candidacy."""

    ids: np.ndarray
    vectors: np.ndarray
    codes: np.ndarray | None
    candidate: np.ndarray  # bool


def changed_chunks(ordered, ids: set, dim: int, layout: rules.Layout, chunk_rows: int) -> list[Changed]:
    """The valid items of ``ids`` collected to the driver in id order, cut into chunks. Picked out
    in the JVM (a broadcast join on the ids), so that the catalogue's vectors never cross to
    Python for it."""
    from pyspark.sql import functions as F

    wanted = ordered.sparkSession.createDataFrame([(item,) for item in sorted(ids)], "item_id string")
    rows = ordered.filter("valid").join(F.broadcast(wanted), "item_id")
    table = arrow.to_arrow(rows.select("item_id", "vector", "codes", "is_candidate")).combine_chunks()
    if not table.num_rows:
        return []
    table = table.sort_by("item_id").combine_chunks()
    ids_sorted = np.array(table.column("item_id").to_pylist(), dtype=object)
    vectors = arrow.vectors(table.column("vector").chunk(0), dim)
    codes = rules.codes_of(table.column("codes").chunk(0), layout)
    candidate = table.column("is_candidate").to_numpy(zero_copy_only=False).astype(bool)
    return [
        Changed(
            ids_sorted[at : at + chunk_rows],
            np.ascontiguousarray(vectors[at : at + chunk_rows]),
            None if codes is None else codes[at : at + chunk_rows],
            candidate[at : at + chunk_rows],
        )
        for at in range(0, len(ids_sorted), chunk_rows)
    ]


def stream_function(
    chunk_bc,
    bounds_bc,
    depth: int,
    block_rows: int,
    min_score,
    dim: int,
    layout,
    new_entries: bool,
    shared: bool,
    probed: tuple | None = None,
):
    """ORDERED batches (every row, in partition order) -> STREAMED rows: with ``new_entries``, each
    valid item's best ``depth`` among the chunk's candidates; always, each chunk item's best
    ``depth`` among this task's candidates (one partial list per chunk item and task).
    ``shared``: no rules and every valid item a candidate, so both come from one matrix product
    (``_shared_pass``). ``probed``: (centroids, nprobe) of an IVF search, whose rule (a candidate
    only in the lists its query probes) then applies too."""

    def score(batches):
        from pyspark import TaskContext

        chunk: Changed = chunk_bc.value
        first = int(bounds_bc.value[TaskContext.get().partitionId()])  # global index of the first candidate
        if shared and new_entries:
            yield from _shared_pass(batches, chunk, first, depth, block_rows, min_score, dim)
        else:
            yield from _rules_pass(
                batches, chunk, first, depth, block_rows, min_score, dim, layout, new_entries, probed
            )

    return score


def _rules_pass(
    batches,
    chunk: Changed,
    first: int,
    depth: int,
    block_rows: int,
    min_score,
    dim: int,
    layout,
    new_entries,
    probed: tuple | None = None,
):
    """``stream_function`` in general: the rules and candidacy applied in the kernel, the rows
    and the columns each from their own matrix product."""
    import pyarrow as pa

    chunk_probes, chunk_lists = _probes(chunk.vectors, probed)

    offered = chunk.ids[chunk.candidate]
    offered_vectors = np.ascontiguousarray(chunk.vectors[chunk.candidate])
    offered_codes = None if chunk.codes is None else chunk.codes[chunk.candidate]
    own_s: list = []
    own_i: list = []
    own_ids: dict = {}
    names = [f.split()[0] for f in STREAMED.split(", ")]
    for batch, ids, unit in _valid_rows(batches, dim):
        column = batch.schema.get_field_index
        codes = rules.codes_of(batch.column(column("codes")), layout)
        usable = batch.column(column("is_candidate")).to_numpy(zero_copy_only=False).astype(bool)
        batch_probes, batch_lists = _probes(unit, probed)
        if new_entries and len(offered):
            for start in range(0, len(ids), block_rows):
                block = slice(start, start + block_rows)
                scores, found = topk.topk_block(
                    unit[block],
                    offered_vectors,
                    depth,
                    self_index=topk.self_positions(ids[block], offered),
                    min_score=min_score,
                    rules=_rules(
                        rules.make(layout, codes[block], offered_codes) if codes is not None else None,
                        None if batch_probes is None else batch_probes[block],
                        None if chunk_lists is None else chunk_lists[chunk.candidate],
                    ),
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
                rules=_rules(
                    rules.make(layout, chunk.codes, codes[candidates]) if codes is not None else None,
                    chunk_probes,
                    None if batch_lists is None else batch_lists[candidates],
                ),
            )
            own_s.append(scores)
            own_i.append(found)
            present = found != topk.EMPTY_ID
            # Global index -> id of the candidates found, for the merged lists below.
            own_ids.update(zip(found[present].tolist(), ids[candidates][found[present] - first].tolist(), strict=True))
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


def _probes(vectors: np.ndarray, probed: tuple | None) -> tuple:
    """(the lists each vector probes, its own list) under IVF's ``probed`` (centroids, nprobe), as
    the IVF search assigns them (ivf_stage.assign); (None, None) without IVF."""
    if probed is None:
        return None, None
    from lookalike.neighbours import ivf

    return ivf.assignment(vectors, *probed)


def _rules(mask, probes, lists):
    return mask if probes is None else rules.with_probes(mask, probes, lists)


def _shared_pass(batches, chunk: Changed, first: int, depth: int, block_rows: int, min_score, dim: int):
    """``stream_function`` when no rule forbids a pair and every item is a candidate: the scores
    of a block of items against the chunk, read by rows (the items' new entries) and by columns
    (the chunk items' partial own lists), one matrix product for both (``topk.PairScorer``).
    The scorer knows no self column, so both sides keep one entry more and drop it: a row that
    is itself a chunk item is stale (its new entries are never merged), and a chunk item's own
    row is removed from its column before the cut to ``depth``."""

    scorer = topk.PairScorer(chunk.vectors, depth + 1, min_score=min_score)
    task_ids: list = []
    for _, ids, unit in _valid_rows(batches, dim):
        task_ids.append(ids)
        for start in range(0, len(ids), block_rows):
            block = slice(start, start + block_rows)
            scores, found = scorer.add(unit[block])
            fresh = topk.self_positions(ids[block], chunk.ids) < 0
            yield entries_batch(ids[block][fresh], chunk.ids, scores[fresh, :depth], found[fresh, :depth])
    if not task_ids:
        return
    ids = np.concatenate(task_ids)
    best_s, best_i = scorer.finish(scorer.queries_seen)
    itself = topk.self_positions(chunk.ids, ids)  # the task's rows are in id order
    drop = (best_i == itself[:, None]) & (itself[:, None] >= 0)
    order = np.argsort(drop, axis=1, kind="stable")[:, :depth]
    best_s = np.take_along_axis(best_s, order, axis=1)
    best_i = np.take_along_axis(best_i, order, axis=1)
    best_i[np.take_along_axis(drop, order, axis=1)] = topk.EMPTY_ID
    yield entries_batch(chunk.ids, ids, best_s, best_i, first)


def entries_batch(item_ids, offered: np.ndarray, scores: np.ndarray, found: np.ndarray, first: int | None = None):
    """STREAMED rows of a block's lists (``found``: positions in ``offered``), built as Arrow lists
    without a Python loop per item: every pass runs this for every item of the catalogue. New
    entries (own false) without ``first``; with it, own partial lists whose neighbours' global
    indexes are ``first`` + position."""
    import pyarrow as pa

    present = found != topk.EMPTY_ID
    counts = present.sum(axis=1)
    rows = np.flatnonzero(counts)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts[rows])]).astype(np.int32))
    positions = found[present]
    indexes = np.full(len(positions), -1, np.int64) if first is None else positions + first
    return pa.RecordBatch.from_arrays(
        [
            pa.array(item_ids[rows], pa.string()),
            pa.array(np.full(len(rows), first is not None)),
            pa.ListArray.from_arrays(offsets, pa.array(indexes, pa.int64())),
            pa.ListArray.from_arrays(offsets, pa.array(offered[positions], pa.string())),
            pa.ListArray.from_arrays(offsets, pa.array(scores[present], pa.float32())),
        ],
        schema=arrow_schema(STREAMED),
    )


def _valid_rows(batches, dim: int):
    """(batch, item ids, unit vectors) of the valid rows of each ORDERED batch that has any."""
    for batch in batches:
        column = batch.schema.get_field_index
        batch = batch.filter(batch.column(column("valid")))
        if batch.num_rows:
            ids = batch.column(column("item_id")).to_numpy(zero_copy_only=False)
            yield batch, ids, arrow.vectors(batch.column(column("vector")), dim)


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


def append_list(out: dict, item: str, lists: Merged) -> None:
    """One LISTS row into ``out``'s columns."""
    out["item_id"].append(item)
    out["neighbour_ids"].append(lists.neighbours)
    out["scores"].append(lists.scores)
    bound = lists.bound
    out["bound_score"].append(None if bound is None else float(bound.score))
    out["bound_id"].append(None if bound is None else bound.neighbour)


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
    ordered = partials.repartition(partitions, "item_id").sortWithinPartitions("item_id")
    return ordered.mapInArrow(lists_function(depth), LISTS)


def stream(
    spark,
    run_id,
    items: Prepared,
    settings,
    held,
    ids: set,
    depth: int,
    new_entries: bool,
    label: str,
    bounds_bc,
    probed: tuple | None = None,
):
    """STREAMED rows of one pass per chunk of ``ids`` over every item (persisted), and the pairs
    it scored. ``bounds_bc``: the broadcast ``prepare.candidate_offsets``; ``probed``:
    (centroids, nprobe) of an IVF search, scored with its rule."""
    from pyspark import StorageLevel

    sc = spark.sparkContext
    chunks = changed_chunks(
        items.ordered, ids, items.dim, items.layout, rows_per_chunk(settings.broadcast_max_mb, items.dim)
    )
    passes, pairs = [], 0
    for number, chunk in enumerate(chunks, 1):
        chunk_bc = sc.broadcast(chunk)
        held.append(chunk_bc)
        function = stream_function(
            chunk_bc,
            bounds_bc,
            depth,
            settings.block_rows,
            settings.min_score,
            items.dim,
            items.layout,
            new_entries,
            shared=probed is None and not items.layout.active and items.candidates == items.queries,
            probed=probed,
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
