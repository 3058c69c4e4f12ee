"""neighbours.incremental in Spark: the previous run's lists (the ``neighbours_lists`` table, each
list k + reserve deep) brought up to date with what changed in the embeddings, scoring only that.

1. Each valid item's fingerprint (its normalised vector, rule codes and candidacy) against the
   one stored with its list: new, changed and deleted items. No previous lists, another depth or
   result setting, or a change so large that a full run is cheaper: every list is scored (a full
   run, which also writes the lists).
2. One pass over every item against a broadcast chunk of the changed ones (``stream_function``):
   each item's best among the changed candidates (its new entries), and each changed item's best
   among this task's candidates (a partial own list).
3. One shuffle brings every item's rows together, and per item (incremental.merge_list's rule,
   applied to whole Arrow tables by incremental_merge.merge_table): the kept entries minus the
   stale ones, plus the new ones, cut at the old list's bound; a changed item's list from its
   partial ones. A list that lost more than its reserve is scored again by another such pass
   with those items as the chunk.
4. The lists table and the published table (its first k, hide_duplicates applied) are written
   from the same lists, so the published table equals a full recompute's.

With method ivf the same steps run with IVF's rule in the kernel and the centroids of the
previous run (incremental_ivf), and a full run trains them again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from lookalike import schemas
from lookalike.config import NeighboursConfig, S3Config
from lookalike.io.current import Current
from lookalike.neighbours import exact, incremental_ivf, ivf_stage, watch
from lookalike.neighbours.changed_pass import LISTS, lists_function, own_lists, stream
from lookalike.neighbours.incremental_ivf import KeptLists
from lookalike.neighbours.incremental_merge import CURRENT, ENTRIES, KEPT, MERGED, NEW, OWN, merge_table
from lookalike.neighbours.prepare import Prepared, candidate_offsets
from lookalike.neighbours.write import Scored, _whole_items, write_lists

log = logging.getLogger(__name__)

# Above this share of items changed (new, changed or deleted), a full run is cheaper: incremental
# work is about 2 x changed x N pairs plus the merge, a full (symmetric) run about N^2 / 2.
FULL_SHARE = 0.2
STATE_ROWS_PER_FILE = 2_000_000
# ... and at least this many, so that a small state is not cut into many small files.
STATE_MIN_ROWS_PER_FILE = 50_000


def state_rows_per_file(rows: int, parallelism: int) -> int:
    """Rows per file of a state table: a file per task slot (each file is written by its own
    task, so one file would leave every core but one idle), within the two limits above."""
    return max(STATE_MIN_ROWS_PER_FILE, min(STATE_ROWS_PER_FILE, -(-rows // max(1, parallelism))))


@dataclass(frozen=True)
class Plan:
    """Whether this run is incremental, and why; the counts that decided it."""

    full_reason: str | None
    new: int = 0
    changed: int = 0
    deleted: int = 0

    @property
    def mode(self) -> str:
        return "full" if self.full_reason else "incremental"


def depth_of(items: Prepared, settings: NeighboursConfig) -> int:
    """How deep the lists are kept: what the published table needs (k, or hide_duplicates' depth)
    plus the reserve."""
    return (items.depth or settings.k) + settings.reserve


def fingerprints(ordered):
    """(item_id, fingerprint, is_candidate) of every valid item: a hash of what decides its
    scores and which rules apply to it. The vector is the normalised one, so an embedding scaled
    (same direction) is no change."""
    from pyspark.sql import functions as F

    return ordered.filter("valid").select(
        "item_id", F.xxhash64("vector", "codes", "is_candidate").alias("fingerprint"), "is_candidate"
    )


def read_state(spark, previous: Current | None, s3: S3Config | None):
    """The rows of a state table as ``publish.current`` found it, or None when there is none or it
    cannot be read: the run is then a full one, which writes it again."""
    from lookalike.io.sparkparquet import read_parquet

    if previous is None or not previous.files:
        return None
    try:
        return read_parquet(spark, previous, s3)
    except Exception as exc:  # a damaged state costs a full run, never a wrong table
        log.warning("cannot read the previous state at %s (%s): running in full", previous.location, exc)
        return None


def plan(previous: Current | None, previous_rows, fps, depth: int, result_settings: str) -> tuple[Plan, set]:
    """(the plan, the stale item ids: new, changed and deleted) from the previous lists table."""
    summary = (previous.summary or {}) if previous is not None else {}
    if previous is None or previous_rows is None:
        return Plan("no previous lists (the first run with neighbours.incremental)"), set()
    if summary.get("result_settings") != result_settings:
        return Plan("a result setting changed since the lists were made"), set()
    if summary.get("depth") != depth:
        why = f"the lists are {summary.get('depth')} deep, this run needs {depth} (k, reserve or hide depth)"
        return Plan(why), set()
    return changes(previous_rows, fps)


def changes(previous_rows, fps) -> tuple[Plan, set]:
    """New, changed and deleted items: ``fps`` against the fingerprints of ``previous_rows`` (a
    state table with item_id and fingerprint); a full plan when more than FULL_SHARE changed."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    before = previous_rows.select("item_id", F.col("fingerprint").alias("before"))
    status = fps.join(before, "item_id", "full_outer").select(
        "item_id",
        F.when(F.col("before").isNull(), "new")
        .when(F.col("fingerprint").isNull(), "deleted")
        .when(F.col("fingerprint") != F.col("before"), "changed")
        .alias("change"),
    )
    # The join once (kept for the second job), counted by change (None: unchanged); then the ids,
    # every partition at once (toLocalIterator would run one job per partition, one at a time).
    status = status.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = {change: int(n) for change, n in status.groupBy("change").count().collect()}
        items = sum(n for change, n in counts.items() if change != "deleted")
        counted = {name: counts.get(name, 0) for name in ("new", "changed", "deleted")}
        share = sum(counted.values()) / max(items, 1)
        if share > FULL_SHARE:
            why = f"{share:.0%} of the items changed (a full run is cheaper above {FULL_SHARE:.0%})"
            return Plan(why, **counted), set()
        ids = {row.item_id for row in status.filter(F.col("change").isNotNull()).select("item_id").collect()}
        return Plan(None, **counted), ids
    finally:
        status.unpersist()


def _merge_function(stale_bc, depth: int, needed: int):
    """ENTRIES rows sorted by item -> MERGED rows (``incremental_merge.merge_table``)."""

    def merge(batches):
        import pyarrow as pa

        stale = pa.array(sorted(stale_bc.value), pa.string())
        for table in _whole_items(batches):
            yield merge_table(table, stale, depth, needed)

    return merge


STATE_COLUMNS = ("item_id", "fingerprint", "neighbour_ids", "scores", "bound_score", "bound_id")


def _with_fingerprints(fps, lists, only: set | None = None):
    """NEIGHBOUR_LISTS rows: LISTS rows joined to the items' fingerprints (``only``: these items),
    with an empty list for an item that has no neighbour."""
    from pyspark.sql import functions as F

    if only is not None:
        wanted = fps.sparkSession.createDataFrame([(item,) for item in sorted(only)], "item_id string")
        fps = fps.join(F.broadcast(wanted), "item_id")
    return fps.join(lists, "item_id", "left").select(
        "item_id",
        "fingerprint",
        F.coalesce("neighbour_ids", F.array().cast("array<string>")).alias("neighbour_ids"),
        F.coalesce("scores", F.array().cast("array<float>")).alias("scores"),
        "bound_score",
        "bound_id",
    )


def _entries(frame, kind: int):
    """ENTRIES rows of one kind from ``frame``: the columns it has, NULL for the others (the merge
    reads fingerprints from CURRENT rows only, bounds from KEPT rows only)."""
    from pyspark.sql import functions as F

    have = set(frame.columns)
    columns = [(name, ddl) for name, ddl in (field.split() for field in ENTRIES.split(", "))]
    return frame.select(
        *(
            F.lit(kind).alias(name)
            if name == "kind"
            else F.col(name)
            if name in have
            else F.lit(None).cast(ddl).alias(name)
            for name, ddl in columns
        )
    )


def search(
    spark,
    run_id: str,
    items: Prepared,
    settings: NeighboursConfig,
    held: list,
    previous: Current | None,
    previous_rows,
    result_settings: str,
    lists_directory: str,
    directory: str,
    s3: S3Config | None,
    kept: KeptLists | None = None,
    centroids_directory: str | None = None,
) -> Scored:
    """The published table written under ``directory`` and the lists under ``lists_directory``;
    ``previous``/``previous_rows``: the lists table as it was (None if there is none). With
    method ivf, ``kept``: the previous run's centroids (incremental_ivf), and this run's are
    written under ``centroids_directory``."""
    from pyspark import StorageLevel

    sc = spark.sparkContext
    started = time.perf_counter()
    depth = depth_of(items, settings)
    needed = items.depth or settings.k
    fps = fingerprints(items.ordered).persist(StorageLevel.MEMORY_AND_DISK)
    held.append(fps)
    decided, stale = plan(previous, previous_rows, fps, depth, result_settings)
    method_ivf = settings.method == "ivf"
    probed, ivf_summary = None, {}
    offsets_bc = None
    if not decided.full_reason:
        # Each candidate's global index (its rank by id), for every pass below.
        offsets_bc = sc.broadcast(candidate_offsets(items.ordered))
        held.append(offsets_bc)
    if method_ivf and not decided.full_reason:
        decided, probed, ivf_summary = incremental_ivf.check(
            spark, items, settings, held, decided, kept, depth, offsets_bc
        )
    centroids = None if kept is None else kept.centroids
    trained_recall = None if kept is None else kept.trained_recall
    phases = {"plan": time.perf_counter() - started}
    pairs = 0
    if decided.full_reason:
        log.info("neighbours: full run (%s)", decided.full_reason)
        deep = replace(items, depth=depth, hide=None)
        if method_ivf:
            scored = ivf_stage.search(spark, run_id, deep, settings, held)
            centroids, trained_recall = scored.centroids, scored.summary.get("recall_at_k")
            ivf_summary = {key: scored.summary[key] for key in ("ivf", "recall_at_k", "recall_sample")}
            # What IVF scores: each query against the candidates of nprobe of nlist lists, about.
            nlist, nprobe = scored.summary["ivf"]["nlist"], scored.summary["ivf"]["nprobe"]
            pairs = round(items.queries * items.candidates * nprobe / nlist)
        else:
            scored = exact.search(spark, run_id, deep, settings, held, None, None)
            pairs = items.queries * items.candidates
        ordered = scored.partials.repartitionByRange(items.partitions, "item_id").sortWithinPartitions("item_id")
        state = _with_fingerprints(fps, ordered.mapInArrow(lists_function(depth), LISTS))
        rescored = items.queries
    else:
        log.info(
            "neighbours: incremental run, %d new, %d changed and %d deleted items",
            decided.new,
            decided.changed,
            decided.deleted,
        )
        mark = time.perf_counter()
        stale_bc = sc.broadcast(frozenset(stale))
        held.append(stale_bc)

        union = _entries(previous_rows, KEPT).union(_entries(fps, CURRENT))
        passing = (spark, run_id, items, settings, held)
        streamed, pairs = stream(*passing, stale, depth, True, "changed items", offsets_bc, probed)
        if streamed is not None:
            # Every item's new entries, and the changed items' partial own lists, all merged per
            # item in the one shuffle below.
            union = union.union(_entries(streamed.filter("NOT own"), NEW)).union(_entries(streamed.filter("own"), OWN))
        phases["score_changed"] = time.perf_counter() - mark
        mark = time.perf_counter()
        merged = (
            # Hashed, not ranged: any partitioning that keeps an item's rows together will do,
            # and a range costs a sampling pass over every list first.
            union.repartition(items.partitions, "item_id")
            .sortWithinPartitions("item_id")
            .mapInArrow(_merge_function(stale_bc, depth, needed), MERGED)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        held.append(merged)
        # Lists that lost more than their reserve.
        again = {r.item_id for r in merged.filter("rescore").select("item_id").collect()}
        phases["merge"] = time.perf_counter() - mark
        state = merged.filter("NOT rescore").select(*STATE_COLUMNS)
        rescored = decided.new + decided.changed + len(again)
        if again:
            mark = time.perf_counter()
            cut, more = stream(*passing, again, depth, False, "lists cut short", offsets_bc, probed)
            pairs += more
            state = state.unionByName(_with_fingerprints(fps, own_lists(cut, items.partitions, depth), again))
            phases["rescore"] = time.perf_counter() - mark
    mark = time.perf_counter()
    state = state.persist(StorageLevel.MEMORY_AND_DISK)
    held.append(state)
    from lookalike.io.sparkparquet import write_sorted

    n_items = state.count()
    write_sorted(
        state,
        n_items,
        lists_directory,
        schemas.arrow_schema(schemas.NEIGHBOUR_LISTS),
        s3,
        state_rows_per_file(n_items, sc.defaultParallelism),
    )
    written = watch.collect(
        spark,
        run_id,
        "neighbours write",
        n_items,
        write_lists(state, items.partitions, directory, settings.k, s3, settings.row_group_rows, items.hide),
    )
    lists_summary = {"result_settings": result_settings, "depth": depth, "items": n_items, "mode": decided.mode}
    if method_ivf and centroids is not None and centroids_directory is not None:
        incremental_ivf.write_centroids(centroids_directory, centroids, s3)
        nprobe = ivf_summary["ivf"]["nprobe"]
        lists_summary.update({"nlist": len(centroids), "nprobe": nprobe, "trained_recall": trained_recall})
    phases["write"] = time.perf_counter() - mark
    summary = {
        **ivf_summary,
        "mode": decided.mode,
        "mode_reason": decided.full_reason or "lists kept from the previous run",
        "new_items": decided.new,
        "changed_items": decided.changed,
        "deleted_items": decided.deleted,
        "scored_pairs": int(pairs),
        "rows_rescored": int(rescored),
        "lists_depth": depth,
    }
    return Scored(
        written=written,
        summary=summary,
        phases=phases,
        state=lists_summary,
        centroids=centroids,
    )
