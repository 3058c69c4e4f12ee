"""Parquet part files written by Spark tasks themselves, with pyarrow, so that row groups end
where the caller says (at item boundaries) rather than where Spark's writer runs out of bytes.

A point lookup by ``item_id`` then reads exactly one row group: files cover disjoint, sorted id
ranges and no item's rows straddle two row groups. Names are deterministic per partition, so a
retried or speculative task replaces its own file instead of adding a second one, and a file
appears under its final name only when complete: local and HDFS files are written under a hidden
name and renamed; S3 objects are written to the executor's local disk and uploaded with boto3
(an interrupted multipart upload never becomes visible, and no directory markers appear).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Optional

from lookalike.io import storage
from lookalike.config import S3Config


class PartWriter:
    """Writes one part file; ``add`` takes tables that end at an item boundary and buffers them
    until about ``row_group_rows`` rows, so that each row group holds whole items only."""

    def __init__(self, directory: str, name: str, schema, s3: Optional[S3Config] = None,
                 row_group_rows: int = 65536, sorting_columns: tuple[str, ...] = ()):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.s3 = s3 or S3Config()
        self.to_s3 = storage.is_s3(directory)
        if self.to_s3:
            bucket, prefix = storage.split_s3(directory.rstrip("/"))
            self.bucket, self.key = bucket, f"{prefix}/{name}" if prefix else name
            self.final = f"s3://{bucket}/{self.key}"
            handle, self.path = tempfile.mkstemp(prefix="lookalike-", suffix=".parquet")
            os.close(handle)
            self.fs = None
            self.stream = pa.OSFile(self.path, "wb")
        else:
            from pyarrow import fs as pafs

            if storage.is_hadoop(directory):
                self.fs, root = pafs.FileSystem.from_uri(directory)
            else:
                self.fs, root = pafs.LocalFileSystem(), os.path.abspath(storage.local_path(directory))
            self.fs.create_dir(root, recursive=True)
            self.final = f"{root.rstrip('/')}/{name}"
            self.path = f"{root.rstrip('/')}/.{name}.{uuid.uuid4().hex[:8]}.tmp"  # readers skip '.' files
            self.stream = self.fs.open_output_stream(self.path)
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
        self.writer = pq.ParquetWriter(self.stream, schema, compression="snappy", write_statistics=True,
                                       **options)

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
        self.stream.close()
        if self.to_s3:
            try:
                storage.s3_client(self.s3).upload_file(self.path, self.bucket, self.key)
            finally:
                os.remove(self.path)
        else:
            self.fs.move(self.path, self.final)
        return {"path": self.final, "rows": self.rows, "row_groups": self.row_groups}

    def abort(self) -> None:
        """Remove the temporary file; the final name is never touched."""
        try:
            self.writer.close()
            self.stream.close()
        except Exception:
            pass
        try:
            if self.to_s3:
                os.remove(self.path)
            else:
                self.fs.delete_file(self.path)
        except OSError:
            pass
