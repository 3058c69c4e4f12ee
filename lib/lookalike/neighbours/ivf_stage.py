"""IVF scoring in Spark (neighbours.method: ivf), on ``prepare.ordered_items``; the numeric core is
lookalike.neighbours.ivf.

1. ``prepare.candidate_offsets``: each partition's first global candidate index (partitions are
   range-sorted by item_id, so index order is id order, as in the exact tie-break).
2. ``training_sample`` to the driver; ``ivf.train`` runs k-means there (FAISS).
3. ``assign``: one pass over the valid items gives each its candidate index, the list it belongs
   to as a candidate and the ``nprobe`` lists it probes as a query; persisted, in the partitions
   and order of ``ordered_items`` (whose tasks are already balanced by a range on item_id).
4. The candidates come to the driver in chunks of the exact job's broadcast size (``listed_chunks``),
   each stored by list (``ivf.GroupCandidates``): an inverted index over the same global centroids,
   in pieces. One pass over the queries (``PASS_MB`` of chunks, every chunk up to ~1M candidates)
   reads each task's queries once, and each block of them meets every chunk of the pass, scanning
   the members of its probed lists there (``ivf.score_group``): one top-k per query and pass, as
   PARTIAL rows merged per item by ``write.merge_and_write`` as in the exact job. No vector is
   shuffled: what moves is what the exact job moves, less.
5. ``ivf_recall.exact_for_sample``: the exact top-k of sampled queries (the sample broadcast, candidates
   scanned in place) to measure recall, and, with ``neighbours.nprobe: 0``, to choose nprobe.

``search`` runs these steps in order and reports the lists' and the tasks' sizes and the recall.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lookalike.config import NeighboursConfig
from lookalike.neighbours import arrow, ivf, rules, topk, watch
from lookalike.neighbours.chunks import ID_BYTES, rows_per_chunk
from lookalike.neighbours.ivf_recall import exact_for_sample, found_for_sample, recall_by_nprobe, sample_queries
from lookalike.neighbours.prepare import USABLE, Prepared, candidate_offsets, with_candidate_indices
from lookalike.neighbours.write import Scored

log = logging.getLogger(__name__)

ASSIGNED = "item_id string, vector binary, codes array<bigint>, index long, list int, probes array<int>"
# Queries scored against a chunk in one call: each list of the chunk meets all of them in one
# matrix product, so the larger, the fewer (and bigger) products per list.
QUERY_ROWS = 32_768
# Megabytes of broadcast chunks one pass over the queries scores against (each Python worker keeps
# them for the pass): 8 chunks of the default 256 MB, about 1M candidates of 512 floats. More
# candidates take several passes, each a partial list per query for the merge.
PASS_MB = 2048


def chunks_per_pass(broadcast_max_mb: float) -> int:
    return max(1, int(PASS_MB // broadcast_max_mb))


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


def assign(ordered, centroids_bc, offsets_bc, nprobe: int, dim: int):
    """ASSIGNED rows, one per valid item, in the partitions and order of ``ordered``: its global
    candidate index and the list it belongs to as a candidate (-1 both when it is not one), and
    the ``nprobe`` lists it probes as a query, best first."""

    def emit(batches):
        import pyarrow as pa

        for batch, usable, index in with_candidate_indices(offsets_bc, batches):
            if batch.num_rows == 0:
                continue
            column = batch.column(batch.schema.get_field_index("vector"))
            probes, lists = ivf.assignment(arrow.vectors(column, dim), centroids_bc.value, nprobe)
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column(batch.schema.get_field_index("item_id")),
                    column,
                    batch.column(batch.schema.get_field_index("codes")),
                    pa.array(index),
                    pa.array(np.where(usable, lists, -1).astype(np.int32)),
                    pa.ListArray.from_arrays(
                        pa.array(np.arange(batch.num_rows + 1, dtype=np.int32) * nprobe),
                        pa.array(probes.ravel(), pa.int32()),
                    ),
                ],
                names=["item_id", "vector", "codes", "index", "list", "probes"],
            )

    columns = ordered.filter("valid").select("item_id", "is_candidate", "vector", "codes")
    return columns.mapInArrow(emit, ASSIGNED)


def sizes(assigned, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """(candidates per list, queries per task): the lists' sizes and the partitions' rows."""

    def count(batches):
        import pyarrow as pa
        from pyspark import TaskContext

        found = np.zeros(nlist, dtype=np.int64)
        rows = 0
        for batch in batches:
            lists = batch.column(0).to_numpy()
            rows += len(lists)
            found += np.bincount(lists[lists >= 0], minlength=nlist)
        yield pa.RecordBatch.from_arrays(
            [pa.array([TaskContext.get().partitionId()], pa.int32()), pa.array([rows]), pa.array([found.tobytes()])],
            names=["partition", "rows", "sizes"],
        )

    parts = arrow.to_arrow(assigned.select("list").mapInArrow(count, "partition int, rows long, sizes binary"))
    total = np.zeros(nlist, dtype=np.int64)
    for blob in parts.column("sizes").to_pylist():
        total += np.frombuffer(blob, dtype=np.int64)
    order = np.argsort(parts.column("partition").to_numpy(), kind="stable")
    return total, parts.column("rows").to_numpy()[order]


@dataclass(frozen=True)
class ListedChunk:
    """A broadcast chunk of candidates (global indices ``offset`` .. ``offset + len(ids) - 1``,
    ``ids`` in id order) stored by list: the chunk's part of the inverted index."""

    offset: int
    ids: np.ndarray
    lists: ivf.GroupCandidates

    @property
    def nbytes(self) -> int:
        extra = 0 if self.lists.codes is None else self.lists.codes.nbytes
        return int(self.lists.vectors.nbytes + self.lists.indices.nbytes + ID_BYTES * len(self.ids) + extra)


def listed_chunks(assigned, n_candidates: int, chunk_rows: int, dim: int, layout) -> Iterator[ListedChunk]:
    """The candidates of ``assigned``, ``chunk_rows`` at a time in id order, each chunk stored by
    list. A chunk is a range of global indices: one Arrow collect of the persisted rows in it."""
    for offset in range(0, n_candidates, chunk_rows):
        stop = min(n_candidates, offset + chunk_rows)
        rows = assigned.filter(f"index >= {offset} AND index < {stop}").select("item_id", "vector", "codes", "list")
        table = arrow.to_arrow(rows)
        if table.num_rows != stop - offset:
            raise RuntimeError(f"{table.num_rows} candidates numbered {offset}..{stop - 1}; was the table changed?")
        ids = np.array(table.column("item_id").to_pylist(), dtype=object)
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            raise RuntimeError("candidates arrived out of item_id order")
        lists = ivf.GroupCandidates.build(
            table.column("list").to_numpy(),
            np.arange(offset, stop, dtype=np.int64),
            ids,
            arrow.vectors(table.column("vector").combine_chunks(), dim),
            rules.codes_of(table.column("codes").combine_chunks(), layout),
        )
        yield ListedChunk(offset, ids, lists)


def _merged(best_s, best_i, new_s, new_i, k: int):
    """Two canonical top-k lists per row (scores exact, global indices) as one."""
    scores, found = np.hstack([best_s, new_s]), np.hstack([best_i, new_i])
    rows, slot = np.nonzero(found != topk.EMPTY_ID)
    return topk.keep_best(rows, found[rows, slot], scores[rows, slot], len(found), k)


def _pass_scorer(chunk_bcs: list, k: int, block_rows: int, min_score: float | None, dim: int, nprobe: int, layout):
    """Each query's top-k over the chunks of one pass: its queries are read once, and each block
    of them meets every chunk (kept in the Python worker for the pass) before the next block."""

    def score_queries(parts: list):
        import pyarrow as pa

        table = pa.Table.from_batches(parts).combine_chunks()
        ids = table.column("item_id").to_numpy(zero_copy_only=False)
        probes = table.column("probes").chunk(0).flatten().to_numpy().reshape(-1, nprobe)
        vectors = arrow.vectors(table.column("vector").chunk(0), dim)
        self_index = table.column("index").to_numpy()
        query_codes = rules.codes_of(table.column("codes").chunk(0), layout) if layout.active else None
        best_s = np.full((len(ids), k), topk.EMPTY_SCORE, dtype=np.float32)
        best_i = np.full((len(ids), k), topk.EMPTY_ID, dtype=np.int64)
        chunks = [bc.value for bc in chunk_bcs]
        for listed in chunks:
            mask = rules.make(layout, query_codes, listed.lists.codes) if layout.active else None
            found_s, found_i = ivf.score_group(
                listed.lists, probes, self_index, vectors, k, min_score, block_rows, mask
            )
            best_s, best_i = _merged(best_s, best_i, found_s, found_i, k)
        present = best_i != topk.EMPTY_ID
        rows = np.nonzero(present)[0]
        found = best_i[present]
        names = np.empty(len(found), dtype=object)
        for listed in chunks:
            inside = (found >= listed.offset) & (found < listed.offset + len(listed.ids))
            names[inside] = listed.ids[found[inside] - listed.offset]
        return arrow.partial_batch(ids[rows], found, names, best_s[present])

    def score(batches):
        parts, rows = [], 0
        for batch in batches:
            if batch.num_rows:
                parts.append(batch)
                rows += batch.num_rows
            if rows >= QUERY_ROWS:
                yield score_queries(parts)
                parts, rows = [], 0
        if parts:
            yield score_queries(parts)

    return score


def _spread(values) -> dict:
    values = np.asarray(values)
    if not len(values):
        return {"min": 0, "median": 0.0, "max": 0}
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}


# --------------------------------------------------------------------------------------------
# The strategy


def search(spark, run_id: str, items: Prepared, settings: NeighboursConfig, held: list) -> Scored:
    """Approximate: k-means lists, each query scanned against the members of its nprobe nearest
    lists, one broadcast chunk of candidates at a time. PARTIAL rows to merge, with the lists' and
    tasks' sizes and the sampled recall@k for the summary. The broadcasts and persisted frames go
    into ``held``, for the caller to release once the table is written."""
    from pyspark import StorageLevel

    # With hide_duplicates the lists are scored deeper and cut to k by the writer.
    k, min_score = items.depth or settings.k, settings.min_score
    ordered, dim, layout = items.ordered, items.dim, items.layout
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
            recalls = recall_by_nprobe(vectors, dim, centroids, exact_lists, n_queries)
            chosen = ivf.choose_nprobe(recalls, settings.target_recall, max(1, nlist // 4))
            nprobe = chosen.nprobe
            log.info(
                "IVF: nprobe %d for recall@%d %s (at least %s, 95%% confidence) on %d sampled queries (target %.3f%s)",
                nprobe,
                k,
                "n/a" if chosen.recall is None else f"{chosen.recall:.4f}",
                "n/a" if chosen.lower_bound is None else f"{chosen.lower_bound:.4f}",
                len(ids),
                settings.target_recall,
                "" if chosen.target_met else f", not reached within {max(1, nlist // 4)} of {nlist} lists",
            )
        phases["recall_sample"] = time.perf_counter() - mark

    mark = time.perf_counter()
    assigned = assign(ordered, centroids_bc, offsets_bc, nprobe, dim).persist(StorageLevel.MEMORY_AND_DISK)
    held.append(assigned)
    list_sizes, task_rows = sizes(assigned, nlist)
    stats = ivf.list_stats(list_sizes)
    phases["ivf_assign"] = time.perf_counter() - mark
    chunk_rows = rows_per_chunk(settings.broadcast_max_mb, dim)
    n_chunks = math.ceil(n_candidates / chunk_rows)
    stats.update(
        chunks=n_chunks,
        chunk_rows=chunk_rows,
        passes=math.ceil(n_chunks / chunks_per_pass(settings.broadcast_max_mb)),
        tasks=len(task_rows),
        task_queries=_spread(task_rows),
    )
    log.info(
        "IVF: %d lists of %s..%s candidates (median %s, largest %.1fx the mean), in %d chunk(s) of up to %d; "
        "%d tasks of %s..%s queries; each query probes %d lists",
        nlist,
        stats["list_size"]["min"],
        stats["list_size"]["max"],
        stats["list_size"]["median"],
        stats["largest_list_vs_mean"],
        n_chunks,
        chunk_rows,
        len(task_rows),
        stats["task_queries"]["min"],
        stats["task_queries"]["max"],
        nprobe,
    )

    mark = time.perf_counter()
    partials, partial_rows = [], 0
    chunks = listed_chunks(assigned, n_candidates, chunk_rows, dim, layout)
    per_pass = chunks_per_pass(settings.broadcast_max_mb)
    passes = math.ceil(n_chunks / per_pass)
    for number in range(1, passes + 1):
        chunk_bcs = []
        for listed in itertools.islice(chunks, per_pass):
            chunk_bcs.append(sc.broadcast(listed))
            held.append(chunk_bcs[-1])
            log.info(
                "IVF chunk %d/%d: candidates %d..%d, %.1f MB broadcast",
                len(chunk_bcs) + (number - 1) * per_pass,
                n_chunks,
                listed.offset,
                listed.offset + len(listed.ids) - 1,
                listed.nbytes / 2**20,
            )
            del listed
        scorer = _pass_scorer(chunk_bcs, k, settings.block_rows, min_score, dim, nprobe, layout)
        scored = assigned.mapInArrow(scorer, arrow.PARTIAL).persist(StorageLevel.MEMORY_AND_DISK)
        held.append(scored)
        stage = f"neighbours ivf pass {number}/{passes}"
        partial_rows += watch.collect(spark, run_id, stage, n_queries, scored.groupBy().count())[0]["count"]
        partials.append(scored)
        for chunk_bc in chunk_bcs:
            chunk_bc.unpersist()  # executors drop it; the driver keeps it for recomputation
    phases["score"] = time.perf_counter() - mark
    stats["partial_rows_per_query"] = round(partial_rows / max(1, n_queries), 2)
    if partials:
        out.partials = partials[0]
        for other in partials[1:]:
            out.partials = out.partials.union(other)
    else:
        out.partials = spark.createDataFrame([], arrow.PARTIAL)

    recall = None
    if sampled is not None:
        mark = time.perf_counter()
        ids, exact = sampled
        found = found_for_sample(out.partials, ids, k)
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
                # The one-sided 95% lower bound that had to reach the target.
                "recall_lower_bound": None if chosen.lower_bound is None else round(chosen.lower_bound, 4),
            }
        ),
        "trained_on": int(min(size, n_candidates)),
        "kmeans_iterations": ivf.KMEANS_ITERATIONS,
        **stats,
    }
    out.centroids = centroids
    return out
