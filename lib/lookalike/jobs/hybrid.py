"""Hybrid job: output.embeddings + hybrid.interactions -> output.hybrid, every item's top-k by
``hybrid.alpha * cf + (1 - alpha) * visual`` (docs/hybrid.md).

Behaviour factors come from Spark MLlib's ALS; items nobody interacted with get theirs from a
ridge map learned from pictures to factors on the others. Each item's blended vector makes the
blended score a dot product, so the neighbours stages (exact or IVF, candidates, same,
exclude_same, hide_duplicates) rank it unchanged; a last pass adds each pair's ``source``."""

from __future__ import annotations

import json
import logging
import os
import time

from lookalike import publish
from lookalike.config import Config
from lookalike.errors import ConfigError
from lookalike.hybrid import als, factors, interactions, sources
from lookalike.io.storage import storage_for
from lookalike.io.uris import is_hadoop, is_s3, local_path
from lookalike.jobs.common import job_main, release, skipped
from lookalike.jobs.neighbours import ordered_items, prepared_items
from lookalike.neighbours import exact, ivf_stage, prepare, watch, write
from lookalike.neighbours.inputs import (
    candidates_identity,
    published_identity,
    read_embeddings,
)
from lookalike.publish import lineage
from lookalike.runinfo import library_versions, new_run_id

log = logging.getLogger(__name__)

REQUIRED = ("output.embeddings", "output.hybrid", "hybrid.interactions")


def run(spark, cfg: Config) -> dict:
    from pyspark import StorageLevel

    started = time.perf_counter()
    run_id = new_run_id()
    settings, hybrid = cfg.neighbours, cfg.hybrid
    if hybrid.interactions is None:
        raise ConfigError(
            "config key 'hybrid.interactions' is not set: give the interactions table "
            "(user_id, item_id, optional weight), e.g. --set hybrid.interactions=s3://bucket/interactions/"
        )
    if settings.incremental:
        log.info("neighbours.incremental does not apply to the hybrid table: every list is computed")
    # Said, not refused: a pipeline's config sets them for its picture neighbours.
    for key in ("center", "augment"):
        if getattr(settings, key):
            log.info("neighbours.%s does not apply to the hybrid table: it would move the scores off the blend", key)
    source = publish.current(cfg.output.embeddings, cfg.s3)
    inputs = {
        "embeddings": lineage.identity_of(source),
        "interactions": lineage.files_identity(hybrid.interactions, cfg.s3),
        "hybrid": cfg.fingerprint("hybrid"),
        "result_settings": settings.result_fingerprint(),
        "candidates": candidates_identity(settings.candidates, cfg.s3),
    }
    if settings.attributes is not None:
        inputs["attributes"] = lineage.files_identity(settings.attributes, cfg.s3)
    if settings.hide_duplicates:
        inputs["duplicates"] = published_identity(cfg.output.duplicates, cfg.s3)
    done = lineage.unchanged_since(cfg.output.hybrid, inputs, cfg.s3) if inputs["interactions"] else None
    if done:
        why = "same embeddings, interactions and settings"
        return skipped("hybrid", run_id, done, inputs, started, why, cfg.output.hybrid)

    outputs = publish.OutputSet(spark, cfg.output, ["hybrid"], run_id, cfg.s3).check()
    phases: dict = {}
    held: list = []
    try:
        mark = time.perf_counter()
        embeddings = read_embeddings(spark, source or cfg.output.embeddings, cfg.s3)
        raw = interactions.read(spark, hybrid.interactions, cfg.s3)
        usable, report = interactions.clean(raw, embeddings.select("item_id"), hybrid.interactions)
        held.append(usable)
        phases["interactions"] = time.perf_counter() - mark

        mark = time.perf_counter()
        item_factors = als.item_factors(spark, usable, hybrid).persist(StorageLevel.MEMORY_AND_DISK)
        held.append(item_factors)
        joined = factors.with_factors(embeddings, item_factors).persist(StorageLevel.MEMORY_AND_DISK)
        held.append(joined)
        phases["als"] = time.perf_counter() - mark

        mark = time.perf_counter()
        first = embeddings.select("dim").first()
        dim = int(first["dim"]) if first is not None else 0
        weights, warm_used = factors.fit_map(joined, dim, hybrid.rank, hybrid.ridge)
        blended = factors.blended(spark, joined, weights, hybrid.alpha, dim, hybrid.rank, held)
        blended = blended.persist(StorageLevel.MEMORY_AND_DISK)
        held.append(blended)
        known = sources.collect_factors(blended)
        factors_bc = spark.sparkContext.broadcast(known)
        held.append(factors_bc)
        phases["ridge_blend"] = time.perf_counter() - mark

        details = {
            "interactions": {k: v for k, v in report.items() if k != "samples"},
            "samples": report["samples"],
            "warm_items": int(known.warm.sum()),
            "cold_items": int(len(known.warm) - known.warm.sum()),
            "alpha": hybrid.alpha,
            "als": {
                "rank": hybrid.rank,
                "iterations": hybrid.iterations,
                "reg_param": hybrid.reg_param,
                "confidence": hybrid.confidence,
                "seed": hybrid.seed,
            },
            "ridge": {"lambda": hybrid.ridge, "warm_items_used": warm_used},
            "inputs": inputs,
            "phase_seconds": phases,
            "config_fingerprint": {"hybrid": cfg.fingerprint("hybrid"), "neighbours": cfg.fingerprint("neighbours")},
            "versions": library_versions(),
        }
        summary = _search_and_write(spark, cfg, run_id, blended, factors_bc, outputs, source, details, held, started)
    finally:
        release(held)
    log.info(
        "hybrid done: %d items (%d warm, %d cold), alpha %.2f: %d rows (%s) -> %s",
        summary["queries"],
        summary["warm_items"],
        summary["cold_items"],
        hybrid.alpha,
        summary["rows"],
        ", ".join(f"{n} {name}" for name, n in summary["sources"].items()),
        cfg.output.hybrid,
    )
    print(json.dumps(summary, sort_keys=True, default=str))
    return summary


def _search_and_write(
    spark, cfg: Config, run_id: str, blended, factors_bc, outputs, source, details: dict, held: list, started: float
) -> dict:
    """The neighbours stages on the blended vectors, then the source pass; commits output.hybrid
    with the summary (``details`` and the counts) and returns it."""
    settings = cfg.neighbours
    phases = details["phase_seconds"]
    mark = time.perf_counter()
    ordering = ordered_items(spark, cfg, blended.drop("factor", "warm"))
    held.append(ordering.ordered)
    items, facts = prepared_items(spark, cfg, ordering, prepare.inspect(ordering.ordered), held)
    partitions = items.partitions
    phases["prepare"] = time.perf_counter() - mark
    summary = {"job": "hybrid", "run_id": run_id, "ok": True, **facts, "hybrid": cfg.output.hybrid}
    with outputs as out:
        staging = out.staging("hybrid")
        # The kernels' own NEIGHBOURS files go to a hidden folder that no commit picks up.
        kernel = f"{staging.rstrip('/')}/_kernel"
        if not (is_s3(kernel) or is_hadoop(kernel)):
            os.makedirs(local_path(kernel), exist_ok=True)
        mark = time.perf_counter()
        if settings.method == "ivf":
            scored = ivf_stage.search(spark, run_id, items, settings, held)
        else:
            scored = exact.search(spark, run_id, items, settings, held, kernel, cfg.s3)
        written = scored.written
        if written is None:
            merged = write.merge_and_write(
                scored.partials, partitions, kernel, settings.k, cfg.s3, settings.row_group_rows, items.hide
            )
            written = watch.collect(spark, run_id, "hybrid merge", items.queries, merged)
        phases["search"] = time.perf_counter() - mark
        mark = time.perf_counter()
        paths = sorted(w["path"] for w in written)
        alpha = cfg.hybrid.alpha
        result = sources.annotate(spark, paths, staging, factors_bc, alpha, cfg.s3, settings.row_group_rows)
        if not paths:
            sources.write_empty(staging, cfg.s3)
        storage_for(kernel, cfg.s3).delete_prefix(kernel)
        phases["sources"] = time.perf_counter() - mark
        items_with = sum(w["items"] for w in written)
        summary.update(scored.summary)
        summary.update(
            {
                "method": settings.method,
                "k": settings.k,
                "min_score": settings.min_score,
                "partitions": partitions,
                "rows": result["rows"],
                "files": result["files"],
                "sources": result["sources"],
                "items_with_neighbours": items_with,
                "items_without_neighbours": items.queries - items_with,
                **details,
                "phase_seconds": {name: round(value, 2) for name, value in phases.items()},
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        read = source.snapshot_id if source else None
        out.commit({"hybrid": summary}, still_valid=lambda: lineage.snapshot_id(cfg.output.embeddings, cfg.s3) == read)
    return summary


def main(argv: list[str] | None = None, spark=None) -> int:
    """The command line (``jobs/hybrid.py``); ``spark``: run in a session the caller owns."""
    return job_main(
        argv,
        run,
        "Top-k neighbours of every item by behaviour (ALS on interactions) blended with visual similarity.",
        REQUIRED,
        spark=spark,
    )
