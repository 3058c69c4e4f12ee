"""Incremental runs: which listed images need the model, which rows of the previous table are kept,
and whether a downstream job's inputs changed since it last ran.

A listed image is reused when the previous embeddings table has a row for its item id with the
same uri, the same ``source_version`` (S3 ETag; size-mtime for files) and the same
``model_fingerprint`` and ``weights`` as this run. Everything else listed is embedded: new images,
changed ones, and the ones that failed last time (retried every run, since a failure may have been
transient). Rows whose image is no longer listed are dropped. Carried-over rows are copied as they
are, so their ``run_id`` and ``embedded_at`` still say when they were computed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from lookalike import publish, schemas
from lookalike.config import ModelConfig, S3Config
from lookalike.io.redact import redact
from lookalike.io.uris import is_hadoop, is_s3, local_path

log = logging.getLogger(__name__)

KEY_COLUMNS = ["item_id", "uri", "source_version", "model_fingerprint", "weights"]


@dataclass(frozen=True)
class Previous:
    """What an incremental run needs to know about the previous output."""

    location: str  # the resolved version to carry rows over from
    version: Optional[str]
    rows: pd.DataFrame  # KEY_COLUMNS of the previous embeddings table
    failed_ids: frozenset = frozenset()  # item ids in the previous errors table


@dataclass(frozen=True)
class Plan:
    to_embed: pd.DataFrame  # ITEMS rows for the model
    drop_ids: list = field(default_factory=list)  # previous rows not carried over
    carry_over: bool = False  # keep the previous table's rows minus drop_ids
    counts: dict = field(default_factory=dict)  # new, changed, retried, reused, deleted
    reason: str = ""  # why this run is full or incremental, for the log and the summary

    @property
    def unchanged(self) -> bool:
        """Nothing to embed, nothing deleted, no old error rows to retire: publishing would copy."""
        return self.carry_over and len(self.to_embed) == 0 and not self.drop_ids and not self.counts.get("stale_errors")


def full_plan(items: pd.DataFrame, reason: str) -> Plan:
    counts = {"new": len(items), "changed": 0, "retried": 0, "reused": 0, "deleted": 0, "stale_errors": 0}
    return Plan(items, [], False, counts, reason)


def plan(items: pd.DataFrame, previous: Optional[Previous], fingerprint: str, weights: str) -> Plan:
    """Split the listed ``items`` (ITEMS rows) into images to embed and previous rows to keep."""
    if previous is None:
        return full_plan(items, "full run: no previous embeddings table")
    rows = previous.rows
    same_model = (rows["model_fingerprint"] == fingerprint) & (rows["weights"] == weights)
    if len(rows) and not same_model.any():
        old = rows.iloc[0]
        return full_plan(items, f"full recompute: model settings changed (fingerprint {old['model_fingerprint']} "
                                f"-> {fingerprint}, weights {old['weights']} -> {weights})")
    # An id twice in the previous table (never written by the job) is recomputed, not guessed at.
    duplicated = rows["item_id"].duplicated(keep=False)
    usable = rows[same_model & ~duplicated]
    merged = items.merge(usable[["item_id", "uri", "source_version"]], on="item_id", how="left",
                         suffixes=("", "_previous"), indicator=True)
    known = merged["_merge"] == "both"
    same = (known & (merged["uri"] == merged["uri_previous"])
            & merged["source_version"].notna() & (merged["source_version"] == merged["source_version_previous"]))
    reused = set(merged.loc[same, "item_id"])
    listed_ids = set(items["item_id"])
    previous_ids = set(rows["item_id"])
    to_embed = items[~items["item_id"].isin(reused)].reset_index(drop=True)
    unknown = to_embed[~to_embed["item_id"].isin(previous_ids)]["item_id"]
    retried = int(unknown.isin(previous.failed_ids).sum())
    deleted = previous_ids - listed_ids
    counts = {
        "new": len(unknown) - retried,
        "changed": int((~to_embed["item_id"].isin(unknown)).sum()),
        "retried": retried,
        "reused": len(reused),
        "deleted": len(deleted),
        "stale_errors": len(previous.failed_ids - listed_ids),
    }
    drop_ids = sorted(previous_ids - reused)
    return Plan(to_embed, drop_ids, True, counts, f"incremental from version {previous.version or previous.location}")


def _published(path: str, s3: S3Config) -> tuple[Optional[str], Optional[str]]:
    """(location to read, version id) of the table at ``path``; (None, None) when there is none.
    A local plain directory from before versioned outputs counts, with version None."""
    version = publish.current_version(path, s3)
    location = publish.resolve(path, s3)
    if version is None and (is_s3(location) or is_hadoop(location) or not os.path.isdir(local_path(location))):
        return None, None
    return location, version


def previous_state(spark, embeddings: str, errors: str, s3: S3Config) -> Optional[Previous]:
    """Read the key columns of the published embeddings table and the ids in the errors table.

    None (a full run) when nothing was published yet, or when the table cannot be used; the
    reason is logged, because a full recompute of a large catalogue is expensive.
    """
    from pyspark.errors import AnalysisException

    location, version = _published(embeddings, s3)
    if location is None:
        return None
    try:
        table = spark.read.parquet(location)
        missing = [c for c in KEY_COLUMNS if c not in table.columns]
        if missing:
            log.warning("previous embeddings table %s has no column %s: full recompute", location, ", ".join(missing))
            return None
        rows = table.select(*KEY_COLUMNS).toPandas()
    except AnalysisException as exc:
        log.warning("cannot read the previous embeddings table %s (%s): full recompute",
                    location, redact(str(exc).splitlines()[0][:300]))
        return None
    failed: frozenset = frozenset()
    errors_location, _ = _published(errors, s3)
    if errors_location is not None:
        try:
            failed = frozenset(r[0] for r in spark.read.parquet(errors_location).select("item_id").collect())
        except AnalysisException:
            pass  # an unreadable errors table only changes the "retried" count
    return Previous(location, version, rows, failed)


def carried_over(spark, previous: Previous, drop_ids: list):
    """The previous table's rows minus ``drop_ids``, in the embeddings schema's column order."""
    from pyspark.sql import functions as F

    table = spark.read.parquet(previous.location)
    # Columns added to the schema since that table was written are null in its rows.
    for column in schemas.EMBEDDINGS:
        if column.name not in table.columns and column.nullable:
            table = table.withColumn(column.name, F.lit(None).cast(column.type))
    table = table.select(*schemas.names(schemas.EMBEDDINGS))
    if not drop_ids:
        return table
    drop = spark.createDataFrame(pd.DataFrame({"item_id": drop_ids}))
    return table.join(drop, "item_id", "left_anti").select(*schemas.names(schemas.EMBEDDINGS))
