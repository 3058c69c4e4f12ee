"""The interactions table: read (Parquet, CSV or Iceberg; local, s3://, hdfs://) and cleaned into
one row per (user, item) with a positive weight, every row left out counted by why, with samples.

Each raw row is counted under the first reason that applies, in this order:

* ``missing_ids``: no user_id or no item_id;
* ``invalid_weights``: a weight that is not a finite number above 0 (text, negative, zero, NaN);
  a missing weight (null, or no weight column) counts as 1;
* ``unknown_items``: an item_id the embeddings table does not have (no picture, so no list);
* ``duplicate_rows``: the same user, item, weight and timestamp again (a doubly logged event);
  further interactions of a user with an item (other timestamps) add their weights instead;
* ``single_interaction_users``: rows of users left with one item, who co-interact with nothing.
"""

from __future__ import annotations

import logging

from lookalike.config import S3Config
from lookalike.errors import InputError

log = logging.getLogger(__name__)

REQUIRED = ("user_id", "item_id")
SAMPLES = 5
CSV_SUFFIXES = (".csv", ".csv.gz", ".txt")


def read(spark, path: str, s3: S3Config | None = None):
    """The table at ``path``: CSV (with a header) by its name, else an Iceberg table or Parquet
    files (a directory or one file). InputError naming the path when it cannot be read or lacks a
    required column."""
    from pyspark.errors import AnalysisException

    from lookalike.io.sparkparquet import read_parquet

    try:
        if path.lower().endswith(CSV_SUFFIXES):
            frame = spark.read.option("header", True).csv(path)
        else:
            try:
                frame = read_parquet(spark, path, s3)
            except InputError:
                if not path.lower().endswith(".parquet"):
                    raise
                frame = spark.read.parquet(path)
    except (AnalysisException, InputError) as exc:
        raise InputError(
            f"hybrid.interactions: cannot read {path} as an interactions table (Parquet, CSV named *.csv or "
            f"Iceberg): {str(exc).splitlines()[0]}"
        ) from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InputError(
            f"hybrid.interactions: {path} has no column {', '.join(missing)} (it has {', '.join(frame.columns)}); "
            f"an interactions table needs user_id and item_id, and may have weight and timestamp"
        )
    return frame


def clean(raw, item_ids, path: str = "hybrid.interactions"):
    """(usable, report): ``usable`` holds user_id, item_id and weight (double, > 0), one row per
    pair, users with at least two items; ``report`` counts every raw row by what became of it, with
    up to SAMPLES examples per reason. ``item_ids``: a DataFrame of the embeddings' item_id.
    InputError when no row is usable."""
    from pyspark.sql import functions as F

    weight = F.expr("try_cast(weight AS double)") if "weight" in raw.columns else F.lit(None).cast("double")
    raw_weight = F.col("weight").cast("string") if "weight" in raw.columns else F.lit(None).cast("string")
    stamp = F.col("timestamp").cast("string") if "timestamp" in raw.columns else F.lit(None).cast("string")
    rows = raw.select(
        F.col("user_id").cast("string").alias("user_id"),
        F.col("item_id").cast("string").alias("item_id"),
        raw_weight.alias("raw_weight"),
        weight.alias("weight"),
        stamp.alias("timestamp"),
    )
    no_id = F.col("user_id").isNull() | F.col("item_id").isNull() | (F.col("user_id") == "") | (F.col("item_id") == "")
    bad_weight = F.col("raw_weight").isNotNull() & (
        F.col("weight").isNull() | F.isnan("weight") | (F.col("weight") <= 0) | (F.abs("weight") == float("inf"))
    )
    known = (
        item_ids.select(F.col("item_id").cast("string").alias("item_id")).distinct().withColumn("known", F.lit(True))
    )
    flagged = rows.join(known, "item_id", "left").withColumn(
        "reason",
        F.when(no_id, "missing_ids")
        .when(bad_weight, "invalid_weights")
        .when(F.col("known").isNull(), "unknown_items")
        .otherwise(None),
    )
    flagged = flagged.persist()
    try:
        counts = {r["reason"]: r["count"] for r in flagged.groupBy("reason").count().collect()}
        total = sum(counts.values())
        report: dict = {"rows": total, "samples": {}}
        for reason, column in (
            ("missing_ids", "user_id"),
            ("invalid_weights", "raw_weight"),
            ("unknown_items", "item_id"),
        ):
            report[reason] = counts.get(reason, 0)
            if report[reason]:
                found = flagged.filter(F.col("reason") == reason).select(column).distinct().limit(SAMPLES).collect()
                report["samples"][reason] = [r[0] for r in found]
        good = flagged.filter(F.col("reason").isNull()).select(
            "user_id", "item_id", F.coalesce("weight", F.lit(1.0)).alias("weight"), "timestamp"
        )
        kept = counts.get(None, 0)
        distinct = good.distinct()
        unique_rows = distinct.count()
        report["duplicate_rows"] = kept - unique_rows
        if report["duplicate_rows"]:
            repeated = good.groupBy(*good.columns).count().filter("count > 1").limit(SAMPLES).collect()
            report["samples"]["duplicate_rows"] = [f"{r.user_id}/{r.item_id}" for r in repeated]
        pairs = distinct.groupBy("user_id", "item_id").agg(F.sum("weight").alias("weight"), F.count("*").alias("n"))
        per_user = pairs.groupBy("user_id").agg(F.count("*").alias("items"), F.sum("n").alias("rows"))
        single = per_user.filter("items = 1")
        lone = single.agg(F.count("*").alias("users"), F.sum("rows").alias("rows")).collect()[0]
        report["single_interaction_users"] = int(lone["users"])
        report["single_interaction_rows"] = int(lone["rows"] or 0)
        if lone["users"]:
            report["samples"]["single_interaction_users"] = [
                r[0] for r in single.select("user_id").limit(SAMPLES).collect()
            ]
        usable = pairs.join(single.select("user_id"), "user_id", "left_anti").select("user_id", "item_id", "weight")
        usable = usable.persist()
        stats = usable.agg(
            F.count("*").alias("pairs"),
            F.countDistinct("user_id").alias("users"),
            F.countDistinct("item_id").alias("items"),
        ).collect()[0]
    finally:
        flagged.unpersist()
    report.update(usable_pairs=int(stats["pairs"]), users=int(stats["users"]), warm_items=int(stats["items"]))
    report["usable_rows"] = unique_rows - report["single_interaction_rows"]
    if not report["usable_pairs"]:
        usable.unpersist()
        raise InputError(
            f"{path} has no usable interaction: of {total} rows, {report['missing_ids']} lack user_id or item_id, "
            f"{report['invalid_weights']} have a weight that is not a positive number, {report['unknown_items']} name "
            f"an item the embeddings table does not have, {report['duplicate_rows']} repeat another row and "
            f"{report['single_interaction_rows']} belong to users with one item; samples: {report['samples']}. "
            f"Give a table of user_id, item_id (ids as in the embeddings table) and an optional positive weight"
        )
    for reason in ("missing_ids", "invalid_weights", "unknown_items", "duplicate_rows", "single_interaction_users"):
        if report[reason]:
            log.warning(
                "%s: %d %s left out, e.g. %s",
                path,
                report[reason],
                reason.replace("_", " "),
                ", ".join(repr(s) for s in report["samples"][reason]),
            )
    return usable, report
