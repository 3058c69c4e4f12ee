"""IVF scoring in Spark (neighbours.method: ivf), on ``prepare.ordered_items``; the numeric core is
lookalike.neighbours.ivf.

1. ``prepare.candidate_offsets``: each partition's first global candidate index (partitions are
   range-sorted by item_id, so index order is id order, as in the exact tie-break).
2. ``training_sample`` to the driver; ``ivf.train`` runs k-means there.
3. ``list_sizes``: one pass assigning every candidate to its nearest centroid (counts only).
4. ``ivf.plan`` on the driver packs lists (split when too large) into groups.
5. ``route``: every candidate goes to its list's group once; every query to each group that holds
   one of its ``nprobe`` lists. A shuffle on the group id (the join on list ids) brings each
   group's candidates and then its queries together, sorted, and ``score`` scans them per list
   with ``topk.topk_block``: PARTIAL rows, merged per item by ``write.merge_and_write``.
6. ``ivf_recall.exact_for_sample``: the exact top-k of sampled queries (the sample broadcast, candidates
   scanned in place) to measure recall.

``search`` runs these steps in order and reports the lists' statistics and the recall.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from lookalike.config import NeighboursConfig
from lookalike.neighbours import arrow, ivf, rules, topk, watch
from lookalike.neighbours.ivf_recall import exact_for_sample, found_for_sample, recall_by_nprobe, sample_queries
from lookalike.neighbours.prepare import USABLE, Prepared, candidate_offsets, with_candidate_indices
from lookalike.neighbours.write import Scored

log = logging.getLogger(__name__)

ROUTED = (
    "group int, kind tinyint, list int, index long, item_id string, probes array<int>, vector binary, "
    "codes array<bigint>"
)
CANDIDATE, QUERY = 0, 1


def training_sample(ordered, n_candidates: int, size: int, dim: int, seed: int) -> np.ndarray:
    """About ``size`` usable candidate vectors, drawn reproducibly (same table, same sample)."""
    rows = ordered.filter(USABLE).select("vector")
    if size < n_candidates:
        # Cut to size here: a limit() in Spark scans the partitions a few at a time.
        rows = rows.sample(False, min(1.0, 1.2 * size / n_candidates), seed=seed)
    vectors = arrow.vectors(arrow.to_arrow(rows).column("vector").combine_chunks(), dim)[:size]
    if len(vectors) < min(size, n_candidates) // 2:
        raise RuntimeError(f"the k-means sample came back with {len(vectors)} of {size} vectors")
    return vectors


def list_sizes(ordered, centroids_bc, nlist: int, dim: int) -> np.ndarray:
    def count(batches):
        import pyarrow as pa

        sizes = np.zeros(nlist, dtype=np.int64)
        for batch in batches:
            if batch.num_rows:
                lists = ivf.nearest(arrow.vectors(batch.column(0), dim), centroids_bc.value, 1)[:, 0]
                sizes += np.bincount(lists, minlength=nlist)
        yield pa.RecordBatch.from_arrays([pa.array([sizes.tobytes()], pa.binary())], names=["sizes"])

    total = np.zeros(nlist, dtype=np.int64)
    for row in ordered.filter(USABLE).select("vector").mapInArrow(count, "sizes binary").collect():
        total += np.frombuffer(row.sizes, dtype=np.int64)
    return total


def route(ordered, centroids_bc, plan_bc, offsets_bc, nprobe: int, dim: int):
    """ROUTED rows: each usable candidate once (kind 0, in its list's group) and each valid item,
    as a query, once per group that holds a list it probes (kind 1)."""

    def emit(batches):
        import pyarrow as pa

        the_plan = plan_bc.value
        for batch, usable, index in with_candidate_indices(offsets_bc, batches):
            if batch.num_rows == 0:
                continue
            column = batch.column(batch.schema.get_field_index("vector"))
            ids = batch.column(batch.schema.get_field_index("item_id"))
            codes = batch.column(batch.schema.get_field_index("codes"))
            probes = ivf.nearest(arrow.vectors(column, dim), centroids_bc.value, nprobe)
            cand = np.flatnonzero(usable)
            if len(cand):
                lists = probes[cand, 0]
                groups = the_plan.candidate_groups(lists, index[cand])
                take = pa.array(cand)
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array(groups, pa.int32()),
                        pa.array(np.zeros(len(cand), np.int8)),
                        pa.array(lists, pa.int32()),
                        pa.array(index[cand]),
                        ids.take(take),
                        pa.nulls(len(cand), pa.list_(pa.int32())),
                        column.take(take),
                        codes.take(take),
                    ],
                    names=["group", "kind", "list", "index", "item_id", "probes", "vector", "codes"],
                )
            rows, groups = the_plan.route(probes)
            take = pa.array(rows)
            flat = pa.array(probes[rows].ravel(), pa.int32())
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(groups, pa.int32()),
                    pa.array(np.ones(len(rows), np.int8)),
                    pa.nulls(len(rows), pa.int32()),
                    pa.array(index[rows]),
                    ids.take(take),
                    pa.ListArray.from_arrays(pa.array(np.arange(len(rows) + 1, dtype=np.int32) * nprobe), flat),
                    column.take(take),
                    codes.take(take),
                ],
                names=["group", "kind", "list", "index", "item_id", "probes", "vector", "codes"],
            )

    return ordered.filter("valid").mapInArrow(emit, ROUTED)


def _runs(group: np.ndarray, kind: np.ndarray):
    """[start, stop) of the runs of equal (group, kind) in a batch."""
    change = np.flatnonzero((group[1:] != group[:-1]) | (kind[1:] != kind[:-1])) + 1
    bounds = np.concatenate([[0], change, [len(group)]])
    return zip(bounds[:-1], bounds[1:], strict=True)


def score(
    routed,
    groups: int,
    k: int,
    block_rows: int,
    min_score: float | None,
    dim: int,
    nprobe: int,
    layout: rules.Layout = rules.NO_RULES,
):
    """PARTIAL rows: each query's top-k within each group it was routed to."""

    def scan(batches):
        import pyarrow as pa

        current, parts, ready = None, [], None
        for batch in batches:
            if batch.num_rows == 0:
                continue
            col = batch.schema.get_field_index
            group = batch.column(col("group")).to_numpy()
            kind = batch.column(col("kind")).to_numpy()
            for start, stop in _runs(group, kind):
                piece = batch.slice(start, stop - start)
                if kind[start] == CANDIDATE:
                    if group[start] != current:
                        current, parts, ready = group[start], [], None
                    parts.append(piece)
                    continue
                if group[start] != current:
                    # Candidates sort first in a group: none came, so the plan's list sizes (from
                    # an earlier pass) promised members that this pass did not assign here.
                    continue
                if ready is None:
                    table = pa.Table.from_batches(parts).combine_chunks()
                    ready = ivf.GroupCandidates.build(
                        table.column("list").to_numpy(),
                        table.column("index").to_numpy(),
                        table.column("item_id").to_numpy(zero_copy_only=False),
                        arrow.vectors(table.column("vector").chunk(0), dim)
                        if table.num_rows
                        else np.empty((0, dim), np.float32),
                        rules.codes_of(table.column("codes").combine_chunks(), layout),
                    )
                    parts = []
                ids = piece.column(col("item_id")).to_numpy(zero_copy_only=False)
                self_index = piece.column(col("index")).to_numpy()
                probes = piece.column(col("probes")).flatten().to_numpy().reshape(-1, nprobe)
                vectors = arrow.vectors(piece.column(col("vector")), dim)
                # The whole run at once (an Arrow batch, up to 10,000 queries): each list meets
                # all of its queries in few, large matmuls.
                mask = rules.make(layout, rules.codes_of(piece.column(col("codes")), layout), ready.codes)
                best_s, best_i = ivf.score_group(ready, probes, self_index, vectors, k, min_score, block_rows, mask)
                present = best_i != topk.EMPTY_ID
                rows = np.nonzero(present)[0]
                found = best_i[present]
                yield arrow.partial_batch(ids[rows], found, ready.ids_of(found), best_s[present])

    from pyspark.sql import functions as F

    # One long key (group, then kind: CANDIDATE 0 before QUERY 1): Spark sorts it on the prefix
    # alone (radix sort), never comparing whole 2 KB rows as a multi-column key does on ties.
    # Order within a kind does not matter: GroupCandidates.build orders the candidates itself.
    key = F.col("group").cast("long") * 2 + F.col("kind")
    return routed.repartition(groups, "group").sortWithinPartitions(key).mapInArrow(scan, arrow.PARTIAL)


# --------------------------------------------------------------------------------------------
# The strategy


def search(spark, run_id: str, items: Prepared, settings: NeighboursConfig, held: list) -> Scored:
    """Approximate: k-means lists, queries scanned against their nprobe nearest lists. PARTIAL rows
    to merge, with the list statistics and the sampled recall@k for the summary. The broadcasts
    and persisted frames go into ``held``, for the caller to release once the table is written."""
    from pyspark import StorageLevel

    # With hide_duplicates the lists are scored deeper and cut to k by the writer.
    k, min_score = items.depth or settings.k, settings.min_score
    ordered, dim, partitions, layout = items.ordered, items.dim, items.partitions, items.layout
    n_queries, n_candidates = items.queries, items.candidates
    sc = spark.sparkContext
    out = Scored()
    phases = out.phases
    nlist = min(settings.nlist or ivf.auto_nlist(n_candidates), n_candidates)
    nprobe = min(settings.nprobe, nlist)
    if settings.nprobe and nprobe < settings.nprobe:
        log.info(
            "neighbours.nprobe=%d is more than the %d lists: every list is probed (exact search)",
            settings.nprobe,
            nlist,
        )

    mark = time.perf_counter()
    offsets_bc = sc.broadcast(candidate_offsets(ordered))
    held.append(offsets_bc)
    size = ivf.train_size(n_candidates, nlist)
    sample = training_sample(ordered, n_candidates, size, dim, settings.seed)
    log.info(
        "IVF: training %d lists on %d of %d candidates (spherical k-means, %d iterations)",
        nlist,
        len(sample),
        n_candidates,
        ivf.KMEANS_ITERATIONS,
    )
    centroids = ivf.train(sample, min(nlist, len(sample)), seed=settings.seed)
    nlist = len(centroids)
    del sample
    centroids_bc = sc.broadcast(centroids)
    held.append(centroids_bc)
    phases["ivf_train"] = time.perf_counter() - mark

    # The recall sample's exact neighbours, before the search: with nprobe 0 where they sit in the
    # lists chooses nprobe, and the recall is measured against them after the search either way.
    sampled = None
    chosen = None
    if settings.recall_sample:
        mark = time.perf_counter()
        ids, vectors, sample_codes = sample_queries(ordered, n_queries, settings.recall_sample, settings.seed, layout)
        sample_bc = sc.broadcast((ids, vectors, sample_codes))
        held.append(sample_bc)
        exact, exact_lists = exact_for_sample(ordered, offsets_bc, sample_bc, k, min_score, dim, layout, centroids)
        sampled = (ids, exact)
        if not settings.nprobe:
            recalls = recall_by_nprobe(vectors, dim, centroids, exact_lists)
            chosen = ivf.choose_nprobe(recalls, settings.target_recall, max(1, nlist // 4))
            nprobe = chosen.nprobe
            log.info(
                "IVF: nprobe %d for recall@%d %s on %d sampled queries (target %.3f%s)",
                nprobe,
                k,
                "n/a" if chosen.recall is None else f"{chosen.recall:.4f}",
                len(ids),
                settings.target_recall,
                "" if chosen.target_met else f", not reached within {max(1, nlist // 4)} of {nlist} lists",
            )
        phases["recall_sample"] = time.perf_counter() - mark

    mark = time.perf_counter()
    sizes = list_sizes(ordered, centroids_bc, nlist, dim)
    group_rows = max(1, math.ceil(n_candidates / partitions))
    the_plan = ivf.plan(sizes, centroids, group_rows, seed=settings.seed)
    stats = ivf.skew(sizes, the_plan)
    plan_bc = sc.broadcast(the_plan)
    held.append(plan_bc)
    phases["ivf_assign"] = time.perf_counter() - mark
    log.info(
        "IVF: %d lists of %s..%s candidates (median %s, largest %.1fx the mean, %d split), packed into %d "
        "groups of %d..%d candidates; each query probes %d lists",
        nlist,
        stats["list_size"]["min"],
        stats["list_size"]["max"],
        stats["list_size"]["median"],
        stats["largest_list_vs_mean"],
        stats["lists_split"],
        stats["groups"],
        stats["group_candidates"]["min"],
        stats["group_candidates"]["max"],
        nprobe,
    )

    mark = time.perf_counter()
    routed = route(ordered, centroids_bc, plan_bc, offsets_bc, nprobe, dim)
    scored = score(routed, the_plan.groups, k, settings.block_rows, min_score, dim, nprobe, layout).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    held.append(scored)
    routed_rows = watch.collect(spark, run_id, "neighbours ivf", n_queries, scored.groupBy().count())[0]["count"]
    phases["score"] = time.perf_counter() - mark
    stats["partial_rows_per_query"] = round(routed_rows / max(1, n_queries), 2)

    recall = None
    if sampled is not None:
        mark = time.perf_counter()
        ids, exact = sampled
        found = found_for_sample(scored, ids, k)
        recall = ivf.recall(found, {q: set(row[row >= 0].tolist()) for q, row in zip(ids, exact, strict=True)})
        phases["recall_sample"] += time.perf_counter() - mark
        log.info(
            "IVF: recall@%d = %s on %d sampled queries (against exact search)",
            k,
            "n/a" if recall is None else f"{recall:.4f}",
            len(ids),
        )
        out.summary["recall_sample"] = {
            "queries": int(len(ids)),
            "k": k,
            "recall_at_k": None if recall is None else round(recall, 4),
        }
    out.summary["recall_at_k"] = None if recall is None else round(recall, 4)
    out.summary["ivf"] = {
        "nlist": nlist,
        "nprobe": nprobe,
        # How nprobe was set: pinned, or chosen for target_recall (with the sample's recall there).
        "nprobe_from": "neighbours.nprobe" if settings.nprobe else "target_recall",
        **(
            {}
            if chosen is None
            else {
                "target_recall": settings.target_recall,
                "target_met": chosen.target_met,
                "sampled_recall_at_chosen_nprobe": None if chosen.recall is None else round(chosen.recall, 4),
            }
        ),
        "trained_on": int(min(size, n_candidates)),
        "kmeans_iterations": ivf.KMEANS_ITERATIONS,
        **stats,
    }
    out.partials = scored
    out.centroids = centroids
    return out
