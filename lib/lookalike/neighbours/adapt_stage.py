"""neighbours.center and neighbours.augment in Spark: the prepared rows (prepare.PREPARED) with their
vectors adapted before the search, which then runs unchanged on them (exact, IVF, rules,
incremental). The arithmetic is lookalike.neighbours.adapt's.

1. ``catalogue_mean``: one partial sum per partition on the executors, added up on the driver (P
   vectors move, not N).
2. ``centred``: every valid vector centred on that mean, in place (same partitions and order).
3. ``augmented``: a first search with k = m (the table's own method and rules, without min_score
   and hide_duplicates' one-per-group cut), its lists joined with the vectors they name, and each item's vector
   replaced by the weighted sum; then range-partitioned and sorted again, as prepare leaves it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np

from lookalike.config import NeighboursConfig, S3Config
from lookalike.neighbours import adapt, arrow, exact, ivf_stage, watch
from lookalike.neighbours.prepare import PREPARED, Prepared

log = logging.getLogger(__name__)

_SUM = "rows long, total binary"


def _sum_function(dim: int):
    def partial(batches):
        import pyarrow as pa

        total, rows = np.zeros(dim), 0
        for batch in batches:
            if batch.num_rows == 0:
                continue
            unit = arrow.vectors(batch.column(0), dim)
            part, n = adapt.partial_sum(unit, np.ones(len(unit), dtype=bool))
            total += part
            rows += n
        yield pa.RecordBatch.from_arrays(
            [pa.array([rows], pa.int64()), pa.array([total.tobytes()], pa.binary())], names=["rows", "total"]
        )

    return partial


def catalogue_mean(ordered, dim: int) -> np.ndarray:
    """The mean of the valid unit vectors (float32, see adapt.mean_of)."""
    parts = ordered.filter("valid").select("vector").mapInArrow(_sum_function(dim), _SUM).collect()
    return adapt.mean_of([np.frombuffer(p.total, dtype=np.float64) for p in parts], [p.rows for p in parts])


def _centre_function(mean_bc, dim: int):
    def centre(batches):
        import pyarrow as pa

        for batch in batches:
            valid = batch.column(batch.schema.get_field_index("valid")).to_numpy(zero_copy_only=False)
            rows = np.flatnonzero(valid)
            if len(rows) == 0:
                yield batch
                continue
            vectors = batch.column(batch.schema.get_field_index("vector"))
            unit = arrow.vectors(vectors.take(pa.array(rows)), dim)
            moved = adapt.center(unit, np.ones(len(rows), dtype=bool), mean_bc.value)
            blobs = np.array(vectors.to_pylist(), dtype=object)
            blobs[rows] = [row.tobytes() for row in moved]
            index = batch.schema.get_field_index("vector")
            yield batch.set_column(index, "vector", pa.array(blobs, pa.binary()))

    return centre


def centred(spark, ordered, mean: np.ndarray, dim: int, held: list):
    """PREPARED rows with every valid vector centred on ``mean``: same partitions and order."""
    mean_bc = spark.sparkContext.broadcast(np.asarray(mean, dtype=np.float32))
    held.append(mean_bc)
    return ordered.mapInArrow(_centre_function(mean_bc, dim), PREPARED)


def _augment_function(dim: int, m: int):
    def combine(batches):
        import pyarrow as pa

        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            own = arrow.vectors(batch.column(1), dim)
            neighbours = np.zeros((n, m, dim), dtype=np.float32)
            scores = np.full((n, m), np.nan)
            for i, entries in enumerate(batch.column(2).to_pylist()):
                for entry in entries:
                    r = entry["rank"] - 1
                    neighbours[i, r] = np.frombuffer(entry["vector"], dtype=np.float32)
                    scores[i, r] = entry["score"]
            moved = adapt.augment(own, neighbours, scores)
            yield pa.RecordBatch.from_arrays(
                [batch.column(0), pa.array([row.tobytes() for row in moved], pa.binary())],
                names=["item_id", "augmented"],
            )

    return combine


def first_lists(spark, run_id: str, items: Prepared, settings: NeighboursConfig, held: list, s3: S3Config | None):
    """(item_id, rank, neighbour_id, score): every valid item's top m, by the table's own method and
    rules (same, exclude_same, candidates, and an item's own near-duplicate group left out), without
    min_score and hide_duplicates' one-per-group cut."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first = settings.model_copy(update={"k": settings.augment, "min_score": None, "hide_duplicates": False})
    plain = replace(items, depth=0, hide=None)
    if settings.method == "ivf":
        scored = ivf_stage.search(spark, run_id, plain, first, held)
    else:
        scored = exact.search(spark, run_id, plain, first, held, None, s3)
    # Several partial lists per item (chunks, symmetric pairs): the canonical order picks the m.
    order = Window.partitionBy("item_id").orderBy(F.col("score").desc(), F.col("neighbour_index").asc())
    ranked = scored.partials.withColumn("rank", F.row_number().over(order))
    return ranked.filter(F.col("rank") <= settings.augment).select("item_id", "rank", "neighbour_id", "score")


def augmented(spark, run_id: str, items: Prepared, settings: NeighboursConfig, held: list, s3: S3Config | None):
    """(PREPARED rows with every valid vector augmented from its first-pass list, persisted; the
    first pass's seconds)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started = time.perf_counter()
    ordered, dim, m = items.ordered, items.dim, settings.augment
    lists = first_lists(spark, run_id, items, settings, held, s3)
    vectors = ordered.filter("valid").select(F.col("item_id").alias("neighbour_id"), F.col("vector"))
    entries = (
        lists.join(vectors, "neighbour_id")
        .groupBy("item_id")
        .agg(F.collect_list(F.struct("rank", "score", "vector")).alias("entries"))
    )
    own = ordered.filter("valid").select("item_id", "vector")
    # Items without any neighbour (a group of one under `same`) keep their vector: an empty list.
    joined = own.join(entries, "item_id", "left").select(
        "item_id", "vector", F.coalesce("entries", F.array().cast(entries.schema["entries"].dataType)).alias("entries")
    )
    moved = joined.mapInArrow(_augment_function(dim, m), "item_id string, augmented binary")
    rebuilt = (
        ordered.join(moved, "item_id", "left")
        .withColumn("vector", F.coalesce("augmented", "vector"))
        .select(*[field.split(" ")[0] for field in PREPARED.split(", ")])
        .repartitionByRange(items.partitions, "item_id")
        .sortWithinPartitions("item_id")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    held.append(rebuilt)
    watch.collect(spark, run_id, f"neighbours augment (m = {m})", items.queries, rebuilt.groupBy().count())
    return rebuilt, time.perf_counter() - started


def adapt_items(
    spark,
    run_id: str,
    items: Prepared,
    settings: NeighboursConfig,
    held: list,
    s3: S3Config | None,
    stored_mean: np.ndarray | None = None,
) -> tuple[Prepared, dict, dict, np.ndarray | None]:
    """(``items`` with adapted vectors, the summary's entries, phase seconds, the mean centred on or
    None). ``stored_mean``: the mean an incremental run reuses (None: computed from this catalogue)."""
    from pyspark import StorageLevel

    summary: dict = {}
    phases: dict = {}
    mean: np.ndarray | None = None
    if settings.center:
        mark = time.perf_counter()
        reused = stored_mean is not None
        mean = stored_mean if stored_mean is not None else catalogue_mean(items.ordered, items.dim)
        ordered = centred(spark, items.ordered, mean, items.dim, held).persist(StorageLevel.MEMORY_AND_DISK)
        held.append(ordered)
        items = replace(items, ordered=ordered)
        summary["center"] = {
            "mean_norm": round(float(np.linalg.norm(mean.astype(np.float64))), 6),
            "reused": reused,
        }
        phases["center"] = time.perf_counter() - mark
        log.info(
            "neighbours.center: %s catalogue mean, norm %.4f",
            "the stored" if reused else "this",
            summary["center"]["mean_norm"],
        )
    if settings.augment:
        ordered, seconds = augmented(spark, run_id, items, settings, held, s3)
        items = replace(items, ordered=ordered)
        summary["augment"] = {"m": settings.augment, "weights": "max(score, 0)"}
        phases["augment"] = seconds
        log.info("neighbours.augment: every vector moved towards its %d nearest (%.1fs)", settings.augment, seconds)
    return items, summary, phases, mean
