"""Lineage: what a published table was computed from, so that a re-run whose inputs did not change
can leave its output as it is (and say so) instead of recomputing it."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable

from lookalike.config import S3Config
from lookalike.io.current import Current, current
from lookalike.io.storage import Entry, StorageError, storage_for
from lookalike.publish.summary import read_summary

log = logging.getLogger(__name__)


def content_id(embeddings) -> str:
    """An order-independent id of what an embeddings table holds: which items, from which image
    versions, with which model. Equal ids mean a downstream job would compute the same thing."""
    from pyspark.sql import functions as F

    row = embeddings.agg(
        F.count(F.lit(1)).alias("rows"),
        F.bit_xor(F.xxhash64("item_id", "uri", "source_version", "model_fingerprint", "weights")).alias("hash"),
    ).first()
    return f"{row['rows']}-{(row['hash'] or 0) & 0xFFFFFFFFFFFFFFFF:016x}"


def embeddings_identity(path: str, s3: S3Config | None = None) -> str | None:
    """What a job reading the embeddings table at ``path`` records as its input: the content id
    from the summary of its current snapshot, so that an embed run that changed nothing leaves the
    jobs downstream nothing to do; else the snapshot (or an earlier lookalike's version) id."""
    return identity_of(current(path, s3))


def identity_of(found: Current | None) -> str | None:
    """``embeddings_identity`` of a table already found (io/current.py), read no second time."""
    if found is None:
        return None
    if found.summary and found.summary.get("embeddings_content"):
        return found.summary["embeddings_content"]
    return found.version


def snapshot_id(path: str, s3: S3Config | None = None) -> int | None:
    """The current snapshot id of the Iceberg table at ``path`` (None for any other table), which a
    job records in its lineage and compares before retrying a commit that lost a race."""
    found = current(path, s3)
    return found.snapshot_id if found is not None else None


def files_identity(uri: str, s3: S3Config | None = None) -> str | None:
    """An id of the data files under ``uri`` (or of the file ``uri``) as they are now, for a table
    the job reads by path: what a replaced, added or removed file changes. None, with the reason
    logged, when the files cannot be listed or there are none."""
    try:
        entries = list(storage_for(uri, s3).list(uri))
    except (StorageError, OSError) as exc:
        log.warning(
            "cannot list %s to tell whether it changed (%s); the job will recompute",
            uri,
            exc.message if isinstance(exc, StorageError) else exc,
        )
        return None
    identity = entries_identity(entries)
    if identity is None:
        log.warning("%s holds no data file to identify; the job will recompute", uri)
    return identity


def entries_identity(entries: Iterable[Entry]) -> str | None:
    """``files_identity`` of listed files: a hash of every data file's key, size and version (S3
    ETag, or size-mtime), in key order so that listing order does not matter."""
    files = sorted((e.key, e.size, e.version) for e in entries if not _bookkeeping(e.key))
    if not files:
        return None
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]
    return f"{len(files)}-{digest}"


def _bookkeeping(key: str) -> bool:
    # Spark's readers skip these (_SUCCESS, .crc files, _temporary/), so they change nothing read.
    return any(part.startswith(("_", ".")) for part in key.split("/"))


def unchanged_since(output: str, inputs: dict, s3: S3Config | None = None) -> dict | None:
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
