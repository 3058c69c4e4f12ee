"""What the neighbours stage reads: the embeddings table and the neighbours.candidates filter, and
the identity of that filter for the unchanged-input check."""

from __future__ import annotations

import os
from typing import Optional

from lookalike.errors import ConfigError, InputError
from lookalike.io.uris import is_hadoop, is_s3, local_path

EMBEDDING_COLUMNS = ("item_id", "model", "pooling", "weights", "dim", "embedding")


def _analysis_error():
    from pyspark.errors import AnalysisException

    return AnalysisException


def read_embeddings(spark, path: str):
    """The embeddings table at ``path`` (a resolved version); InputError naming what is wrong."""
    try:
        table = spark.read.parquet(path)
    except _analysis_error() as exc:
        raise InputError(f"cannot read the embeddings table at {path} (run the embed job first?): "
                         f"{str(exc).splitlines()[0]}") from None
    missing = [c for c in EMBEDDING_COLUMNS if c not in table.columns]
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


def candidates_identity(candidates) -> Optional[str]:
    """A list is covered by the settings fingerprint; a table file by its size and mtime (or the
    path alone for remote tables, which the docs point out)."""
    if candidates is None:
        return "all"
    if not isinstance(candidates, str):
        return "inline"
    path = local_path(candidates)
    if not (is_s3(candidates) or is_hadoop(candidates)) and os.path.exists(path):
        stat = os.stat(path)
        return f"{candidates}@{stat.st_size}-{stat.st_mtime_ns}"
    return candidates
