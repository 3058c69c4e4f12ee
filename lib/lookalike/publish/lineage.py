"""Lineage: what a published table was computed from, so that a re-run whose inputs did not change
can leave its output as it is (and say so) instead of recomputing it."""

from __future__ import annotations

from typing import Optional

from lookalike.config import S3Config
from lookalike.publish.summary import read_summary
from lookalike.publish.versions import current_version


def content_id(embeddings) -> str:
    """An order-independent id of what an embeddings table holds: which items, from which image
    versions, with which model. Equal ids mean a downstream job would compute the same thing."""
    from pyspark.sql import functions as F

    row = embeddings.agg(
        F.count(F.lit(1)).alias("rows"),
        F.bit_xor(F.xxhash64("item_id", "uri", "source_version", "model_fingerprint", "weights")).alias("hash"),
    ).first()
    return f"{row['rows']}-{(row['hash'] or 0) & 0xFFFFFFFFFFFFFFFF:016x}"


def embeddings_identity(path: str, s3: Optional[S3Config] = None) -> Optional[str]:
    """What a job reading the embeddings table at ``path`` records as its input: the content id
    from the table's summary (the version id for tables written before content ids existed)."""
    summary = read_summary(path, s3)
    if summary and summary.get("embeddings_content"):
        return summary["embeddings_content"]
    return current_version(path, s3)


def unchanged_since(output: str, inputs: dict, s3: Optional[S3Config] = None) -> Optional[dict]:
    """The summary of the version published at ``output`` if it was computed from exactly
    ``inputs`` (the dict the job stored under "inputs" in that summary), else None.

    ``inputs`` must hold JSON values (strings, numbers, lists) so that it compares equal after
    the round trip through the summary file; a None value never matches.
    """
    if any(value is None for value in inputs.values()):
        return None
    summary = read_summary(output, s3)
    if summary and summary.get("inputs") == inputs:
        return summary
    return None
