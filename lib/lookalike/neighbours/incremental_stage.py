"""neighbours.incremental in Spark: the previous run's lists (the ``neighbours_lists`` table, each
list k + reserve deep) brought up to date with what changed in the embeddings, scoring only that.

1. Each valid item's fingerprint (its normalised vector, rule codes and candidacy) against the
   one stored with its list: new, changed and deleted items. No previous lists, another depth or
   result setting, or a change so large that a full run is cheaper: every list is scored (a full
   run, which also writes the lists).
2. One pass over every item against a broadcast chunk of the changed ones (``stream_function``):
   each item's best among the changed candidates (its new entries), and each changed item's best
   among every candidate (its own list, merged from every task's partial list).
3. Per item (incremental.merge_list): the kept entries minus the stale ones, plus the new ones,
   cut at the old list's bound. A list that lost more than its reserve is scored again by another
   such pass with those items as the chunk.
4. The lists table and the published table (its first k, hide_duplicates applied) are written
   from the same lists, so the published table equals a full recompute's.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, replace

from lookalike import schemas
from lookalike.config import NeighboursConfig, S3Config
from lookalike.io.current import Current
from lookalike.neighbours import exact, watch
from lookalike.neighbours.changed_pass import LISTS, append_list, arrow_schema, lists_function, own_lists, stream
from lookalike.neighbours.incremental import Bound, merge_list
from lookalike.neighbours.prepare import Prepared
from lookalike.neighbours.write import Scored, _whole_items, write_lists

log = logging.getLogger(__name__)

# Above this share of items changed (new, changed or deleted), a full run is cheaper: incremental
# work is about 2 x changed x N pairs plus the merge, a full (symmetric) run about N^2 / 2.
FULL_SHARE = 0.2
# What the merge step reads, one row per item and source: its previous list (with its bound), its
# new entries among the changed candidates, and its current fingerprint.
KEPT, NEW, CURRENT = 0, 1, 2
ENTRIES = (
    "item_id string, kind int, fingerprint long, neighbour_ids array<string>, scores array<float>, "
    "bound_score float, bound_id string"
)
MERGED = LISTS + ", rescore boolean"
STATE_ROWS_PER_FILE = 2_000_000


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
    from pyspark.sql import functions as F

    before = previous_rows.select("item_id", F.col("fingerprint").alias("before"))
    status = fps.join(before, "item_id", "full_outer").select(
        "item_id",
        F.when(F.col("before").isNull(), "new")
        .when(F.col("fingerprint").isNull(), "deleted")
        .when(F.col("fingerprint") != F.col("before"), "changed")
        .alias("change"),
    )
    stale = status.filter(F.col("change").isNotNull())
    counts = dict(stale.groupBy("change").count().collect())
    items = fps.count()
    counted = {name: int(counts.get(name, 0)) for name in ("new", "changed", "deleted")}
    share = sum(counted.values()) / max(items, 1)
    if share > FULL_SHARE:
        why = f"{share:.0%} of the items changed (a full run is cheaper above {FULL_SHARE:.0%})"
        return Plan(why, **counted), set()
    ids = {row.item_id for row in stale.select("item_id").toLocalIterator()}
    return Plan(None, **counted), ids


def _merge_function(stale_bc, depth: int, needed: int):
    """ENTRIES rows sorted by item -> MERGED rows: each current item's merged list, or a row to
    score again (changed, new, or cut below ``needed``); deleted items vanish."""

    def merge(batches):
        import pyarrow as pa

        stale = stale_bc.value
        names = [f.split()[0] for f in MERGED.split(", ")]
        for table in _whole_items(batches):
            columns = table.to_pydict()
            out: dict = {name: [] for name in names}
            rows = range(table.num_rows)
            for item, group in itertools.groupby(rows, key=columns["item_id"].__getitem__):
                kept: list = []
                new: list = []
                bound, current = None, False
                for i in group:
                    kind = columns["kind"][i]
                    entries = zip(columns["neighbour_ids"][i] or (), columns["scores"][i] or (), strict=True)
                    if kind == CURRENT:
                        current = True
                    elif kind == NEW:
                        new.extend(entries)
                    else:
                        kept.extend((n, s) for n, s in entries if n not in stale)
                        if columns["bound_id"][i] is not None:
                            bound = Bound(columns["bound_score"][i], columns["bound_id"][i])
                if not current:
                    continue  # deleted, or no longer valid
                merged = None if item in stale else merge_list(kept, new, bound, depth, needed)
                append_list(out, item, merged)
            yield pa.RecordBatch.from_pydict(out, schema=arrow_schema(MERGED))

    return merge


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
) -> Scored:
    """The published table written under ``directory`` and the lists under ``lists_directory``;
    ``previous``/``previous_rows``: the lists table as it was (None if there is none)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    sc = spark.sparkContext
    started = time.perf_counter()
    depth = depth_of(items, settings)
    needed = items.depth or settings.k
    fps = fingerprints(items.ordered).persist(StorageLevel.MEMORY_AND_DISK)
    held.append(fps)
    decided, stale = plan(previous, previous_rows, fps, depth, result_settings)
    phases = {"plan": time.perf_counter() - started}
    pairs = 0
    if decided.full_reason:
        log.info("neighbours: full run (%s)", decided.full_reason)
        scored = exact.search(spark, run_id, replace(items, depth=depth, hide=None), settings, held, None, None)
        ordered = scored.partials.repartitionByRange(items.partitions, "item_id").sortWithinPartitions("item_id")
        lists = ordered.mapInArrow(lists_function(depth), LISTS)
        pairs = items.queries * items.candidates
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
        entries = [
            previous_rows.select(
                "item_id",
                F.lit(KEPT).alias("kind"),
                F.lit(None).cast("long").alias("fingerprint"),
                "neighbour_ids",
                "scores",
                "bound_score",
                "bound_id",
            ),
            fps.select(
                "item_id",
                F.lit(CURRENT).alias("kind"),
                "fingerprint",
                F.lit(None).cast("array<string>").alias("neighbour_ids"),
                F.lit(None).cast("array<float>").alias("scores"),
                F.lit(None).cast("float").alias("bound_score"),
                F.lit(None).cast("string").alias("bound_id"),
            ),
        ]
        streamed, pairs = stream(spark, run_id, items, settings, held, stale, depth, True, "changed items")
        own = None
        if streamed is not None:
            entries.append(
                streamed.filter("NOT own").select(
                    "item_id",
                    F.lit(NEW).alias("kind"),
                    F.lit(None).cast("long").alias("fingerprint"),
                    "neighbour_ids",
                    "scores",
                    F.lit(None).cast("float").alias("bound_score"),
                    F.lit(None).cast("string").alias("bound_id"),
                )
            )
            own = own_lists(streamed, items.partitions, depth)
        phases["score_changed"] = time.perf_counter() - mark
        mark = time.perf_counter()
        union = entries[0]
        for more in entries[1:]:
            union = union.union(more)
        merged = (
            union.repartitionByRange(items.partitions, "item_id")
            .sortWithinPartitions("item_id")
            .mapInArrow(_merge_function(stale_bc, depth, needed), MERGED)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        held.append(merged)
        # Changed and new items were scored in the pass above; the others here lost too much.
        again = {r.item_id for r in merged.filter("rescore").select("item_id").toLocalIterator()} - stale
        phases["merge"] = time.perf_counter() - mark
        lists = merged.filter("NOT rescore").drop("rescore")
        if own is not None:
            lists = lists.unionByName(own)
        rescored = decided.new + decided.changed + len(again)
        if again:
            mark = time.perf_counter()
            cut, more = stream(spark, run_id, items, settings, held, again, depth, False, "lists cut short")
            pairs += more
            lists = lists.unionByName(own_lists(cut, items.partitions, depth))
            phases["rescore"] = time.perf_counter() - mark
    mark = time.perf_counter()
    state = (
        fps.join(lists, "item_id", "left")
        .select(
            "item_id",
            "fingerprint",
            F.coalesce("neighbour_ids", F.array().cast("array<string>")).alias("neighbour_ids"),
            F.coalesce("scores", F.array().cast("array<float>")).alias("scores"),
            "bound_score",
            "bound_id",
        )
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    held.append(state)
    from lookalike.io.sparkparquet import write_sorted

    n_items = state.count()
    write_sorted(
        state,
        n_items,
        lists_directory,
        schemas.arrow_schema(schemas.NEIGHBOUR_LISTS),
        s3,
        STATE_ROWS_PER_FILE,
    )
    written = watch.collect(
        spark,
        run_id,
        "neighbours write",
        n_items,
        write_lists(state, items.partitions, directory, settings.k, s3, settings.row_group_rows, items.hide),
    )
    phases["write"] = time.perf_counter() - mark
    summary = {
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
        state={"result_settings": result_settings, "depth": depth, "items": n_items, "mode": decided.mode},
    )
