"""What the neighbours stage reads: the embeddings table and the neighbours.candidates filter, and
the identity of that filter for the unchanged-input check."""

from __future__ import annotations

import logging

from lookalike.config import S3Config
from lookalike.errors import ConfigError, InputError
from lookalike.io.current import Current, current
from lookalike.io.sparkparquet import read_parquet
from lookalike.publish import lineage

log = logging.getLogger(__name__)

SAMPLE_IDS = 5
_FORMATS = {
    "lookalike-versions": "the table an earlier lookalike published (its current version)",
    "parquet": "a directory of plain Parquet files",
}

EMBEDDING_COLUMNS = ("item_id", "model", "pooling", "weights", "dim", "embedding")


def _analysis_error():
    from pyspark.errors import AnalysisException

    return AnalysisException


def read_embeddings(spark, table: str | Current, s3: S3Config | None = None):
    """The embeddings table at ``table`` (a location, or its content as io/current.py found it);
    InputError naming what is wrong."""
    path = table.location if isinstance(table, Current) else table
    if isinstance(table, Current) and table.format != "iceberg":
        log.info("reading the embeddings at %s as %s", path, _FORMATS[table.format])
    try:
        frame = read_parquet(spark, table, s3)
    except (_analysis_error(), InputError) as exc:
        raise InputError(
            f"cannot read the embeddings table at {path} (run the embed job first?): {str(exc).splitlines()[0]}"
        ) from None
    missing = [c for c in EMBEDDING_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(
            f"{path} is not an embeddings table: it has no column {', '.join(missing)} "
            f"(it has {', '.join(frame.columns)})"
        )
    return frame


def read_candidates(spark, candidates):
    """neighbours.candidates as a DataFrame of item_id, or None (every item may be recommended)."""
    if candidates is None:
        return None
    if isinstance(candidates, list):
        if not candidates:
            raise ConfigError("config key 'neighbours.candidates' is an empty list; use null to allow every item")
        return spark.createDataFrame([(str(c),) for c in candidates], "item_id string")
    table = _read_table(spark, candidates, "neighbours.candidates")
    if "item_id" not in table.columns:
        raise ConfigError(
            f"config key 'neighbours.candidates': {candidates} has no item_id column "
            f"(it has {', '.join(table.columns)})"
        )
    return table.select("item_id")


def candidates_identity(candidates, s3: S3Config | None = None) -> str | None:
    """What the unchanged-input check records of neighbours.candidates: a list is in the settings'
    result fingerprint already; a table is identified by its files' content (None when they cannot
    be listed, which makes the job recompute)."""
    if candidates is None:
        return "all"
    if not isinstance(candidates, str):
        return "inline"
    return lineage.files_identity(candidates, s3)


def _read_table(spark, path: str, key: str):
    """A CSV (header) or Parquet table by its path, as read_candidates reads one."""
    lowered = path.lower()
    try:
        if lowered.endswith((".csv", ".csv.gz", ".txt")):
            return spark.read.option("header", True).csv(path)
        return spark.read.parquet(path)
    except _analysis_error() as exc:
        raise ConfigError(
            f"config key '{key}': cannot read {path} as a "
            f"{'CSV' if '.csv' in lowered else 'Parquet'} table: {str(exc).splitlines()[0]}"
        ) from None


def read_attributes(spark, path: str, columns: tuple[tuple[str, str], ...] = ()):
    """neighbours.attributes: item_id and any columns. ConfigError when a column a rule names is
    missing (naming the columns there are), InputError on duplicate item ids."""
    from pyspark.sql import functions as F

    table = _read_table(spark, path, "neighbours.attributes")
    if "item_id" not in table.columns:
        raise ConfigError(
            f"config key 'neighbours.attributes': {path} has no item_id column (it has {', '.join(table.columns)})"
        )
    for key, column in columns:
        if column not in table.columns:
            raise ConfigError(
                f"config key 'neighbours.{key}': the attributes table {path} has no column "
                f"{column!r}; its columns are {', '.join(table.columns)}"
            )
    table = table.withColumn("item_id", F.col("item_id").cast("string"))
    repeated = table.groupBy("item_id").count().filter("count > 1")
    found = repeated.limit(SAMPLE_IDS).collect()
    if found:
        raise InputError(
            f"the attributes table {path} has {repeated.count()} item ids on more than one row, "
            f"e.g. {', '.join(repr(r.item_id) for r in found)}; keep one row per item"
        )
    return table


def read_duplicates(spark, path: str, s3: S3Config | None = None):
    """output.duplicates (its current version) for neighbours.hide_duplicates; InputError saying
    how to make it when it is not there."""
    try:
        table = read_parquet(spark, path, s3)
    except (_analysis_error(), InputError) as exc:
        raise InputError(
            f"neighbours.hide_duplicates needs the near-duplicate groups at output.duplicates = {path}, "
            f"which cannot be read ({str(exc).splitlines()[0]}): run the duplicates job first "
            f"(./spark-submit.sh duplicates), or the pipeline with duplicates.enabled: true"
        ) from None
    missing = [c for c in ("group_id", "item_id", "group_size") if c not in table.columns]
    if missing:
        raise InputError(
            f"{path} is not a duplicates table: it has no column {', '.join(missing)} "
            f"(it has {', '.join(table.columns)})"
        )
    return table


def published_identity(path: str, s3: S3Config | None = None) -> str | None:
    """The current snapshot (or version) of a table this project publishes (output.duplicates), or None."""
    try:
        found = current(path, s3)
    except Exception:  # unreadable: recompute rather than skip
        return None
    return found.version if found is not None else None
