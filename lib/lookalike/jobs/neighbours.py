"""Neighbours job: output.embeddings -> output.neighbours, the cosine top-k of every item (exact, or
approximate with neighbours.method: ivf). The stages live in lookalike.neighbours."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from lookalike import publish
from lookalike.config import Config, NeighboursConfig
from lookalike.jobs.common import job_main, release, skipped
from lookalike.neighbours import (
    adapt,
    adapt_stage,
    arrow,
    exact,
    incremental_ivf,
    incremental_stage,
    ivf_stage,
    keys,
    prepare,
    watch,
    write,
)
from lookalike.neighbours.inputs import (
    candidates_identity,
    published_identity,
    read_attributes,
    read_candidates,
    read_duplicates,
    read_embeddings,
)
from lookalike.publish import lineage
from lookalike.runinfo import library_versions, new_run_id

log = logging.getLogger(__name__)

REQUIRED = ("output.embeddings", "output.neighbours")


def run(spark, cfg: Config) -> dict:
    started = time.perf_counter()
    run_id = new_run_id()
    settings = cfg.neighbours
    # Its cost is the N^2 part: when neither the embeddings, the candidates nor a setting that
    # changes the answer changed since the published table was computed, that table is already
    # the answer. Identified before anything is read: a file replaced meanwhile then makes the
    # next run recompute rather than skip.
    source = publish.current(cfg.output.embeddings, cfg.s3)  # the snapshot both checked and read
    inputs = {
        "embeddings": lineage.identity_of(source),
        "result_settings": settings.result_fingerprint(),
        "candidates": candidates_identity(settings.candidates, cfg.s3),
    }
    # Only when used, so that a table published before these inputs existed still skips.
    if settings.attributes is not None:
        inputs["attributes"] = lineage.files_identity(settings.attributes, cfg.s3)
    if settings.hide_duplicates:
        inputs["duplicates"] = published_identity(cfg.output.duplicates, cfg.s3)
    done = lineage.unchanged_since(cfg.output.neighbours, inputs, cfg.s3)
    if done:
        return _skipped(cfg, run_id, done, inputs, started)

    incremental = settings.incremental
    # With IVF, the lists' centroids are kept too, so that later runs use the same lists.
    kept_centroids = incremental and settings.method == "ivf"
    names = ["neighbours", "neighbours_lists", "neighbours_centroids"][: 1 + incremental + kept_centroids]
    outputs = publish.OutputSet(spark, cfg.output, names, run_id, cfg.s3).check()
    # The lists as they are now, read before anything is written: this run's own replace them.
    previous = publish.current(cfg.output.neighbours_lists, cfg.s3) if incremental else None
    centroids = publish.current(cfg.output.neighbours_centroids, cfg.s3) if kept_centroids else None
    embeddings = read_embeddings(spark, source or cfg.output.embeddings, cfg.s3)
    ordering = ordered_items(spark, cfg, embeddings)
    ordered, partitions = ordering.ordered, ordering.partitions
    held: list = []  # broadcasts and persisted frames, released whatever happens
    try:
        mark = time.perf_counter()
        seen = prepare.inspect(ordered)
        # prepare: the unchanged-input check, reading the footers, planning (before any vector moves).
        phases = {"prepare": mark - started, "read_order_normalise": time.perf_counter() - mark}
        items, facts = prepared_items(spark, cfg, ordering, seen, held)
        summary = {
            "job": "neighbours",
            "run_id": run_id,
            "ok": True,
            **facts,
            "embeddings": cfg.output.embeddings,
            "embeddings_version": source.version if source else None,
            "neighbours": cfg.output.neighbours,
            "phase_seconds": phases,
            "inputs": inputs,
        }
        phases["checks"] = time.perf_counter() - mark - phases["read_order_normalise"]
        items, adapted, adapt_phases, mean = adapt_stage.adapt_items(
            spark, run_id, items, settings, held, cfg.s3, _stored_mean(previous, settings, facts["dim"])
        )
        summary.update(adapted)
        phases.update(adapt_phases)

        with outputs as out:
            staging = out.staging("neighbours")
            try:
                if incremental:
                    scored = incremental_stage.search(
                        spark,
                        run_id,
                        items,
                        settings,
                        held,
                        previous,
                        incremental_stage.read_state(spark, previous, cfg.s3),
                        settings.result_fingerprint(),
                        out.staging("neighbours_lists"),
                        staging,
                        cfg.s3,
                        incremental_ivf.read_kept(
                            spark, centroids, (previous.summary if previous else None) or {}, cfg.s3
                        )
                        if kept_centroids
                        else None,
                        out.staging("neighbours_centroids") if kept_centroids else None,
                    )
                elif settings.method == "ivf":
                    scored = ivf_stage.search(spark, run_id, items, settings, held)
                else:
                    scored = exact.search(spark, run_id, items, settings, held, staging, cfg.s3)
                phases.update(scored.phases)
                written = scored.written
                if written is None:
                    mark = time.perf_counter()
                    written = watch.collect(
                        spark,
                        run_id,
                        "neighbours merge",
                        items.queries,
                        write.merge_and_write(
                            scored.partials,
                            partitions,
                            staging,
                            settings.k,
                            cfg.s3,
                            settings.row_group_rows,
                            items.hide,
                        ),
                    )
                    phases["merge"] = time.perf_counter() - mark
                if not written:
                    write.write_empty(staging, cfg.s3)
                summary.update(scored.summary)
                summary.update(_totals(cfg, partitions, written, items.queries, started))
                summary["phase_seconds"] = {name: round(value, 2) for name, value in phases.items()}
                # After a lost commit race, this result is still right while the embeddings are
                # the snapshot it read (another run then computed the same table).
                read = source.snapshot_id if source else None
                summaries = {"neighbours": summary}
                if scored.state is not None:
                    summaries["neighbours_lists"] = {**scored.state, "run_id": run_id, "inputs": inputs}
                    if mean is not None:
                        # The mean these lists were scored with, for the next incremental run.
                        summaries["neighbours_lists"]["center"] = adapt.encode(mean)
                if kept_centroids:
                    summaries["neighbours_centroids"] = {"run_id": run_id, "nlist": len(scored.centroids)}
                out.commit(
                    summaries,
                    still_valid=lambda: lineage.snapshot_id(cfg.output.embeddings, cfg.s3) == read,
                )
            finally:
                release(held)
                held.clear()
    finally:
        ordered.unpersist()
        release(held)
    _log_done(summary, settings)
    print(json.dumps(summary, sort_keys=True, default=str))
    return summary


def _stored_mean(previous, settings: NeighboursConfig, dim: int):
    """The catalogue mean an incremental run with neighbours.center reuses: the one stored with the
    previous lists when they were made with this run's result settings, else None (computed
    afresh: every centred vector then changes, and the lists are scored in full)."""
    if not (settings.incremental and settings.center) or previous is None:
        return None
    stored = previous.summary or {}
    if stored.get("result_settings") != settings.result_fingerprint() or "center" not in stored:
        return None
    return adapt.decode(stored["center"], dim)


@dataclass(frozen=True)
class Ordering:
    """The items ordered for the search (persisted) and the rules' inputs they were keyed with."""

    ordered: Any
    partitions: int
    candidate_ids: Any
    attributes: Any
    duplicates: Any


def ordered_items(spark, cfg: Config, embeddings) -> Ordering:
    """Read what the rules need (candidates, attributes, the duplicates table), key the embeddings
    with it and order them into the search's partitions (persisted: the caller unpersists)."""
    from pyspark import StorageLevel

    settings = cfg.neighbours
    candidate_ids = read_candidates(spark, settings.candidates)
    attributes = duplicates = None
    if settings.attributes is not None:
        named = tuple((key, getattr(settings, key)) for key in ("same", "exclude_same") if getattr(settings, key))
        attributes = read_attributes(spark, settings.attributes, named)
    if settings.hide_duplicates:
        duplicates = read_duplicates(spark, cfg.output.duplicates, cfg.s3)
    partitions = prepare.partition_count(spark, embeddings, settings.partitions)
    keyed = keys.attach(spark, embeddings, settings, attributes, duplicates)
    ordered = prepare.ordered_items(keyed, partitions, candidate_ids).persist(StorageLevel.MEMORY_AND_DISK)
    return Ordering(ordered, partitions, candidate_ids, attributes, duplicates)


def prepared_items(spark, cfg: Config, ordering: Ordering, seen, held: list) -> tuple[prepare.Prepared, dict]:
    """The checked facts of the ordered items (``seen``: ``prepare.inspect`` of them) and what the
    search stages take; broadcasts go into ``held``."""
    settings = cfg.neighbours
    ordered = ordering.ordered
    facts = prepare.validate(seen, ordered, ordering.candidate_ids, cfg.output.embeddings)
    facts.update(keys.counts(spark, ordered, settings, ordering.attributes, settings.attributes, ordering.duplicates))
    items = prepare.Prepared(
        ordered,
        ordering.partitions,
        facts["queries"],
        facts["candidates"],
        facts["dim"],
        keys.layout_for(settings),
        *hidden_groups(spark, ordered, settings, facts, held),
    )
    return items, facts


def hidden_groups(spark, ordered, settings: NeighboursConfig, facts: dict, held: list) -> tuple:
    """(depth, broadcast write.HiddenGroups) for hide_duplicates, else (0, None). The group of every
    candidate in one goes to the writers, which keep one member per group."""
    import numpy as np
    from pyspark.sql import functions as F

    if not settings.hide_duplicates:
        return 0, None
    depth = facts["hide_duplicates"]["depth"]
    last = F.element_at("codes", -1)
    members = arrow.to_arrow(ordered.filter(prepare.USABLE).filter(last != -1).select("item_id", last.alias("group")))
    ids = np.array(members.column("item_id").to_pylist(), dtype=object)
    order = np.argsort(ids, kind="stable")
    hide = spark.sparkContext.broadcast(
        write.HiddenGroups(ids[order], members.column("group").to_numpy()[order], depth)
    )
    held.append(hide)
    return depth, hide


def _skipped(cfg: Config, run_id: str, done: dict, inputs: dict, started: float) -> dict:
    return skipped(
        "neighbours",
        run_id,
        done,
        inputs,
        started,
        "same embeddings, candidates and result settings",
        cfg.output.neighbours,
    )


def _totals(cfg: Config, partitions: int, written: list, n_queries: int, started: float) -> dict:
    """The summary's settings, counts of what was written, and timings."""
    settings = cfg.neighbours
    items_with = sum(w["items"] for w in written)
    seconds = time.perf_counter() - started
    return {
        "method": settings.method,
        "k": settings.k,
        "min_score": settings.min_score,
        "candidates_filter": settings.candidates
        if isinstance(settings.candidates, str)
        else (None if settings.candidates is None else f"{len(settings.candidates)} ids"),
        "partitions": partitions,
        "block_rows": settings.block_rows,
        "rows": sum(w["rows"] for w in written),
        "files": len(written),
        "row_groups": sum(w["row_groups"] for w in written),
        "items_with_neighbours": items_with,
        "items_without_neighbours": n_queries - items_with,
        "seconds": round(seconds, 2),
        "queries_per_second": round(n_queries / seconds, 1),
        "config_fingerprint": {"neighbours": cfg.fingerprint("neighbours")},
        "versions": library_versions(),
    }


def _log_done(summary: dict, settings: NeighboursConfig) -> None:
    how = (
        f"{summary['mode']}: {summary['scored_pairs']} pairs scored, {summary['rows_rescored']} lists scored in full"
        if "mode" in summary
        else f"{summary['chunks']} chunk(s)"
        if settings.method == "exact"
        else f"IVF {summary['ivf']['nlist']} lists, nprobe {summary['ivf']['nprobe']}, "
        f"recall@{settings.k} {summary['recall_at_k']}"
    )
    log.info(
        "neighbours done: %d queries x %d candidates (%s), k=%d: %d rows, %d items "
        "without neighbours, %d invalid left out, %.1fs (%.0f queries/s) -> %s",
        summary["queries"],
        summary["candidates"],
        how,
        settings.k,
        summary["rows"],
        summary["items_without_neighbours"],
        summary["invalid"],
        summary["seconds"],
        summary["queries_per_second"],
        summary["neighbours"],
    )


def main(argv: list[str] | None = None, spark=None) -> int:
    """The command line (``jobs/neighbours.py``); ``spark``: run in a session the caller owns."""
    return job_main(
        argv, run, "Exact cosine top-k neighbours of every item in the embeddings table.", REQUIRED, spark=spark
    )
