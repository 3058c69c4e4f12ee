"""duplicates.incremental: the previous run's pairs (the ``duplicates_pairs`` table: each valid
item's fingerprint and its pairs with items of a larger id) brought up to date, scoring only the
new and changed items against every item.

1. The plan is neighbours.incremental's (``incremental_stage.fingerprints``): new, changed and
   deleted items against the stored fingerprints. No stored pairs, another min_score, or so large
   a change that a full run is cheaper: every pair is scored (``pairs.find_pairs``) and the state
   written again.
2. One pass over every valid item per broadcast chunk of the changed (new or changed) items:
   ``pairs_above`` between each block of the task's items and the chunk.
3. The stored pairs of two items neither changed nor deleted are kept: a canonical score depends
   on the two normalised vectors alone, which the fingerprints say are the same. With the new
   ones, these are exactly the pairs a full run finds, with the same scores.
4. PAIRS rows numbered by each item's current position in item_id order, so that the components
   and the table (group ids included) come out as a full run's; the state from the same pairs.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from lookalike import schemas
from lookalike.config import DuplicatesConfig, S3Config
from lookalike.duplicates import pairs
from lookalike.io.current import Current
from lookalike.neighbours import exact, watch
from lookalike.neighbours.changed_pass import changed_chunks
from lookalike.neighbours.chunks import queries, rows_per_chunk
from lookalike.neighbours.incremental_stage import Plan, changes, fingerprints, state_rows_per_file
from lookalike.neighbours.prepare import Prepared, candidate_offsets

log = logging.getLogger(__name__)

# A pair by its ids, item_i < item_j (Python's code point order is Spark's UTF-8 byte order).
ID_PAIRS = "item_i string, item_j string, score float"
POSITIONS = "item_id string, position long"


def plan(previous: Current | None, stored, fps, min_score: float) -> tuple[Plan, set]:
    """(the plan, the stale item ids: new, changed and deleted) from the stored pairs."""
    if previous is None or stored is None:
        return Plan("no previous pairs (the first run with duplicates.incremental)"), set()
    made_with = (previous.summary or {}).get("min_score")
    if made_with != min_score:
        return Plan(f"the pairs were found with min_score {made_with}, this run's is {min_score}"), set()
    return changes(stored, fps)


def _id_batch(item_i, item_j, scores):
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(
        [pa.array(item_i, pa.string()), pa.array(item_j, pa.string()), pa.array(scores, pa.float32())],
        names=["item_i", "item_j", "score"],
    )


def _stream_function(chunk_bc, stale_bc, threshold: float, block_rows: int, dim: int):
    """Valid PREPARED rows -> ID_PAIRS: every pair of a row and a chunk item with canonical score
    >= ``threshold``. A pair of two changed items is met from both sides (in this chunk or
    another): the side holding the smaller id keeps it."""

    def score(batches):
        chunk = chunk_bc.value  # changed_pass.Changed
        stale = stale_bc.value
        for ids, unit in exact._query_blocks(batches, block_rows, dim):
            # Disjoint ranges: pairs_above then neither dedups nor drops anything; done below by id.
            rows, cols, scores = pairs.pairs_above(unit, chunk.vectors, threshold, candidate_offset=len(ids))
            if not len(rows):
                continue
            mine, theirs = ids[rows], chunk.ids[cols - len(ids)]
            changed = np.fromiter((item in stale for item in mine), dtype=bool, count=len(mine))
            keep = (mine != theirs) & (~changed | (mine < theirs))
            mine, theirs, scores = mine[keep], theirs[keep], scores[keep]
            if len(mine):
                first = mine < theirs
                yield _id_batch(np.where(first, mine, theirs), np.where(first, theirs, mine), scores)

    return score


def _kept_function(stale_bc):
    """ID_PAIRS -> those whose items are both neither changed nor deleted."""

    def keep(batches):
        import pyarrow as pa
        import pyarrow.compute as pc

        stale = pa.array(sorted(stale_bc.value), pa.string())
        for batch in batches:
            gone = pc.or_(pc.is_in(batch.column(0), value_set=stale), pc.is_in(batch.column(1), value_set=stale))
            yield batch.filter(pc.invert(gone))

    return keep


def _positions_function(bounds_bc):
    """PREPARED rows (item_id, valid, is_candidate) in partition order -> POSITIONS of the usable
    ones: the global index ``pairs.find_pairs`` gives them (rank in item_id order)."""

    def number(batches):
        import pyarrow as pa
        import pyarrow.compute as pc
        from pyspark import TaskContext

        first = int(bounds_bc.value[TaskContext.get().partitionId()])
        for batch in batches:
            column = batch.schema.get_field_index
            usable = pc.and_(batch.column(column("valid")), batch.column(column("is_candidate")))
            ids = batch.column(column("item_id")).filter(usable)
            at = pa.array(np.arange(first, first + len(ids), dtype=np.int64))
            first += len(ids)
            yield pa.RecordBatch.from_arrays([ids, at], names=["item_id", "position"])

    return number


def _numbered(spark, ordered, found, held: list):
    """ID_PAIRS -> PAIRS rows, i and j the items' current positions."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    bounds_bc = spark.sparkContext.broadcast(candidate_offsets(ordered))
    held.append(bounds_bc)
    positions = (
        ordered.select("item_id", "valid", "is_candidate")
        .mapInArrow(_positions_function(bounds_bc), POSITIONS)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    held.append(positions)  # joined twice: numbered once
    at_i = positions.select(F.col("item_id").alias("item_i"), F.col("position").alias("i"))
    at_j = positions.select(F.col("item_id").alias("item_j"), F.col("position").alias("j"))
    return found.join(at_i, "item_i").join(at_j, "item_j").select("i", "j", "item_i", "item_j", "score")


def _stream(spark, run_id: str, items: Prepared, settings: DuplicatesConfig, held: list, stale_bc):
    """ID_PAIRS of every changed item (one pass per chunk of them), the chunk count and size, and
    the pairs scored."""
    from pyspark import StorageLevel

    sc = spark.sparkContext
    chunk_rows = rows_per_chunk(settings.broadcast_max_mb, items.dim)
    chunks = changed_chunks(items.ordered, stale_bc.value, items.dim, items.layout, chunk_rows)
    passes, scored = [], 0
    for number, chunk in enumerate(chunks, 1):
        chunk_bc = sc.broadcast(chunk)
        held.append(chunk_bc)
        function = _stream_function(chunk_bc, stale_bc, settings.min_score, settings.block_rows, items.dim)
        streamed = queries(items.ordered).mapInArrow(function, ID_PAIRS).persist(StorageLevel.MEMORY_AND_DISK)
        held.append(streamed)
        label = f"duplicates changed items {number}/{len(chunks)}"
        watch.collect(spark, run_id, label, items.queries, streamed.groupBy().count())
        chunk_bc.unpersist()  # executors drop it; the driver keeps it for recomputation
        passes.append(streamed)
        scored += len(chunk.ids) * items.queries
    if not passes:
        return spark.createDataFrame([], ID_PAIRS), 0, chunk_rows, 0
    out = passes[0]
    for more in passes[1:]:
        out = out.union(more)
    return out, len(chunks), chunk_rows, scored


def _kept(stored, stale_bc):
    """ID_PAIRS of the stored pairs between items that are neither changed nor deleted."""
    from pyspark.sql import functions as F

    exploded = stored.select(
        F.col("item_id").alias("item_i"), F.explode(F.arrays_zip("partner_ids", "scores")).alias("p")
    ).select("item_i", F.col("p.partner_ids").alias("item_j"), F.col("p.scores").alias("score"))
    return exploded.mapInArrow(_kept_function(stale_bc), ID_PAIRS)


def _write_state(fps, found, n_items: int, directory: str, s3: S3Config | None) -> None:
    """One DUPLICATE_PAIRS row per valid item: its fingerprint and its pairs with larger ids."""
    from pyspark.sql import functions as F

    from lookalike.io.sparkparquet import write_sorted

    partners = found.groupBy(F.col("item_i").alias("item_id")).agg(
        F.array_sort(F.collect_list(F.struct(F.col("item_j").alias("partner"), "score"))).alias("p")
    )
    state = fps.join(partners, "item_id", "left").select(
        "item_id",
        "fingerprint",
        F.coalesce(F.col("p.partner"), F.array().cast("array<string>")).alias("partner_ids"),
        F.coalesce(F.col("p.score"), F.array().cast("array<float>")).alias("scores"),
    )
    schema = schemas.arrow_schema(schemas.DUPLICATE_PAIRS)
    parallelism = fps.sparkSession.sparkContext.defaultParallelism
    write_sorted(state, n_items, directory, schema, s3, state_rows_per_file(n_items, parallelism))


def find_pairs(
    spark,
    run_id: str,
    items: Prepared,
    settings: DuplicatesConfig,
    held: list,
    previous: Current | None,
    stored,
    state_directory: str,
    s3: S3Config | None,
):
    """What ``pairs.find_pairs`` returns (PAIRS rows, persisted, and the summary's entries) with
    the mode's entries added, the state written under ``state_directory``, and the state's summary.
    ``previous``/``stored``: the stored pairs as they were (None if there are none)."""
    from pyspark import StorageLevel

    started = time.perf_counter()
    fps = fingerprints(items.ordered).persist(StorageLevel.MEMORY_AND_DISK)
    held.append(fps)
    decided, stale = plan(previous, stored, fps, settings.min_score)
    phases = {"plan": time.perf_counter() - started}
    if decided.full_reason:
        log.info("duplicates: full run (%s)", decided.full_reason)
        found, scored = pairs.find_pairs(
            spark, run_id, items, settings.min_score, settings.block_rows, settings.broadcast_max_mb, held
        )
        phases.update(scored.pop("phase_seconds"))
        scored["scored_pairs"] = items.queries * (items.queries - 1) // 2
    else:
        log.info(
            "duplicates: incremental run, %d new, %d changed and %d deleted items",
            decided.new,
            decided.changed,
            decided.deleted,
        )
        mark = time.perf_counter()
        stale_bc = spark.sparkContext.broadcast(frozenset(stale))
        held.append(stale_bc)
        new, n_chunks, chunk_rows, scored_pairs = _stream(spark, run_id, items, settings, held, stale_bc)
        phases["score_changed"] = time.perf_counter() - mark
        mark = time.perf_counter()
        found = _numbered(spark, items.ordered, _kept(stored, stale_bc).union(new), held)
        found = found.persist(StorageLevel.MEMORY_AND_DISK)
        held.append(found)
        counted = found.count()
        phases["keep_and_number"] = time.perf_counter() - mark
        scored = {"pairs": counted, "chunks": n_chunks, "chunk_rows": chunk_rows, "scored_pairs": scored_pairs}
    mark = time.perf_counter()
    _write_state(fps, found.select("item_i", "item_j", "score"), items.queries, state_directory, s3)
    phases["write_state"] = time.perf_counter() - mark
    scored.update(
        {
            "mode": decided.mode,
            "mode_reason": decided.full_reason or "pairs kept from the previous run",
            "new_items": decided.new,
            "changed_items": decided.changed,
            "deleted_items": decided.deleted,
            "phase_seconds": phases,
        }
    )
    state = {"min_score": settings.min_score, "items": items.queries, "pairs": scored["pairs"], "mode": decided.mode}
    return found, scored, state
