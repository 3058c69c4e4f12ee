"""Preparing the embeddings for scoring: one ordered, normalised copy, inspected and checked.

1. ``ordered_items``: the table range-partitioned and sorted by item_id (in the JVM, on the raw
   rows), then every vector L2-normalised once on the executors and packed as float32 bytes with a
   validity flag (finite, non-zero norm). The job caches this one DataFrame; its order serves the
   candidates (collected to the driver partition by partition, already in id order, so a
   candidate's index is its rank by id) and the output files (disjoint, sorted id ranges).
2. ``inspect``: one pass over it for the counts, the kinds of embedding (which must agree),
   duplicate ids and examples of invalid ones; ``validate`` turns those into errors, warnings and
   the summary's counts.
3. ``candidate_offsets``: each partition's first global candidate index, for the stages that
   score a partition's own candidates where they are (symmetric exact, IVF).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lookalike.errors import InputError, SchemaMismatchError
from lookalike.neighbours import rules, topk

log = logging.getLogger(__name__)

PREPARED = (
    "item_id string, model string, pooling string, weights string, dim int, length int, "
    "is_candidate boolean, valid boolean, vector binary, codes array<bigint>"
)
# The rows of PREPARED that may be recommended.
USABLE = "valid AND is_candidate"
# What must be equal for two embeddings to be comparable.
KIND = ("model", "pooling", "weights", "dim", "length")
SAMPLE_IDS = 5
# Queries per partition when neighbours.partitions is 0 (auto): tasks short enough for progress
# and retries, files of a few MB.
QUERIES_PER_PARTITION = 20_000


@dataclass(frozen=True)
class Prepared:
    """``ordered_items``, persisted and checked: what the scoring stages plan with."""

    ordered: Any  # DataFrame of PREPARED rows
    partitions: int
    queries: int  # valid items: each gets a neighbour list
    candidates: int  # valid items that may be recommended
    dim: int
    layout: rules.Layout = rules.Layout()  # what the ``codes`` column holds
    depth: int = 0  # neighbours scored per item before the writer's cut to k (0: k)
    hide: Any = None  # broadcast write.HiddenGroups (neighbours.hide_duplicates), or None
    # PREPARED rows of the queries, when only some valid items are (neighbours.incremental); None:
    # every valid item. ``queries`` counts them.
    query_rows: Any = None


def partition_count(spark, embeddings, configured: int) -> int:
    """neighbours.partitions, or when 0 (auto) two per core, and more for large tables: enough
    to balance, few enough that small tables are not all overhead (the symmetric exact scoring
    does (P + 1) / 2P of the full work: 62% at P = 4, 56% at 8)."""
    if configured:
        return configured
    # Parquet footers give the row count without reading the vectors.
    return max(2 * spark.sparkContext.defaultParallelism, math.ceil(embeddings.count() / QUERIES_PER_PARTITION))


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
                matrix = values[offsets[0] : offsets[-1]].reshape(n, length)
            else:
                matrix = values[offsets[rows][:, None] + np.arange(length)]
            unit, ok = topk.normalise(matrix)
            valid[rows] = ok
            blobs[rows] = [row.tobytes() for row in unit]
        field = batch.schema.get_field_index
        yield pa.RecordBatch.from_arrays(
            [batch.column(field(name)) for name in ("item_id", "model", "pooling", "weights")]
            + [
                batch.column(field("dim")).cast(pa.int32()),
                pa.array(lengths, pa.int32()),
                batch.column(field("is_candidate")),
                pa.array(valid),
                pa.array(blobs, pa.binary()),
                batch.column(field("codes")),
            ],
            names=[
                "item_id",
                "model",
                "pooling",
                "weights",
                "dim",
                "length",
                "is_candidate",
                "valid",
                "vector",
                "codes",
            ],
        )


def ordered_items(embeddings, partitions: int, candidate_ids=None):
    """Embeddings table -> PREPARED rows, range-partitioned and sorted by item_id.

    ``candidate_ids`` (a DataFrame with item_id) marks the items that may be recommended; None
    marks every item. The rule codes come from a ``codes`` column of ``embeddings`` when it has
    one (``lookalike.neighbours.keys.attach``), else every item has none. Ordering happens before
    the Python step so that Spark's range sampling reads the raw rows in the JVM instead of
    running the normalisation twice."""
    from pyspark.sql import functions as F

    codes = F.col("codes") if "codes" in embeddings.columns else F.array().cast("array<bigint>").alias("codes")
    rows = embeddings.select("item_id", "model", "pooling", "weights", "dim", "embedding", codes)
    if candidate_ids is None:
        rows = rows.withColumn("is_candidate", F.lit(True))
    else:
        flagged = (
            candidate_ids.select(F.col("item_id").cast("string")).distinct().withColumn("is_candidate", F.lit(True))
        )
        rows = rows.join(flagged, "item_id", "left").withColumn(
            "is_candidate", F.coalesce(F.col("is_candidate"), F.lit(False))
        )
    return (
        rows.repartitionByRange(partitions, "item_id")
        .sortWithinPartitions("item_id")
        .mapInArrow(_prepare_batches, PREPARED)
    )


# --------------------------------------------------------------------------------------------
# 2. Inspect and validate


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
        grouped = (
            table.append_column("candidate", usable)
            .group_by(list(KIND))
            .aggregate([("valid", "count"), ("valid", "sum"), ("candidate", "sum")])
        )
        for row in grouped.to_pylist():
            counts = kinds.setdefault(tuple(row[c] for c in KIND), [0, 0, 0])
            counts[0] += row["valid_count"]
            counts[1] += row["valid_sum"] or 0
            counts[2] += row["candidate_sum"] or 0
    stats = {
        "kinds": [[*key, *counts] for key, counts in kinds.items()],
        "duplicates": duplicates,
        "duplicate_sample": duplicate_sample[:SAMPLE_IDS],
        "invalid_sample": invalid_sample[:SAMPLE_IDS],
    }
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
        "kinds": sorted(
            (
                {**dict(zip(KIND, key, strict=True)), "rows": c[0], "valid": c[1], "candidates": c[2]}
                for key, c in kinds.items()
            ),
            key=lambda g: -g["rows"],
        ),
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
            f"whole input with one model configuration, or point output.embeddings at one of them."
        )
    if real and real[0]["dim"] != real[0]["length"]:
        raise SchemaMismatchError(
            f"the embeddings table {table} is inconsistent: its dim column says {real[0]['dim']} but "
            f"the embeddings hold {real[0]['length']} values ({_kind(real[0])}); re-run the embed job."
        )
    return real[0] if real else {}


def _kind(group: dict) -> str:
    return f"model={group['model']} pooling={group['pooling']} weights={group['weights']} dim={group['length']}"


def validate(seen: dict, ordered, candidate_ids, table: str) -> dict:
    """``inspect``'s findings checked: InputError or SchemaMismatchError when nothing sensible can
    be computed, a warning for what is left out; returns the summary's counts and the kind of
    embedding (items, queries, invalid, candidates, candidates_unknown, model, dim, ...)."""
    from pyspark.sql import functions as F

    kinds = seen["kinds"]
    total = sum(g["rows"] for g in kinds)
    if not total:
        raise InputError(f"the embeddings table {table} has no rows")
    if seen["duplicates"]:
        raise InputError(
            f"the embeddings table {table} has {seen['duplicates']} duplicate item ids, e.g. "
            f"{', '.join(map(repr, seen['duplicate_sample']))}; re-run the embed job"
        )
    kind = check_comparable(kinds, table)
    valid = sum(g["valid"] for g in kinds)
    invalid = total - valid
    if invalid:
        log.warning(
            "%d of %d embeddings are left out (zero norm or non-finite values), e.g. %s",
            invalid,
            total,
            ", ".join(seen["invalid_sample"]),
        )
    if not valid:
        raise InputError(
            f"the embeddings table {table} has no usable vector: all {total} "
            f"have zero norm or non-finite values (e.g. {', '.join(seen['invalid_sample'])})"
        )
    if str(kind["weights"]).startswith("random-init"):
        log.warning(
            "the embeddings come from random-init weights (%s): these neighbours are not real recommendations",
            kind["weights"],
        )

    n_candidates = sum(g["candidates"] for g in kinds)
    unknown, unknown_sample = 0, []
    if candidate_ids is not None:
        wanted = candidate_ids.select(F.col("item_id").cast("string")).distinct()
        unknown = wanted.count() - n_candidates
        if unknown:
            usable = ordered.filter(USABLE).select("item_id")
            missing = wanted.join(usable, "item_id", "left_anti").limit(SAMPLE_IDS)
            unknown_sample = [r.item_id for r in missing.collect()]
            log.warning(
                "%d ids in neighbours.candidates have no usable embedding and cannot be recommended, e.g. %s",
                unknown,
                ", ".join(map(str, unknown_sample)),
            )
        if not n_candidates:
            raise InputError(
                f"neighbours.candidates matches no item with a usable embedding in "
                f"{table}; nothing could be recommended"
            )
    return {
        "items": total,
        "queries": valid,
        "invalid": invalid,
        "invalid_sample": seen["invalid_sample"],
        "candidates": n_candidates,
        "candidates_unknown": unknown,
        "candidates_unknown_sample": unknown_sample,
        "model": kind["model"],
        "weights": kind["weights"],
        "pooling": kind["pooling"],
        "dim": kind["length"],
    }


# --------------------------------------------------------------------------------------------
# 3. Where each partition's candidates start


def _count_true(batches):
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark import TaskContext

    n = 0
    for batch in batches:
        n += int(pc.sum(batch.column(0)).as_py() or 0)
    yield pa.RecordBatch.from_pylist(
        [{"partition": TaskContext.get().partitionId(), "rows": n}],
        schema=pa.schema([("partition", pa.int32()), ("rows", pa.int64())]),
    )


def candidate_offsets(ordered) -> np.ndarray:
    """(partitions + 1,) global index of each partition's first usable candidate (a candidate's
    global index is its rank by item_id, as in ``chunks.candidate_chunks``)."""
    flags = ordered.selectExpr(f"{USABLE} AS usable")
    counts = dict(flags.mapInArrow(_count_true, "partition int, rows long").collect())
    n = ordered.rdd.getNumPartitions()
    return np.concatenate([[0], np.cumsum([counts.get(p, 0) for p in range(n)])]).astype(np.int64)


def with_candidate_indices(offsets_bc, batches):
    """(batch, global candidate index of each row or -1) for rows of ordered.filter('valid')."""
    from pyspark import TaskContext

    seen = int(offsets_bc.value[TaskContext.get().partitionId()])
    for batch in batches:
        usable = batch.column(batch.schema.get_field_index("is_candidate")).to_numpy(zero_copy_only=False)
        index = np.full(batch.num_rows, -1, dtype=np.int64)
        index[usable] = seen + np.arange(int(usable.sum()))
        seen += int(usable.sum())
        yield batch, usable, index
