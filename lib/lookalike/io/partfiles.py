"""Parquet part files written by Spark tasks themselves, with pyarrow, so that row groups end
where the caller says (at item boundaries) rather than where Spark's writer runs out of bytes.

A point lookup by ``item_id`` then reads exactly one row group: files cover disjoint, sorted id
ranges and no item's rows straddle two row groups. Names are deterministic per partition, so a
retried or speculative task replaces its own file instead of adding a second one, and a file
appears under its final name only when complete (``Storage.open_write``: local and HDFS files are
written under a hidden name and renamed; S3 objects are written to the executor's local disk and
uploaded, so an interrupted upload never becomes visible).
"""

from __future__ import annotations

import os

from lookalike.config import S3Config
from lookalike.io.storage import storage_for
from lookalike.io.uris import is_hadoop, is_s3, local_path


class PartWriter:
    """Writes one part file; ``add`` takes tables that end at an item boundary and buffers them
    until about ``row_group_rows`` rows, so that each row group holds whole items only."""

    def __init__(
        self,
        directory: str,
        name: str,
        schema,
        s3: S3Config | None = None,
        row_group_rows: int = 65536,
        sorting_columns: tuple[str, ...] = (),
    ):
        import pyarrow.parquet as pq

        uri = f"{directory.rstrip('/')}/{name}"
        self.out = storage_for(uri, s3 or S3Config()).open_write(uri)
        local = not (is_s3(uri) or is_hadoop(uri))
        self.final = os.path.abspath(local_path(uri)) if local else uri  # what close() reports
        self.stream = self.out.file
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.pending: list = []
        self.pending_rows = 0
        self.rows = self.row_groups = 0
        options = {}
        # The sort order is metadata for readers only; pyarrow < 15 (the Spark 3.5 / petastorm
        # environment, make test-compat) cannot record it, and the files are sorted all the same.
        if sorting_columns and hasattr(pq, "SortingColumn"):
            options["sorting_columns"] = [pq.SortingColumn(schema.get_field_index(c)) for c in sorting_columns]
        self.writer = pq.ParquetWriter(self.stream, schema, compression="snappy", write_statistics=True, **options)

    def add(self, table) -> None:
        if table.num_rows == 0:
            return
        self.pending.append(table)
        self.pending_rows += table.num_rows
        if self.pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self.pending_rows:
            return
        group = pa.concat_tables(self.pending).cast(self.schema)
        # One write_table call with row_group_size >= its rows is exactly one row group.
        self.writer.write_table(group, row_group_size=group.num_rows)
        self.rows += group.num_rows
        self.row_groups += 1
        self.pending, self.pending_rows = [], 0

    def close(self) -> dict:
        self._flush()
        self.writer.close()
        self.out.commit()
        return {"path": self.final, "rows": self.rows, "row_groups": self.row_groups}

    def abort(self) -> None:
        """Remove the temporary file; the final name is never touched."""
        try:
            self.writer.close()
        except Exception:
            pass
        self.out.abort()


def write_part(tables, open_writer) -> dict | None:
    """Write the non-empty Arrow ``tables`` to the PartWriter ``open_writer()`` makes on the first
    one (a task with no rows writes no file: None); on any failure its temporary file is removed
    and nothing appears under the final name."""
    writer = None
    try:
        for table in tables:
            if table.num_rows == 0:
                continue
            if writer is None:
                writer = open_writer()
            writer.add(table)
        return None if writer is None else writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
