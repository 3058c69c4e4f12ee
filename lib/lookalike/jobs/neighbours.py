"""Neighbours job: output.embeddings -> output.neighbours, the exact cosine top-k of every item."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Optional

from lookalike.neighbours import exact as nb
from lookalike.publish import lineage
from lookalike.neighbours import ivf, ivf_stage
from lookalike.publish import versions as publish
from lookalike import schemas
from lookalike.io import storage
from lookalike.config import Config
from lookalike.errors import ConfigError, InputError
from lookalike.io.partfiles import PartWriter
from lookalike.progress import Progress, StageWatcher
from lookalike.publish.versions import OutputSet
from lookalike.runinfo import library_versions, new_run_id
from lookalike.jobs.common import job_main

log = logging.getLogger(__name__)

REQUIRED = ("output.embeddings", "output.neighbours")
# Queries per partition when neighbours.partitions is 0 (auto): tasks short enough for progress
# and retries, files of a few MB.
QUERIES_PER_PARTITION = 20_000


def _analysis_error():
    from pyspark.errors import AnalysisException

    return AnalysisException


def read_embeddings(spark, path: str):
    try:
        table = spark.read.parquet(path)
    except _analysis_error() as exc:
        raise InputError(f"cannot read the embeddings table at {path} (run the embed job first?): "
                         f"{str(exc).splitlines()[0]}") from None
    missing = [c for c in ("item_id", "model", "pooling", "weights", "dim", "embedding") if c not in table.columns]
    if missing:
        raise InputError(f"{path} is not an embeddings table: it has no column {', '.join(missing)} "
                         f"(it has {', '.join(table.columns)})")
    return table


def read_candidates(spark, candidates):
    """neighbours.candidates as a DataFrame of item_id, or None (every item may be recommended)."""
    if candidates is None:
        return None
    if isinstance(candidates, list):
        if not candidates:
            raise ConfigError("config key 'neighbours.candidates' is an empty list; use null to allow every item")
        return spark.createDataFrame([(str(c),) for c in candidates], "item_id string")
    lowered = candidates.lower()
    try:
        if lowered.endswith((".csv", ".csv.gz", ".txt")):
            table = spark.read.option("header", True).csv(candidates)
        else:
            table = spark.read.parquet(candidates)
    except _analysis_error() as exc:
        raise ConfigError(f"config key 'neighbours.candidates': cannot read {candidates} as a "
                          f"{'CSV' if '.csv' in lowered else 'Parquet'} table: {str(exc).splitlines()[0]}") from None
    if "item_id" not in table.columns:
        raise ConfigError(f"config key 'neighbours.candidates': {candidates} has no item_id column "
                          f"(it has {', '.join(table.columns)})")
    return table.select("item_id")


def run(spark, cfg: Config) -> dict:
    from pyspark import StorageLevel

    started = time.perf_counter()
    run_id = new_run_id()
    settings = cfg.neighbours
    # Its cost is the N^2 part: when neither the embeddings nor the settings changed since the
    # published table was computed, that table is already the answer.
    inputs = {"embeddings": lineage.embeddings_identity(cfg.output.embeddings, cfg.s3),
              "settings": cfg.fingerprint("neighbours"),
              "candidates": _candidates_identity(settings.candidates)}
    done = lineage.unchanged_since(cfg.output.neighbours, inputs, cfg.s3)
    if done:
        summary = {"job": "neighbours", "run_id": run_id, "ok": True, "skipped": True,
                   "unchanged_since": done.get("run_id"), "inputs": inputs,
                   "seconds": round(time.perf_counter() - started, 2)}
        log.info("neighbours: nothing changed since run %s (same embeddings, same settings); "
                 "%s is left as it is", done.get("run_id"), cfg.output.neighbours)
        print(json.dumps(summary, sort_keys=True, default=str))
        return summary
    source = publish.resolve(cfg.output.embeddings, cfg.s3)
    embeddings = read_embeddings(spark, source)
    candidate_ids = read_candidates(spark, settings.candidates)
    # Parquet footers give the row count without reading the vectors.
    # Two per core: enough to balance, few enough that small tables are not all overhead (the
    # symmetric exact scoring does (P + 1) / 2P of the full work: 62% at P = 4, 56% at 8).
    partitions = settings.partitions or max(2 * spark.sparkContext.defaultParallelism,
                                            math.ceil(embeddings.count() / QUERIES_PER_PARTITION))
    ordered = nb.ordered_items(embeddings, partitions, candidate_ids).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        summary = _run(spark, cfg, run_id, ordered, candidate_ids, partitions, started, inputs)
    finally:
        ordered.unpersist()
    print(json.dumps(summary, sort_keys=True, default=str))
    return summary


def _candidates_identity(candidates) -> Optional[str]:
    """A list is covered by the settings fingerprint; a table file by its size and mtime (or the
    path alone for remote tables, which the docs point out)."""
    if candidates is None:
        return "all"
    if not isinstance(candidates, str):
        return "inline"
    path = storage.local_path(candidates)
    if not (storage.is_s3(candidates) or storage.is_hadoop(candidates)) and os.path.exists(path):
        stat = os.stat(path)
        return f"{candidates}@{stat.st_size}-{stat.st_mtime_ns}"
    return candidates


def _run(spark, cfg: Config, run_id: str, ordered, candidate_ids, partitions: int, started: float,
         inputs: dict) -> dict:
    from pyspark.sql import functions as F

    settings = cfg.neighbours
    mark = time.perf_counter()
    seen = nb.inspect(ordered)
    # prepare: the unchanged-input check, reading the footers, planning (before any vector moves).
    phases = {"prepare": mark - started, "read_order_normalise": time.perf_counter() - mark}
    kinds = seen["kinds"]
    total = sum(g["rows"] for g in kinds)
    if not total:
        raise InputError(f"the embeddings table {cfg.output.embeddings} has no rows")
    if seen["duplicates"]:
        raise InputError(
            f"the embeddings table {cfg.output.embeddings} has {seen['duplicates']} duplicate item ids, e.g. "
            f"{', '.join(map(repr, seen['duplicate_sample']))}; re-run the embed job")
    kind = nb.check_comparable(kinds, cfg.output.embeddings)
    valid = sum(g["valid"] for g in kinds)
    invalid = total - valid
    if invalid:
        log.warning("%d of %d embeddings are left out (zero norm or non-finite values), e.g. %s",
                    invalid, total, ", ".join(seen["invalid_sample"]))
    if not valid:
        raise InputError(f"the embeddings table {cfg.output.embeddings} has no usable vector: all {total} "
                         f"have zero norm or non-finite values (e.g. {', '.join(seen['invalid_sample'])})")
    dim = kind["length"]
    if str(kind["weights"]).startswith("random-init"):
        log.warning("the embeddings come from random-init weights (%s): these neighbours are not real "
                    "recommendations", kind["weights"])

    n_candidates = sum(g["candidates"] for g in kinds)
    unknown, unknown_sample = 0, []
    if candidate_ids is not None:
        wanted = candidate_ids.select(F.col("item_id").cast("string")).distinct()
        unknown = wanted.count() - n_candidates
        if unknown:
            usable = ordered.filter("valid AND is_candidate").select("item_id")
            unknown_sample = [r.item_id for r in wanted.join(usable, "item_id", "left_anti").limit(nb.SAMPLE_IDS).collect()]
            log.warning("%d ids in neighbours.candidates have no usable embedding and cannot be "
                        "recommended, e.g. %s", unknown, ", ".join(map(str, unknown_sample)))
        if not n_candidates:
            raise InputError(f"neighbours.candidates matches no item with a usable embedding in "
                             f"{cfg.output.embeddings}; nothing could be recommended")
    summary = {
        "job": "neighbours", "run_id": run_id, "ok": True,
        "items": total, "queries": valid, "invalid": invalid, "invalid_sample": seen["invalid_sample"],
        "candidates": n_candidates, "candidates_unknown": unknown, "candidates_unknown_sample": unknown_sample,
        "model": kind["model"], "weights": kind["weights"], "pooling": kind["pooling"], "dim": dim,
        "embeddings": cfg.output.embeddings, "embeddings_version": source_version(cfg),
        "neighbours": cfg.output.neighbours, "phase_seconds": phases, "inputs": inputs,
    }
    phases["checks"] = time.perf_counter() - mark - phases["read_order_normalise"]
    _score_and_write(spark, cfg, ordered, summary, partitions, started)
    how = (f"{summary['chunks']} chunk(s)" if settings.method == "exact" else
           f"IVF {summary['ivf']['nlist']} lists, nprobe {summary['ivf']['nprobe']}, "
           f"recall@{settings.k} {summary['recall_at_k']}")
    log.info("neighbours done: %d queries x %d candidates (%s), k=%d: %d rows, %d items "
             "without neighbours, %d invalid left out, %.1fs (%.0f queries/s) -> %s",
             valid, n_candidates, how, settings.k, summary["rows"],
             summary["items_without_neighbours"], invalid, summary["seconds"], summary["queries_per_second"],
             cfg.output.neighbours)
    return summary


def source_version(cfg: Config) -> Optional[str]:
    try:
        return publish.current_version(cfg.output.embeddings, cfg.s3)
    except Exception:  # only informational
        return None


def _score_and_write(spark, cfg: Config, ordered, summary: dict, partitions: int, started: float) -> None:
    """Score (exact or IVF), write the table into a new version, and publish it with ``summary``
    (completed here with the counts and times)."""
    settings = cfg.neighbours
    phases = summary["phase_seconds"]
    cleanup: list = []  # persisted frames and broadcasts, released whatever happens
    with OutputSet(spark, {"neighbours": cfg.output.neighbours}, summary["run_id"], cfg.output.force_unlock,
                   s3=cfg.s3) as out:
        staging = out.staging("neighbours")
        try:
            scorer = _score_ivf if settings.method == "ivf" else _score_exact
            partials, written = scorer(spark, cfg, ordered, summary, partitions, staging, cleanup)
            if partials is not None:
                mark = time.perf_counter()
                merged = partials.repartitionByRange(partitions, "item_id").sortWithinPartitions("item_id")
                written = _collect(spark, summary["run_id"], "neighbours merge", summary["queries"],
                                   nb.write_ranked(merged, staging, settings.k, cfg.s3, settings.row_group_rows))
                phases["merge"] = time.perf_counter() - mark
            rows = sum(w["rows"] for w in written)
            if not written:
                # No item has a neighbour (e.g. min_score above every score): still a readable table.
                writer = PartWriter(staging, "part-00000.parquet", schemas.arrow_schema(schemas.NEIGHBOURS), cfg.s3)
                writer.close()
            items_with = sum(w["items"] for w in written)
            seconds = time.perf_counter() - started
            summary.update({
                "method": settings.method, "k": settings.k, "min_score": settings.min_score,
                "candidates_filter": settings.candidates if isinstance(settings.candidates, str) else
                (None if settings.candidates is None else f"{len(settings.candidates)} ids"),
                "partitions": partitions, "block_rows": settings.block_rows, "rows": rows, "files": len(written),
                "row_groups": sum(w["row_groups"] for w in written),
                "items_with_neighbours": items_with, "items_without_neighbours": summary["queries"] - items_with,
                "seconds": round(seconds, 2), "queries_per_second": round(summary["queries"] / seconds, 1),
                "config_fingerprint": {"neighbours": cfg.fingerprint("neighbours")},
                "versions": library_versions(),
            })
            summary["phase_seconds"] = {name: round(value, 2) for name, value in phases.items()}
            out.commit({"neighbours": summary})
        finally:
            for thing in cleanup:
                if hasattr(thing, "unpersist") and not hasattr(thing, "destroy"):
                    thing.unpersist()
                else:
                    thing.destroy()


def _score_exact(spark, cfg: Config, ordered, summary: dict, partitions: int, staging: str, cleanup: list):
    """Every query against every candidate, one broadcast chunk of candidates at a time. Returns
    (PARTIAL rows to merge, None), or (None, WRITTEN rows) when one chunk held every candidate and
    the tasks wrote the table themselves."""
    from pyspark import StorageLevel

    settings = cfg.neighbours
    run_id, dim = summary["run_id"], summary["dim"]
    n_queries, n_candidates = summary["queries"], summary["candidates"]
    chunk_rows = nb.rows_per_chunk(settings.broadcast_max_mb, dim)
    n_chunks = math.ceil(n_candidates / chunk_rows)
    summary.update(chunks=n_chunks, chunk_rows=chunk_rows)
    log.info("%d queries, %d candidates of dim %d in %d chunk(s) of up to %d rows (%.1f MB), %d partitions, "
             "blocks of %d queries", n_queries, n_candidates, dim, n_chunks, chunk_rows,
             min(chunk_rows, n_candidates) * (4 * dim + nb.ID_BYTES) / 2 ** 20, partitions, settings.block_rows)
    sc = spark.sparkContext
    phases = summary["phase_seconds"]
    phases.update(collect_broadcast=0.0, score=0.0)
    partials = []
    chunks = nb.candidate_chunks(ordered, n_candidates, chunk_rows, dim)
    queries = nb.queries(ordered)
    # When the queries are the candidates, score(a, b) = score(b, a): each block serves both.
    symmetric = settings.symmetric and n_candidates == n_queries and partitions > 1
    summary["symmetric"] = symmetric
    if symmetric:
        bounds_bc = sc.broadcast(nb.candidate_offsets(ordered))
        cleanup.append(bounds_bc)
    for number in range(1, n_chunks + 1):
        mark = time.perf_counter()
        chunk = next(chunks)
        chunk_bc = sc.broadcast(chunk)
        cleanup.append(chunk_bc)
        phases["collect_broadcast"] += time.perf_counter() - mark
        mark = time.perf_counter()
        log.info("chunk %d/%d: candidates %d..%d (%s .. %s), %.1f MB broadcast", number, n_chunks,
                 chunk.offset, chunk.offset + len(chunk.ids) - 1, chunk.ids[0], chunk.ids[-1],
                 chunk.nbytes / 2 ** 20)
        del chunk
        if n_chunks == 1 and not symmetric:
            # Already in the output's partitioning and order: rank and write in the same tasks.
            written = _collect(spark, run_id, "neighbours", n_queries, nb.score_and_write(
                queries, chunk_bc, settings.k, settings.block_rows, settings.min_score, dim,
                staging, cfg.s3, settings.row_group_rows))
            phases["score"] += time.perf_counter() - mark
            return None, written
        if symmetric:
            scored = nb.score_symmetric(queries, chunk_bc, bounds_bc, settings.k, settings.block_rows,
                                        settings.min_score, dim)
        else:
            scored = nb.score(queries, chunk_bc, settings.k, settings.block_rows, settings.min_score, dim)
        scored = scored.persist(StorageLevel.MEMORY_AND_DISK)
        cleanup.append(scored)
        _collect(spark, run_id, f"neighbours chunk {number}/{n_chunks}", n_queries, scored.groupBy().count())
        partials.append(scored)
        chunk_bc.unpersist()  # executors drop it; the driver keeps it for recomputation
        phases["score"] += time.perf_counter() - mark
    if next(chunks, None) is not None:
        raise RuntimeError(f"more candidates than the {n_candidates} counted; was the table changed?")
    merged = partials[0]
    for other in partials[1:]:
        merged = merged.union(other)
    return merged, None


def _score_ivf(spark, cfg: Config, ordered, summary: dict, partitions: int, staging: str, cleanup: list):
    """Approximate: k-means lists, queries scanned against their nprobe nearest lists (lookalike.ivf).
    Returns (PARTIAL rows to merge, None); puts the list statistics and the sampled recall@k into
    ``summary``."""
    from pyspark import StorageLevel

    settings = cfg.neighbours
    run_id, dim = summary["run_id"], summary["dim"]
    n_queries, n_candidates = summary["queries"], summary["candidates"]
    sc = spark.sparkContext
    phases = summary["phase_seconds"]
    nlist = min(settings.nlist or ivf.auto_nlist(n_candidates), n_candidates)
    nprobe = min(settings.nprobe, nlist)
    if nprobe < settings.nprobe:
        log.info("neighbours.nprobe=%d is more than the %d lists: every list is probed (exact search)",
                 settings.nprobe, nlist)

    mark = time.perf_counter()
    offsets_bc = sc.broadcast(nb.candidate_offsets(ordered))
    cleanup.append(offsets_bc)
    size = ivf.train_size(n_candidates, nlist)
    sample = ivf_stage.training_sample(ordered, n_candidates, size, dim, settings.seed)
    log.info("IVF: training %d lists on %d of %d candidates (spherical k-means, %d iterations)",
             nlist, len(sample), n_candidates, ivf.KMEANS_ITERATIONS)
    centroids = ivf.train(sample, min(nlist, len(sample)), seed=settings.seed)
    nlist = len(centroids)
    del sample
    centroids_bc = sc.broadcast(centroids)
    cleanup.append(centroids_bc)
    phases["ivf_train"] = time.perf_counter() - mark

    mark = time.perf_counter()
    sizes = ivf_stage.list_sizes(ordered, centroids_bc, nlist, dim)
    group_rows = max(1, math.ceil(n_candidates / partitions))
    the_plan = ivf.plan(sizes, centroids, group_rows, seed=settings.seed)
    stats = ivf.skew(sizes, the_plan)
    plan_bc = sc.broadcast(the_plan)
    cleanup.append(plan_bc)
    phases["ivf_assign"] = time.perf_counter() - mark
    log.info("IVF: %d lists of %s..%s candidates (median %s, largest %.1fx the mean, %d split), packed into %d "
             "groups of %d..%d candidates; each query probes %d lists",
             nlist, stats["list_size"]["min"], stats["list_size"]["max"], stats["list_size"]["median"],
             stats["largest_list_vs_mean"], stats["lists_split"], stats["groups"], stats["group_candidates"]["min"],
             stats["group_candidates"]["max"], nprobe)

    mark = time.perf_counter()
    routed = ivf_stage.route(ordered, centroids_bc, plan_bc, offsets_bc, nprobe, dim)
    scored = ivf_stage.score(routed, the_plan.groups, settings.k, settings.block_rows, settings.min_score,
                             dim, nprobe).persist(StorageLevel.MEMORY_AND_DISK)
    cleanup.append(scored)
    routed_rows = _collect(spark, run_id, "neighbours ivf", n_queries, scored.groupBy().count())[0]["count"]
    phases["score"] = time.perf_counter() - mark
    stats["partial_rows_per_query"] = round(routed_rows / max(1, n_queries), 2)

    recall = None
    if settings.recall_sample:
        mark = time.perf_counter()
        ids, vectors = ivf_stage.sample_queries(ordered, n_queries, settings.recall_sample, settings.seed)
        sample_bc = sc.broadcast((ids, vectors))
        cleanup.append(sample_bc)
        exact = ivf_stage.exact_for_sample(ordered, offsets_bc, sample_bc, settings.k, settings.min_score, dim)
        found = ivf_stage.found_for_sample(scored, ids, settings.k)
        recall = ivf.recall(found, {q: set(row[row >= 0].tolist()) for q, row in zip(ids, exact)})
        phases["recall_sample"] = time.perf_counter() - mark
        log.info("IVF: recall@%d = %s on %d sampled queries (against exact search)", settings.k,
                 "n/a" if recall is None else f"{recall:.4f}", len(ids))
        summary["recall_sample"] = {"queries": int(len(ids)), "k": settings.k,
                                    "recall_at_k": None if recall is None else round(recall, 4)}
    summary["recall_at_k"] = None if recall is None else round(recall, 4)
    summary["ivf"] = {"nlist": nlist, "nprobe": nprobe, "trained_on": int(min(size, n_candidates)),
                      "kmeans_iterations": ivf.KMEANS_ITERATIONS, **stats}
    return scored, None


def _collect(spark, run_id: str, stage: str, n_queries: int, frame) -> list[dict]:
    """Run ``frame`` under a progress watcher (tasks done -> share of queries done)."""
    progress = Progress(log, stage, n_queries, "queries")
    group = f"lookalike-neighbours-{run_id}-{stage.replace(' ', '-').replace('/', 'of')}"
    with StageWatcher(spark, group, progress,
                      lambda done, total: min(n_queries, int(n_queries * done / max(total, 1)))):
        rows = [row.asDict() for row in frame.collect()]
    progress.update(n_queries, force=True)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    return job_main(argv, run, "Exact cosine top-k neighbours of every item in the embeddings table.", REQUIRED)
