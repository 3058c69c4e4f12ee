"""Reading what the jobs published, as a reader with the location alone does: the Iceberg table's
current snapshot (lookalike.io.current), or a plain Parquet directory."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from lookalike.config import S3Config
from lookalike.io import arrowfs
from lookalike.io.current import current, static_table


def output_files(path, s3: S3Config | None = None) -> list[str]:
    """The current data files of the table at ``path`` (URIs)."""
    found = current(str(path), s3)
    assert found is not None, f"no table at {path}"
    return list(found.files)


def read_output(path, columns: list[str] | None = None, s3: S3Config | None = None) -> pa.Table:
    """The current content of the table at ``path`` as one pyarrow Table."""
    tables = []
    for uri in output_files(path, s3):
        filesystem, where = arrowfs.filesystem(uri, s3)
        tables.append(pq.read_table(where, columns=columns, filesystem=filesystem))
    if not tables:  # an Iceberg table without rows has no data file: its schema says the columns
        found = current(str(path), s3)
        assert found is not None and found.metadata, f"the table at {path} has no data file"
        schema = static_table(found.metadata, s3).schema().as_arrow()
        return schema.empty_table().select(columns) if columns else schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def output_summary(path, s3: S3Config | None = None) -> dict:
    """The run summary committed with the table's current snapshot."""
    found = current(str(path), s3)
    assert found is not None and found.summary is not None, f"no run summary at {path}"
    return found.summary


def published_run(path, s3: S3Config | None = None) -> str | None:
    """The run id of the table's current snapshot; None when nothing was published there."""
    found = current(str(path), s3)
    return (found.summary or {}).get("run_id") if found is not None else None
