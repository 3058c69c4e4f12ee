"""Embed job: images under input.uri -> embeddings and errors tables."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from typing import Optional

from .. import model, schemas, storage
from ..config import Config
from ..embed import embed_items, items_frame, split_results, ITEMS
from ..errors import InputError, TooManyErrorsError
from ..progress import Progress, StageWatcher
from ..publish import OutputSet
from ..runinfo import library_versions, new_run_id
from .common import job_main

log = logging.getLogger(__name__)

REQUIRED = ("input.uri", "output.embeddings", "output.errors")


def run(spark, cfg: Config) -> dict:
    started = time.perf_counter()
    run_id = new_run_id()
    cfg = dataclasses.replace(cfg, model=model.resolve(cfg.model, cfg.s3))

    listed = storage.list_images(cfg.input, cfg.s3)
    if not listed:
        raise InputError(f"no images under {cfg.input.uri} match input.pattern={cfg.input.pattern!r}")
    log.info("listed %d images under %s in %.1fs", len(listed), cfg.input.uri, time.perf_counter() - started)

    partitions = max(1, math.ceil(len(listed) / cfg.input.partition_size))
    items = spark.createDataFrame(items_frame(listed), schema=schemas.spark_schema(ITEMS)).repartition(partitions)
    loads = spark.sparkContext.accumulator(0)
    results = embed_items(items, cfg, run_id, loads).persist()

    progress = Progress(log, "embed", len(listed), "images")
    per_task = len(listed) / partitions
    with StageWatcher(spark, f"lookalike-embed-{run_id}", progress,
                      lambda done, total: min(len(listed), int(done * per_task))):
        by_kind = {row["error"]: row["count"] for row in results.groupBy("error").count().collect()}
    embedded = by_kind.pop(None, 0)
    failed = sum(by_kind.values())
    embed_seconds = time.perf_counter() - started

    summary = {
        "job": "embed", "run_id": run_id, "ok": True,
        "listed": len(listed), "embedded": embedded, "errors": failed, "errors_by_kind": by_kind,
        "model": cfg.model.name, "weights": model.weights_tag(cfg.model), "pooling": cfg.model.pooling,
        "model_loads": loads.value, "partitions": partitions,
        "config_fingerprint": {s: cfg.fingerprint(s) for s in ("input", "model")},
        "versions": library_versions(),
    }
    if failed > cfg.input.max_error_fraction * len(listed):
        results.unpersist()
        raise TooManyErrorsError(
            f"{failed} of {len(listed)} images failed ({failed / len(listed):.1%}), more than "
            f"input.max_error_fraction={cfg.input.max_error_fraction}: {by_kind}. Nothing was "
            f"published; the previous output is unchanged. Raise the limit if this is expected."
        )

    embeddings, errors = split_results(results)
    targets = {"embeddings": cfg.output.embeddings, "errors": cfg.output.errors}
    with OutputSet(spark, targets, run_id, cfg.output.force_unlock) as outputs:
        embeddings.write.mode("overwrite").parquet(outputs.staging("embeddings"))
        errors.coalesce(1).write.mode("overwrite").parquet(outputs.staging("errors"))
        seconds = time.perf_counter() - started
        summary.update(seconds=round(seconds, 2), embed_seconds=round(embed_seconds, 2),
                       images_per_second=round(len(listed) / seconds, 2))
        outputs.commit({"embeddings": summary, "errors": summary})
    results.unpersist()

    kinds = ", ".join(f"{k}={v}" for k, v in sorted(by_kind.items())) or "none"
    log.info("embed done: listed %d, embedded %d, errors %d (%s), %.1fs, %.1f images/s, model loads %d, "
             "weights %s -> %s", len(listed), embedded, failed, kinds, seconds, len(listed) / seconds,
             loads.value, summary["weights"], cfg.output.embeddings)
    print(json.dumps(summary, sort_keys=True, default=str))
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    return job_main(argv, run, "Embed every image under input.uri with a pretrained CNN.", REQUIRED)
