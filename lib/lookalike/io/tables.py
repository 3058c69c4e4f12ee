"""Reading the jobs' Parquet tables with pyarrow, without Spark, for the ``lookalike`` tools.

Tables may sit in a local directory, behind file://, hdfs:// or s3:// (with the jobs' S3 settings:
retries, timeouts and an S3-compatible endpoint work as in the jobs; see io/arrowfs.py). Only the
columns and rows a tool needs are read.
"""

from __future__ import annotations

from typing import Iterable, Optional

from lookalike import publish
from lookalike.config import S3Config
from lookalike.errors import InputError
from lookalike.io import arrowfs
from lookalike.io.redact import redact
from lookalike.io.storage import StorageError


def _unreadable(path: str, exc: Exception, s3: Optional[S3Config]) -> InputError:
    text = exc.message if isinstance(exc, StorageError) else str(exc)
    return InputError(f"cannot read the Parquet table at {path}: {redact(text)}{arrowfs.retry_note(path, s3)}")


def dataset(path: str, s3: Optional[S3Config] = None):
    """A pyarrow dataset over the current version of the table at ``path``."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    location = publish.resolve(path, s3)
    try:
        filesystem, where = arrowfs.filesystem(location, s3)
        return ds.dataset(where, format="parquet", filesystem=filesystem)
    except FileNotFoundError:
        raise InputError(f"table not found: {path}") from None
    except (OSError, pa.ArrowInvalid, StorageError) as exc:
        raise _unreadable(path, exc, s3) from None


def read_table(path: str, columns: list[str], s3: Optional[S3Config] = None, filter=None):
    """The given columns (and rows matching ``filter``, a pyarrow expression) as a pyarrow Table."""
    import pyarrow as pa

    data = dataset(path, s3)
    missing = [c for c in columns if c not in data.schema.names]
    if missing:
        raise InputError(
            f"{path} has no column {', '.join(repr(c) for c in missing)} (it has "
            f"{', '.join(data.schema.names) or 'no columns'}); is it the right table?"
        )
    try:
        return data.to_table(columns=columns, filter=filter)
    except (OSError, pa.ArrowInvalid, StorageError) as exc:
        raise _unreadable(path, exc, s3) from None


def read_rankings(path: str, k: int, s3: Optional[S3Config] = None,
                  items: Optional[Iterable[str]] = None) -> dict[str, list[tuple[str, float]]]:
    """Neighbour table -> {item_id: [(neighbour_id, score), ...] best first, at most k each}.

    ``items`` restricts the queries read (the report needs a few, not the whole table).
    """
    import pyarrow.dataset as ds

    condition = ds.field("rank") <= k
    if items is not None:
        condition = condition & ds.field("item_id").isin(list(items))
    table = read_table(path, ["item_id", "rank", "neighbour_id", "score"], s3, condition)
    frame = table.to_pandas().sort_values(["item_id", "rank"], kind="stable")
    rankings: dict[str, list[tuple[str, float]]] = {}
    for item_id, neighbour_id, score in zip(frame["item_id"], frame["neighbour_id"], frame["score"]):
        if neighbour_id != item_id:  # the schema forbids self-matches; never count one
            rankings.setdefault(item_id, []).append((neighbour_id, float(score)))
    return {item: ranked[:k] for item, ranked in rankings.items()}


def query_ids(path: str, s3: Optional[S3Config] = None) -> list[str]:
    """The distinct item ids that have neighbours, sorted."""
    import pyarrow.compute as pc

    table = read_table(path, ["item_id"], s3)
    return sorted(pc.unique(table.column("item_id")).to_pylist())
