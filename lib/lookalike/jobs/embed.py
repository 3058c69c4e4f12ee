"""Embed job: images under input.uri -> embeddings and errors tables.

run() reads like the pipeline: resolve the weights, check the outputs, list the images, plan what
changed, embed in the workers, check the failures, write both tables and commit them.
"""

from __future__ import annotations

import json
import logging
import math
import time

from lookalike import schemas
from lookalike.config import Config, updated
from lookalike.embed import hardware, listing, manifest, model
from lookalike.embed import plan as incremental
from lookalike.embed import weights as model_weights
from lookalike.embed.stage import Phases, embed_items, split_results
from lookalike.errors import InputError, LookalikeError, TooManyErrorsError
from lookalike.io.current import current
from lookalike.io.sparkparquet import read_parquet, write_sorted
from lookalike.jobs.common import job_main
from lookalike.progress import Progress, StageWatcher
from lookalike.publish import OutputSet, lineage
from lookalike.runinfo import library_versions, new_run_id

log = logging.getLogger(__name__)

REQUIRED = ("input.uri", "output.embeddings", "output.errors")
# Files of at most about this size for the embeddings table, and this many rows for the errors.
EMBEDDINGS_FILE_BYTES = 256 * 1024**2
ERRORS_PER_FILE = 1_000_000
# When too many images fail: how many the log names, and how many the CSV file beside the outputs.
FAILURES_LOGGED = 20
FAILURES_REPORTED = 100_000


def counts_reused(plan) -> int:
    """Rows carried over from the previous table (0 in a full run)."""
    return plan.counts["reused"] if plan.carry_over else 0


def run(spark, cfg: Config, dry_run: bool = False) -> dict:
    started = time.perf_counter()
    run_id = new_run_id()
    # What the settings said, beside what auto resolves to (both go into the summary).
    requested = {"precision": cfg.model.precision, "runtime": cfg.model.runtime}
    # Which weights, precision and runtime every worker uses: decided once, before any task runs.
    cfg = updated(cfg, model=hardware.resolve(spark, _kept_choice(cfg, requested)))
    if dry_run:
        # What a run would do, for schedulers: no image fetched, no model, nothing written.
        plan, summary = _planned(spark, cfg, run_id, started, requested)
        plan.release()
        summary.update(dry_run=True, published=False, seconds=round(time.perf_counter() - started, 2))
        log.info(
            "embed dry run: would embed %d of %d listed images; nothing was fetched or written",
            plan.attempted,
            plan.listed,
        )
        print(json.dumps(summary, sort_keys=True, default=str))
        return summary
    # Check the outputs before listing: a location that is refused costs nothing.
    with OutputSet(spark, cfg.output, ("embeddings", "errors"), run_id, cfg.s3) as outputs:
        plan, summary = _planned(spark, cfg, run_id, started, requested)
        try:
            if plan.unchanged and not outputs.legacy:
                summary.update(published=False, seconds=round(time.perf_counter() - started, 2))
                log.info(
                    "embed done: nothing changed since version %s; embedded 0 images, outputs left as they are",
                    summary["previous_version"],
                )
            else:
                # (An earlier lookalike's tables with nothing changed: committed as Iceberg tables,
                # every row carried over, nothing embedded.)
                _embed_and_publish(spark, cfg, plan, outputs, summary, started)
        finally:
            plan.release()
    print(json.dumps(summary, sort_keys=True, default=str))
    return summary


def _kept_choice(cfg: Config, requested: dict):
    """The model settings with the weights resolved and, in an incremental run whose settings still
    say ``auto``, the precision and runtime the published table was computed with: which executors
    answered this run's probe must not decide to re-embed the whole catalogue."""
    resolved = model.resolve(cfg.model, cfg.s3)
    if not cfg.input.incremental or "auto" not in requested.values():
        return resolved
    try:
        found = current(cfg.output.embeddings, cfg.s3)
    except LookalikeError:
        return resolved  # the plan reports an unreadable table
    summary = (found.summary if found is not None else None) or {}
    if summary.get("requested") != requested or not summary.get("precision") or not summary.get("runtime"):
        return resolved
    kept = {k: summary[k] for k in ("precision", "runtime") if requested[k] == "auto"}
    log.info(
        "model.precision/runtime=auto: keeping %s, what %s was computed with (set them explicitly to change)",
        ", ".join(f"{k}={v}" for k, v in sorted(kept.items())),
        cfg.output.embeddings,
    )
    return updated(resolved, **kept)


def _planned(spark, cfg: Config, run_id: str, started: float, requested: dict):
    """List, plan and count: (plan, summary so far)."""
    items, source = _listed_items(spark, cfg)
    try:
        plan, previous, weights = _plan(spark, cfg, items)
    finally:
        items.unpersist()  # a large listing is cached until the plan has its own copy
    if plan.listed == 0:
        plan.release()
        raise InputError(f"no images in {source} match input.pattern={cfg.input.pattern!r}")
    return plan, {**_summary(cfg, run_id, plan, previous, weights), "requested": requested}


def _listed_items(spark, cfg: Config):
    """(DataFrame of the ITEMS of every image to consider, where they were listed from)."""
    if cfg.input.manifest:
        # Catalogue scale: read the keys in parallel instead of paging through a listing.
        return manifest.read_manifest(spark, cfg.input, cfg.s3), f"manifest {cfg.input.manifest}"
    return listing.list_items(spark, cfg.input, cfg.s3), cfg.input.uri


def _plan(spark, cfg: Config, items):
    """(plan, previous state or None, weights tag) for this run."""
    mark = time.perf_counter()
    # The weights tag includes the file's md5: a weights file replaced in place forces a recompute.
    fingerprint, weights = model_weights.identity(cfg.model, cfg.s3)
    previous = None
    if cfg.input.incremental:
        previous = incremental.previous_state(spark, cfg.output.embeddings, cfg.output.errors, cfg.s3)
        plan = incremental.plan(items, previous, fingerprint, weights)
    else:
        plan = incremental.full_plan(items, "full run: input.incremental is false")
    counts = plan.counts
    log.info(
        "%s: listed %d, %d to embed (new %d, changed %d, retried %d), %d reused, %d deleted (%.1fs)",
        plan.reason,
        plan.listed,
        plan.attempted,
        counts["new"],
        counts["changed"],
        counts["retried"],
        counts["reused"],
        counts["deleted"],
        time.perf_counter() - mark,
    )
    return plan, previous, weights


def _summary(cfg: Config, run_id: str, plan, previous, weights: str) -> dict:
    counts = plan.counts
    return {
        "job": "embed",
        "run_id": run_id,
        "ok": True,
        "incremental": cfg.input.incremental,
        "plan": plan.reason,
        "previous_version": previous.version if previous else None,
        "listed": plan.listed,
        "attempted": plan.attempted,
        "embedded": 0,
        "errors": 0,
        "errors_by_kind": {},
        **{k: counts[k] for k in ("new", "changed", "retried", "reused", "deleted")},
        "model": cfg.model.name,
        "weights": weights,
        "pooling": cfg.model.pooling,
        "precision": cfg.model.precision,
        "runtime": cfg.model.runtime,
        "config_fingerprint": {s: cfg.fingerprint(s) for s in ("input", "model")},
        "versions": library_versions(),
    }


def _embed_and_publish(spark, cfg: Config, plan, outputs: OutputSet, summary: dict, started: float) -> None:
    """Run the model over plan.to_embed, refuse too many failures, write both tables and publish."""
    todo, listed = plan.attempted, summary["listed"]
    partitions = max(1, math.ceil(todo / cfg.input.partition_size))
    frame = plan.to_embed.repartition(partitions)
    phases = Phases(spark)
    results = embed_items(frame, cfg, summary["run_id"], phases).persist()
    try:
        by_kind = _outcomes(spark, results, todo, partitions, summary["run_id"])
        embedded = by_kind.pop(None, 0)
        failed = sum(by_kind.values())
        embed_seconds = time.perf_counter() - started
        summary.update(
            embedded=embedded,
            errors=failed,
            errors_by_kind=by_kind,
            model_loads=phases.loads.value,
            partitions=partitions,
        )
        # New and changed images are measured on their own: in an incremental run where every new
        # image fails (a new prefix the job cannot read), the reused ones must not hide it. Images
        # that failed before and fail again (retried) count only against everything listed.
        retried_failed = _retried_failures(results, plan) if failed and plan.counts["retried"] else 0
        fresh, fresh_failed = todo - plan.counts["retried"], failed - retried_failed
        summary["error_fraction"] = round(fresh_failed / fresh, 6) if fresh else 0.0
        limit = cfg.input.max_error_fraction
        if (fresh and fresh_failed > limit * fresh) or failed > limit * listed:
            report = _report_failures(results, cfg, summary["run_id"])
            bad, base = (fresh_failed, fresh) if fresh and fresh_failed > limit * fresh else (failed, listed)
            label = "images" if base == listed else "new or changed images"
            raise TooManyErrorsError(
                f"{bad} of {base} {label} failed ({bad / base:.1%}; {listed} listed, "
                f"{plan.counts['reused']} reused, {plan.counts['retried']} retried), more than "
                f"input.max_error_fraction={limit}: {by_kind}. Nothing was published; the previous output is "
                f"unchanged; the failed images are listed in {report}. Raise the limit if this is expected."
            )

        writing = time.perf_counter()
        embeddings, errors = split_results(results)
        if plan.carry_over:
            embeddings = embeddings.unionByName(incremental.carried_over(spark, plan.previous, plan.reused_ids))
        # The tasks write both tables themselves (any Spark, s3:// included), sorted by item_id.
        rows = embedded + counts_reused(plan)
        dim = embeddings.select("dim").first() if rows else None
        write_sorted(
            embeddings,
            rows,
            outputs.staging("embeddings"),
            schemas.arrow_schema(schemas.EMBEDDINGS),
            cfg.s3,
            rows_per_file=max(1, EMBEDDINGS_FILE_BYTES // (4 * (dim["dim"] if dim else 1) + 256)),
        )
        write_sorted(
            errors, failed, outputs.staging("errors"), schemas.arrow_schema(schemas.ERRORS), cfg.s3, ERRORS_PER_FILE
        )
        # Read back what was staged: the id describes exactly the table that gets published.
        content = lineage.content_id(read_parquet(spark, outputs.staging("embeddings"), cfg.s3))
        seconds = time.perf_counter() - started
        # Task-seconds of each phase (fetch and decode overlap inference on the decode threads;
        # wait is the model idle for pixels), and the driver's seconds writing both tables.
        summary["phase_seconds"] = {**phases.summary(), "write": round(time.perf_counter() - writing, 3)}
        summary.update(
            rows=int(content.split("-")[0]),
            embeddings_content=content,
            published=True,
            seconds=round(seconds, 2),
            embed_seconds=round(embed_seconds, 2),
            images_per_second=round(todo / seconds, 2),
        )
        # A run that lost a commit race keeps its result only if the table it started from is
        # unchanged (a full run's result depends on no previous table).
        read = plan.previous.location.snapshot_id if plan.carry_over and plan.previous is not None else None
        outputs.commit(
            {"embeddings": summary, "errors": summary},
            still_valid=lambda: read is None or lineage.snapshot_id(cfg.output.embeddings, cfg.s3) == read,
        )
    finally:
        results.unpersist()

    kinds = ", ".join(f"{k}={v}" for k, v in sorted(by_kind.items())) or "none"
    counts = plan.counts
    log.info(
        "embed done: listed %d, embedded %d, errors %d (%s), reused %d, deleted %d, %.1fs, %.1f images/s, "
        "model loads %d, weights %s -> %s",
        listed,
        embedded,
        failed,
        kinds,
        counts["reused"],
        counts["deleted"],
        seconds,
        todo / seconds,
        phases.loads.value,
        summary["weights"],
        cfg.output.embeddings,
    )
    log.info(
        "embed phases (task-seconds): %s; model %s %s on %s",
        ", ".join(f"{k} {v:.1f}" for k, v in summary["phase_seconds"].items()),
        cfg.model.runtime,
        cfg.model.precision,
        cfg.model.name,
    )


def _retried_failures(results, plan) -> int:
    """Failures among the images that had failed before (the plan's ``retried``)."""
    from pyspark.sql import functions as F

    retried = plan.outcomes.filter(F.col("outcome") == "retried").select("item_id")
    return results.filter(F.col("error").isNotNull()).join(retried, "item_id", "left_semi").count()


def _report_failures(results, cfg: Config, run_id: str) -> str:
    """Name the images that failed a run: the first FAILURES_LOGGED in the log, and up to
    FAILURES_REPORTED in a CSV file beside output.errors (not a table: nothing is published).
    Returns where the file is, or why there is none."""
    import csv
    import io

    from pyspark.sql import functions as F

    from lookalike.io.storage import StorageError, storage_for

    failing = results.filter(F.col("error").isNotNull()).select("item_id", "uri", "error", "message")
    rows = failing.orderBy("uri").limit(FAILURES_REPORTED).collect()
    for row in rows[:FAILURES_LOGGED]:
        log.error("failed: %s (%s: %s)", row["uri"], row["error"], row["message"])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["item_id", "uri", "error", "message"])
    writer.writerows([r["item_id"], r["uri"], r["error"], r["message"]] for r in rows)
    parent, _, name = cfg.output.errors.rstrip("/").rpartition("/")
    target = f"{parent or '.'}/{name}.failed-{run_id}.csv"
    try:
        storage_for(target, cfg.s3).write(target, text.getvalue().encode("utf-8"))
    except StorageError as exc:
        log.warning("could not write the list of failed images to %s: %s", target, exc.message)
        return f"the log (writing {target} failed)"
    return target + (f" (the first {FAILURES_REPORTED})" if len(rows) == FAILURES_REPORTED else "")


def _outcomes(spark, results, todo: int, partitions: int, run_id: str) -> dict:
    """{error kind or None: count}, computing ``results`` under a progress watcher."""
    progress = Progress(log, "embed", todo, "images")
    per_task = todo / partitions
    with StageWatcher(
        spark, f"lookalike-embed-{run_id}", progress, lambda done, total: min(todo, int(done * per_task))
    ):
        return {row["error"]: row["count"] for row in results.groupBy("error").count().collect()}


def main(argv: list[str] | None = None, spark=None) -> int:
    """The command line (``jobs/embed.py``); ``spark``: run in a session the caller owns."""
    return job_main(
        argv, run, "Embed every image under input.uri with a pretrained CNN.", REQUIRED, dry_run=True, spark=spark
    )
