"""Ranking and writing the neighbour table: PARTIAL rows (any number of partial lists per item, from
any number of chunks or IVF groups) merged per item into NEIGHBOURS rows, ranks 1..k, and written
by the tasks themselves, one Parquet file per partition (lookalike.io.partfiles)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lookalike import schemas
from lookalike.config import S3Config
from lookalike.io.partfiles import PartWriter, write_part
from lookalike.neighbours import topk

WRITTEN = "partition int, path string, rows long, items long, row_groups int, first_id string, last_id string"


@dataclass
class Scored:
    """What a scoring strategy hands to the write step: PARTIAL rows to merge, or, when its tasks
    already wrote the table, their WRITTEN rows; and its entries for the run summary."""

    partials: Any = None  # DataFrame of PARTIAL rows
    written: list | None = None  # WRITTEN rows as dicts
    summary: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)  # seconds per phase
    state: dict | None = None  # neighbours.incremental: the summary its lists table is committed with
    centroids: Any = None  # method ivf: the (nlist, d) centroids the lists were made with


@dataclass(frozen=True)
class HiddenGroups:
    """neighbours.hide_duplicates, as the writer applies it: the near-duplicate group of each
    candidate that has one, and how deep the lists were scored (keys.depth)."""

    ids: np.ndarray  # object array of item ids, sorted
    groups: np.ndarray  # int64 group code of each
    depth: int

    def group_of(self, neighbour_ids: np.ndarray) -> np.ndarray:
        """Group codes of ``neighbour_ids``; -1 - position for those without a group, so that
        they never share one."""
        if not len(self.ids):
            return -1 - np.arange(len(neighbour_ids))
        at = np.minimum(np.searchsorted(self.ids, neighbour_ids), len(self.ids) - 1)
        hit = self.ids[at] == neighbour_ids
        return np.where(hit, self.groups[at], -1 - np.arange(len(neighbour_ids)))


def _one_per_group(rows: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Mask of the entries to keep of lists laid out row by row, best first: the first (best)
    entry of each (row, group), then at most k per row."""
    order = np.lexsort((np.arange(len(rows)), groups, rows))
    key_rows, key_groups = rows[order], groups[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (key_rows[1:] != key_rows[:-1]) | (key_groups[1:] != key_groups[:-1])
    keep = np.zeros(len(rows), dtype=bool)
    keep[order[first]] = True
    kept_rows = rows[keep]
    starts = np.searchsorted(kept_rows, kept_rows, side="left")
    within = np.zeros(len(rows), dtype=np.int64)
    within[keep] = np.arange(len(kept_rows)) - starts
    return keep & (within < k)


def rank_items(table, k: int, hide: HiddenGroups | None = None):
    """PARTIAL rows of whole items (any order) -> NEIGHBOURS rows: per item the k best in the
    canonical order (score descending, then smaller neighbour index), ranks 1..n, sorted by item.
    With ``hide``, the best ``hide.depth`` are kept one per near-duplicate group, then cut to k."""
    import pyarrow as pa

    schema = schemas.arrow_schema(schemas.NEIGHBOURS)
    if table.num_rows == 0:
        return schema.empty_table()
    ids = table.column("item_id").to_numpy(zero_copy_only=False)
    items, codes = np.unique(ids, return_inverse=True)
    index = table.column("neighbour_index").to_numpy()
    best_s, best_i = topk.keep_best(
        codes, index, table.column("score").to_numpy(), len(items), k if hide is None else hide.depth
    )
    present = best_i != topk.EMPTY_ID
    rows, slots = np.nonzero(present)
    # The neighbour id of each chosen index, found through any row that carries that index.
    known, first = np.unique(index, return_index=True)
    neighbour_ids = table.column("neighbour_id").take(pa.array(first[np.searchsorted(known, best_i[present])]))
    neighbour_ids = neighbour_ids.combine_chunks()
    scores = best_s[present]
    if hide is not None:
        keep = _one_per_group(rows, hide.group_of(neighbour_ids.to_numpy(zero_copy_only=False)), k)
        rows, scores, neighbour_ids = rows[keep], scores[keep], neighbour_ids.filter(pa.array(keep))
        slots = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    return pa.table(
        [
            pa.array(items[rows], pa.string()),
            pa.array(slots + 1, pa.int32()),
            neighbour_ids,
            pa.array(scores, pa.float32()),
        ],
        schema=schema,
    )


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


def lists_to_neighbours(table, k: int, hide: HiddenGroups | None = None):
    """Tables of NEIGHBOUR_LISTS rows (one per item, lists best first, sorted by item) ->
    NEIGHBOURS rows: each list's first k, or with ``hide`` its first ``hide.depth`` kept one per
    near-duplicate group, then cut to k, as ``rank_items`` does."""
    import pyarrow as pa

    schema = schemas.arrow_schema(schemas.NEIGHBOURS)
    lists = table.column("neighbour_ids").combine_chunks()
    lengths = lists.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.repeat(np.arange(table.num_rows), lengths)
    if not len(rows):
        return schema.empty_table()
    slots = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    neighbour_ids = lists.flatten()
    scores = table.column("scores").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    keep = slots < (k if hide is None else hide.depth)
    if hide is not None:
        at = np.flatnonzero(keep)
        groups = hide.group_of(neighbour_ids.take(pa.array(at)).to_numpy(zero_copy_only=False))
        keep[at] = _one_per_group(rows[at], groups, k)
    rows, scores, neighbour_ids = rows[keep], scores[keep], neighbour_ids.filter(pa.array(keep))
    slots = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    items = table.column("item_id").combine_chunks().take(pa.array(rows))
    return pa.table(
        [items, pa.array(slots + 1, pa.int32()), neighbour_ids, pa.array(scores, pa.float32())], schema=schema
    )


def _batch_tables(batches) -> Iterator:
    import pyarrow as pa

    for batch in batches:
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def _write_function(
    directory: str,
    k: int,
    s3: S3Config | None,
    row_group_rows: int,
    hide_bc=None,
    tables=_whole_items,
    rank=rank_items,
):
    """The task that ranks and writes: ``tables`` cuts the task's batches into tables of whole
    items, ``rank`` turns each into NEIGHBOURS rows (PARTIAL rows by default; lists with
    ``write_lists``)."""

    def write(batches):
        import pyarrow as pa
        from pyspark import TaskContext

        partition = TaskContext.get().partitionId()
        seen = {"items": 0, "first": None, "last": None}

        def ranked_tables():
            for table in tables(batches):
                ranked = rank(table, k, None if hide_bc is None else hide_bc.value)
                if ranked.num_rows:
                    column = ranked.column("item_id")
                    seen["first"] = seen["first"] if seen["first"] is not None else column[0].as_py()
                    seen["last"] = column[ranked.num_rows - 1].as_py()
                    seen["items"] += int((ranked.column("rank").to_numpy() == 1).sum())
                yield ranked

        written = write_part(
            ranked_tables(),
            lambda: PartWriter(
                directory,
                f"part-{partition:05d}.parquet",
                schemas.arrow_schema(schemas.NEIGHBOURS),
                s3,
                row_group_rows,
                sorting_columns=("item_id", "rank"),
            ),
        )
        if written is None:
            return
        items, first, last = seen["items"], seen["first"], seen["last"]
        yield pa.RecordBatch.from_pylist(
            [
                {
                    "partition": partition,
                    "path": written["path"],
                    "rows": written["rows"],
                    "items": items,
                    "row_groups": written["row_groups"],
                    "first_id": first,
                    "last_id": last,
                }
            ],
            schema=pa.schema(
                [
                    ("partition", pa.int32()),
                    ("path", pa.string()),
                    ("rows", pa.int64()),
                    ("items", pa.int64()),
                    ("row_groups", pa.int32()),
                    ("first_id", pa.string()),
                    ("last_id", pa.string()),
                ]
            ),
        )

    return write


def score_and_write(queries, scorer, directory: str, k: int, s3: S3Config | None, row_group_rows: int, hide_bc=None):
    """``scorer`` (Arrow batches of ``queries`` -> PARTIAL batches, in item order) then
    ``write_ranked`` in the same Python function, for when one chunk holds every candidate: the
    partial rows never travel back to the JVM."""
    writer = _write_function(directory, k, s3, row_group_rows, hide_bc)
    return queries.mapInArrow(lambda batches: writer(scorer(batches)), WRITTEN)


def write_ranked(partials, directory: str, k: int, s3: S3Config | None, row_group_rows: int, hide_bc=None):
    """PARTIAL rows, range-partitioned and sorted by item_id -> one Parquet file per non-empty
    partition under ``directory``, row groups of about ``row_group_rows`` rows cut between items
    (neighbours.row_group_rows: what a point lookup reads); returns WRITTEN rows (one per file)."""
    return partials.mapInArrow(_write_function(directory, k, s3, row_group_rows, hide_bc), WRITTEN)


def merge_and_write(
    partials, partitions: int, directory: str, k: int, s3: S3Config | None, row_group_rows: int, hide_bc=None
):
    """PARTIAL rows in any order -> ``write_ranked`` once each item's rows are together, in
    ``partitions`` disjoint, sorted id ranges; returns WRITTEN rows."""
    merged = partials.repartitionByRange(partitions, "item_id").sortWithinPartitions("item_id")
    return write_ranked(merged, directory, k, s3, row_group_rows, hide_bc)


def write_lists(lists, partitions: int, directory: str, k: int, s3: S3Config | None, row_group_rows: int, hide_bc=None):
    """NEIGHBOUR_LISTS rows in any order (neighbours.incremental's state) -> the published table,
    as ``merge_and_write`` writes it; returns WRITTEN rows."""
    ordered = lists.repartitionByRange(partitions, "item_id").sortWithinPartitions("item_id")
    writer = _write_function(directory, k, s3, row_group_rows, hide_bc, tables=_batch_tables, rank=lists_to_neighbours)
    return ordered.mapInArrow(writer, WRITTEN)


def write_empty(directory: str, s3: S3Config | None) -> None:
    """One empty file, for when no item has a neighbour (e.g. min_score above every score): the
    table is still readable, with its schema."""
    PartWriter(directory, "part-00000.parquet", schemas.arrow_schema(schemas.NEIGHBOURS), s3).close()
