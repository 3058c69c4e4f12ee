"""Ranking and writing the neighbour table: PARTIAL rows (any number of partial lists per item, from
any number of chunks or IVF groups) merged per item into NEIGHBOURS rows, ranks 1..k, and written
by the tasks themselves, one Parquet file per partition (lookalike.io.partfiles)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np

from lookalike import schemas
from lookalike.config import S3Config
from lookalike.io.partfiles import PartWriter
from lookalike.neighbours import topk

WRITTEN = "partition int, path string, rows long, items long, row_groups int, first_id string, last_id string"


@dataclass
class Scored:
    """What a scoring strategy hands to the write step: PARTIAL rows to merge, or, when its tasks
    already wrote the table, their WRITTEN rows; and its entries for the run summary."""

    partials: Any = None  # DataFrame of PARTIAL rows
    written: Optional[list] = None  # WRITTEN rows as dicts
    summary: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)  # seconds per phase


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


def score_and_write(queries, scorer, directory: str, k: int, s3: Optional[S3Config], row_group_rows: int):
    """``scorer`` (Arrow batches of ``queries`` -> PARTIAL batches, in item order) then
    ``write_ranked`` in the same Python function, for when one chunk holds every candidate: the
    partial rows never travel back to the JVM."""
    writer = _write_function(directory, k, s3, row_group_rows)
    return queries.mapInArrow(lambda batches: writer(scorer(batches)), WRITTEN)


def write_ranked(partials, directory: str, k: int, s3: Optional[S3Config], row_group_rows: int):
    """PARTIAL rows, range-partitioned and sorted by item_id -> one Parquet file per non-empty
    partition under ``directory``, row groups of about ``row_group_rows`` rows cut between items
    (neighbours.row_group_rows: what a point lookup reads); returns WRITTEN rows (one per file)."""
    return partials.mapInArrow(_write_function(directory, k, s3, row_group_rows), WRITTEN)


def merge_and_write(partials, partitions: int, directory: str, k: int, s3: Optional[S3Config],
                    row_group_rows: int):
    """PARTIAL rows in any order -> ``write_ranked`` once each item's rows are together, in
    ``partitions`` disjoint, sorted id ranges; returns WRITTEN rows."""
    merged = partials.repartitionByRange(partitions, "item_id").sortWithinPartitions("item_id")
    return write_ranked(merged, directory, k, s3, row_group_rows)


def write_empty(directory: str, s3: Optional[S3Config]) -> None:
    """One empty file, for when no item has a neighbour (e.g. min_score above every score): the
    table is still readable, with its schema."""
    PartWriter(directory, "part-00000.parquet", schemas.arrow_schema(schemas.NEIGHBOURS), s3).close()
