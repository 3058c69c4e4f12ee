"""Duplicates job: output.embeddings -> output.duplicates, the groups of near-duplicate items (every
pair with cosine >= duplicates.min_score, joined into connected components). The stages live in
lookalike.duplicates; reading, ordering and checking the embeddings is the neighbours job's. With
duplicates.incremental, only the pairs of new and changed items are scored (``incremental``)
and the groups recomputed from every pair, as a full run would."""

from __future__ import annotations

import json
import logging
import time

from lookalike import publish
from lookalike.config import Config
from lookalike.duplicates import components, incremental, pairs, write
from lookalike.jobs.common import job_main, release, skipped
from lookalike.neighbours import prepare
from lookalike.neighbours.incremental_stage import read_state
from lookalike.neighbours.inputs import read_embeddings
from lookalike.publish import lineage
from lookalike.runinfo import library_versions, new_run_id

log = logging.getLogger(__name__)

REQUIRED = ("output.embeddings", "output.duplicates")


def run(spark, cfg: Config) -> dict:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started = time.perf_counter()
    run_id = new_run_id()
    settings = cfg.duplicates
    # Only the embeddings and the threshold decide the groups; chunking and blocking do not.
    source = publish.current(cfg.output.embeddings, cfg.s3)  # the snapshot both checked and read
    inputs = {"embeddings": lineage.identity_of(source), "min_score": settings.min_score}
    done = lineage.unchanged_since(cfg.output.duplicates, inputs, cfg.s3)
    if done:
        return _skipped(cfg, run_id, done, inputs, started)

    names = ["duplicates", "duplicates_pairs"] if settings.incremental else ["duplicates"]
    outputs = publish.OutputSet(spark, cfg.output, names, run_id, cfg.s3).check()
    # The stored pairs as they are now, read before anything is written: this run's own replace them.
    previous = publish.current(cfg.output.duplicates_pairs, cfg.s3) if settings.incremental else None
    embeddings = read_embeddings(spark, source or cfg.output.embeddings, cfg.s3)
    partitions = prepare.partition_count(spark, embeddings, settings.partitions)
    ordered = prepare.ordered_items(embeddings, partitions).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        mark = time.perf_counter()
        facts = prepare.validate(prepare.inspect(ordered), ordered, None, cfg.output.embeddings)
        phases = {"prepare": mark - started, "read_order_normalise": time.perf_counter() - mark}
        items = prepare.Prepared(ordered, partitions, facts["queries"], facts["candidates"], facts["dim"])
        summary = {
            "job": "duplicates",
            "run_id": run_id,
            "ok": True,
            "items": facts["items"],
            "valid": facts["queries"],
            "invalid": facts["invalid"],
            "invalid_sample": facts["invalid_sample"],
            **{key: facts[key] for key in ("model", "weights", "pooling", "dim")},
            "min_score": settings.min_score,
            "partitions": partitions,
            "block_rows": settings.block_rows,
            "embeddings": cfg.output.embeddings,
            "embeddings_version": source.version if source else None,
            "duplicates": cfg.output.duplicates,
            "inputs": inputs,
        }

        with outputs as out:
            held: list = []  # broadcasts and persisted frames, released whatever happens
            try:
                state = None
                if settings.incremental:
                    found, scored, state = incremental.find_pairs(
                        spark,
                        run_id,
                        items,
                        settings,
                        held,
                        previous,
                        read_state(spark, previous, cfg.s3),
                        out.staging("duplicates_pairs"),
                        cfg.s3,
                    )
                else:
                    found, scored = pairs.find_pairs(
                        spark, run_id, items, settings.min_score, settings.block_rows, settings.broadcast_max_mb, held
                    )
                phases.update(scored.pop("phase_seconds"))
                summary.update(scored)
                mark = time.perf_counter()
                groups = {"groups": 0, "items_in_groups": 0, "largest_group": 0, "component_rounds": 0}
                rows = None
                if summary["pairs"]:
                    labels, groups["component_rounds"] = components.labels(found, held)
                    rows, sizes = write.members(found, labels)
                    counts = sizes.agg(
                        F.count(F.lit(1)).alias("groups"),
                        F.sum("group_size").alias("items_in_groups"),
                        F.max("group_size").alias("largest_group"),
                    ).first()
                    groups.update({key: int(counts[key]) for key in ("groups", "items_in_groups", "largest_group")})
                phases["components"] = time.perf_counter() - mark
                mark = time.perf_counter()
                written = write.write_members(rows, groups["items_in_groups"], out.staging("duplicates"), cfg.s3)
                phases["write"] = time.perf_counter() - mark
                summary.update(groups)
                summary.update(
                    {
                        "files": len(written),
                        "seconds": round(time.perf_counter() - started, 2),
                        "phase_seconds": {name: round(value, 2) for name, value in phases.items()},
                        "config_fingerprint": {"duplicates": cfg.fingerprint("duplicates")},
                        "versions": library_versions(),
                    }
                )
                read = source.snapshot_id if source else None
                summaries = {"duplicates": summary}
                if state is not None:
                    summaries["duplicates_pairs"] = {**state, "run_id": run_id, "inputs": inputs}
                out.commit(
                    summaries,
                    still_valid=lambda: lineage.snapshot_id(cfg.output.embeddings, cfg.s3) == read,
                )
            finally:
                release(held)
    finally:
        ordered.unpersist()
    log.info(
        "duplicates done: %d pairs with cosine >= %s among %d items (%d invalid left out): %d groups "
        "holding %d items, the largest %d, %.1fs -> %s",
        summary["pairs"],
        settings.min_score,
        summary["valid"],
        summary["invalid"],
        summary["groups"],
        summary["items_in_groups"],
        summary["largest_group"],
        summary["seconds"],
        cfg.output.duplicates,
    )
    print(json.dumps(summary, sort_keys=True, default=str))
    return summary


def _skipped(cfg: Config, run_id: str, done: dict, inputs: dict, started: float) -> dict:
    return skipped("duplicates", run_id, done, inputs, started, "same embeddings and min_score", cfg.output.duplicates)


def main(argv: list[str] | None = None, spark=None) -> int:
    """The command line (``jobs/duplicates.py``); ``spark``: run in a session the caller owns."""
    return job_main(
        argv,
        run,
        "Groups of near-duplicate items (cosine >= duplicates.min_score) in the embeddings table.",
        REQUIRED,
        spark=spark,
    )
