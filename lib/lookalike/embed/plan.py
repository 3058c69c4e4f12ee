"""Incremental runs: which listed images need the model, which rows of the previous table are kept,
and whether a downstream job's inputs changed since it last ran.

A listed image is reused when the previous embeddings table has a row for its item id with the
same uri, the same ``source_version`` (S3 ETag; size-mtime for files) and the same
``model_fingerprint`` and ``weights`` as this run. Everything else listed is embedded: new images,
changed ones, and the ones that failed last time (retried every run, since a failure may have been
transient). Rows whose image is no longer listed are dropped. Carried-over rows are copied as they
are, so their ``run_id`` and ``embedded_at`` still say when they were computed.

The plan is Spark joins on the executors: the listing, the previous table's key columns (never
its embedding column) and the previous errors' ids meet in one full outer join, and only the
counts per outcome reach the driver. At 100M keys nothing per item is held by the driver.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lookalike import schemas
from lookalike.config import S3Config
from lookalike.errors import InputError
from lookalike.io.current import Current, current
from lookalike.io.redact import redact
from lookalike.io.sparkparquet import read_parquet

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

KEY_COLUMNS = ["item_id", "uri", "source_version", "model_fingerprint", "weights"]
ITEM_COLUMNS = ["item_id", "uri", "source_version", "source_bytes"]
# What each id of the join is. The first four are listed images; the last two are previous ids
# that are not listed any more (an embeddings row; an error row, counted whether or not the id
# also had an embeddings row).
OUTCOMES = ("new", "changed", "retried", "reused", "deleted", "stale_errors")
TO_EMBED = ("new", "changed", "retried")


@dataclass(frozen=True)
class Previous:
    """What an incremental run needs to know about the previous output (Spark DataFrames, read
    lazily with only the columns the plan compares)."""

    location: Current  # the table's files as the plan read them: rows are carried over from these
    version: str | None
    rows: DataFrame  # KEY_COLUMNS of the previous embeddings table
    failed_ids: DataFrame | None = None  # item_id of the previous errors table, or None
    s3: S3Config | None = None  # to read ``location`` again (carried_over)


@dataclass(frozen=True)
class Plan:
    """Every listed and previous id with its outcome, persisted on the executors (listing is
    expensive and the job reads it twice: counts, then the rows to embed). Call release()."""

    outcomes: DataFrame  # ITEM_COLUMNS + outcome
    counts: dict  # one count per OUTCOMES
    carry_over: bool  # keep the previous table's reused rows
    reason: str  # why this run is full or incremental, for the log and the summary
    previous: Previous | None = None  # what carried-over rows come from

    @property
    def listed(self) -> int:
        return sum(self.counts[o] for o in ("new", "changed", "retried", "reused"))

    @property
    def attempted(self) -> int:
        return sum(self.counts[o] for o in TO_EMBED)

    @property
    def to_embed(self):
        """The ITEMS rows for the model."""
        from pyspark.sql import functions as F

        return self.outcomes.filter(F.col("outcome").isin(*TO_EMBED)).select(*ITEM_COLUMNS)

    @property
    def reused_ids(self):
        from pyspark.sql import functions as F

        return self.outcomes.filter(F.col("outcome") == "reused").select("item_id")

    @property
    def unchanged(self) -> bool:
        """Nothing to embed, nothing deleted, no old error rows to retire: publishing would copy."""
        return (
            self.carry_over and self.attempted == 0 and not self.counts["deleted"] and not self.counts["stale_errors"]
        )

    def release(self) -> None:
        self.outcomes.unpersist()


def _counted(outcomes, reason: str, previous: Previous | None = None) -> Plan:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    outcomes = outcomes.persist(StorageLevel.MEMORY_AND_DISK)
    # stale_errors: error rows of images no longer listed, whether or not they also had an embedding.
    found = outcomes.agg(
        *[F.count(F.when(F.col("outcome") == o, 1)).alias(o) for o in OUTCOMES[:-1]],
        F.count(F.when(F.col("stale"), 1)).alias("stale_errors"),
    ).first()
    return Plan(outcomes.drop("stale"), {o: int(found[o]) for o in OUTCOMES}, previous is not None, reason, previous)


def full_plan(items, reason: str) -> Plan:
    from pyspark.sql import functions as F

    return _counted(items.select(*ITEM_COLUMNS, F.lit("new").alias("outcome"), F.lit(False).alias("stale")), reason)


def plan(items, previous: Previous | None, fingerprint: str, weights: str) -> Plan:
    """Give every listed item (a DataFrame of ITEMS rows) and every previous id an outcome."""
    from pyspark.sql import functions as F

    if previous is None:
        return full_plan(items, "full run: no previous embeddings table")
    rows = previous.rows
    same_model = F.coalesce((F.col("model_fingerprint") == fingerprint) & (F.col("weights") == weights), F.lit(False))
    model = rows.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(F.when(same_model, 1)).alias("same"),
        F.first("model_fingerprint").alias("fingerprint"),
        F.first("weights").alias("weights"),
    ).first()
    assert model is not None  # an aggregate without groups has exactly one row
    if model["rows"] and not model["same"]:
        return full_plan(
            items,
            f"full recompute: model settings changed (fingerprint {model['fingerprint']} "
            f"-> {fingerprint}, weights {model['weights']} -> {weights})",
        )
    # An id twice in the previous table (never written by the job) is recomputed, not guessed at.
    known = rows.groupBy("item_id").agg(
        F.count(F.lit(1)).alias("copies"),
        F.min(same_model).alias("same_model"),
        F.first("uri").alias("uri_previous"),
        F.first("source_version").alias("version_previous"),
    )
    joined = items.withColumn("listed", F.lit(True)).join(known, "item_id", "full_outer")
    if previous.failed_ids is not None:
        failed = previous.failed_ids.select("item_id").distinct().withColumn("failed", F.lit(True))
        joined = joined.join(failed, "item_id", "full_outer")
    else:
        joined = joined.withColumn("failed", F.lit(None).cast("boolean"))
    listed, in_previous = F.col("listed").isNotNull(), F.col("copies").isNotNull()
    reused = (
        listed
        & (F.col("copies") == 1)
        & F.col("same_model")
        & (F.col("uri") == F.col("uri_previous"))
        & F.col("source_version").isNotNull()
        & (F.col("source_version") == F.col("version_previous"))
    )
    outcome = (
        F.when(reused, "reused")
        .when(listed & in_previous, "changed")
        .when(listed & F.col("failed").isNotNull(), "retried")
        .when(listed, "new")
        .when(in_previous, "deleted")
        .otherwise("stale_errors")
    )
    stale = F.col("listed").isNull() & F.col("failed").isNotNull()
    return _counted(
        joined.select(*ITEM_COLUMNS, outcome.alias("outcome"), stale.alias("stale")),
        f"incremental from version {previous.version or previous.location.location}",
        previous,
    )


def _published(path: str, s3: S3Config) -> Current | None:
    """The current content of the table at ``path``; None when there is none (or it is empty)."""
    found = current(path, s3)
    return found if found is not None and found.files else None


def previous_state(spark, embeddings: str, errors: str, s3: S3Config) -> Previous | None:
    """The key columns of the published embeddings table and the ids in the errors table, as
    DataFrames (nothing is read yet beyond the Parquet footers).

    None (a full run) when nothing was published yet, or when the table cannot be used; the
    reason is logged, because a full recompute of a large catalogue is expensive.
    """
    from pyspark.errors import AnalysisException

    location = _published(embeddings, s3)
    if location is None:
        return None
    version = location.version
    try:
        table = read_parquet(spark, location, s3)
        missing = [c for c in KEY_COLUMNS if c not in table.columns]
        if missing:
            log.warning("previous embeddings table %s has no column %s: full recompute", embeddings, ", ".join(missing))
            return None
        rows = table.select(*KEY_COLUMNS)
    except (AnalysisException, InputError) as exc:
        log.warning(
            "cannot read the previous embeddings table %s (%s): full recompute",
            embeddings,
            redact(str(exc).splitlines()[0][:300]),
        )
        return None
    failed = None
    errors_location = _published(errors, s3)
    if errors_location is not None:
        try:
            failed = read_parquet(spark, errors_location, s3).select("item_id")
        except (AnalysisException, InputError):
            pass  # an unreadable errors table only changes the "retried" count
    return Previous(location, version, rows, failed, s3)


def carried_over(spark, previous: Previous, reused_ids):
    """The previous table's rows whose ids are in ``reused_ids``, in the embeddings schema's column
    order."""
    from pyspark.sql import functions as F

    table = read_parquet(spark, previous.location, previous.s3)
    # Columns added to the schema since that table was written are null in its rows.
    for column in schemas.EMBEDDINGS:
        if column.name not in table.columns and column.nullable:
            table = table.withColumn(column.name, F.lit(None).cast(column.type))
    return table.join(reused_ids, "item_id", "left_semi").select(*schemas.names(schemas.EMBEDDINGS))
