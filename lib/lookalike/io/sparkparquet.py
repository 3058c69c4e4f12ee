"""Parquet tables that Spark tasks read and write themselves, through lookalike's storage layer,
so that ``s3://`` works on any Spark (a plain local Spark, a standalone cluster, Kubernetes), not
only where the cluster ships an S3 file system for Hadoop (EMR's EMRFS).

Writing: each task writes one part file with pyarrow (io/partfiles.py: complete or absent, a
retried task replaces its own file), rows sorted by item_id and files covering disjoint id ranges,
row groups of about ROW_GROUP_BYTES, so that a lookup by id reads one row group.

Reading: the driver finds the table's current data files (io/current.py: the Iceberg snapshot's
files). Local and ``hdfs://`` files are read by Spark's own Parquet reader (every Spark has it,
and it is the fastest); ``s3://`` files by tasks through pyarrow's S3 file system
(io/arrowfs.py), with the run's S3 settings: no Hadoop S3 connector is needed.
"""

from __future__ import annotations

import math

from lookalike.config import S3Config
from lookalike.errors import InputError
from lookalike.io import arrowfs
from lookalike.io.current import Current, current
from lookalike.io.partfiles import PartWriter, write_part
from lookalike.io.uris import is_s3

# A row group of about this many bytes: one lookup by id reads one, whatever the embedding size.
ROW_GROUP_BYTES = 32 * 1024**2
WRITTEN = "partition int, path string, rows long"


def read_parquet(spark, table: str | Current, s3: S3Config | None = None):
    """The current content of the table at ``table`` (a location, or what io/current.py found
    there) as a DataFrame: an Iceberg table's current snapshot, an earlier lookalike's current
    version, or a directory of plain Parquet files. InputError when there is no data file."""
    found = table if isinstance(table, Current) else current(table, s3)
    where = found.location if found is not None else table
    if found is None or not found.files:
        raise InputError(f"no table at {where}: it holds no Parquet data file")
    files = list(found.files)
    if not any(is_s3(f) for f in files):
        return spark.read.parquet(*files)
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import from_arrow_schema

    filesystem, path = arrowfs.filesystem(files[0], s3)
    with filesystem.open_input_file(path) as handle:
        schema = pq.ParquetFile(handle).schema_arrow
    rows = spark.sparkContext.parallelize([(f,) for f in files], len(files))
    return spark.createDataFrame(rows, "path string").mapInArrow(_read_function(schema, s3), from_arrow_schema(schema))


def _read_function(schema, s3: S3Config | None):
    def read(batches):
        import pyarrow as pa
        import pyarrow.parquet as pq

        for batch in batches:
            for path in batch.column(0).to_pylist():
                filesystem, where = arrowfs.filesystem(path, s3)
                with filesystem.open_input_file(where) as handle:
                    for part in pq.ParquetFile(handle).iter_batches(batch_size=4096):
                        # A file from before a column was added has it as nulls.
                        table = pa.Table.from_batches([part])
                        columns = [
                            table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type)
                            for f in schema
                        ]
                        yield from pa.Table.from_arrays(columns, schema=schema).cast(schema).to_batches()

    return read


def write_sorted(
    frame, rows: int, directory: str, schema, s3: S3Config | None, rows_per_file: int, row_group_rows: int = 0
) -> list[dict]:
    """``frame`` (columns in ``schema``'s order) as Parquet files under ``directory``, each
    written by its task: sorted by item_id, files covering disjoint id ranges, row groups of
    ``row_group_rows`` (0: about ROW_GROUP_BYTES). Returns one WRITTEN row per file; with no rows,
    one empty file keeps the table readable."""
    if not rows:
        empty = PartWriter(directory, "part-00000.parquet", schema, s3).close()
        return [{"partition": 0, "path": empty["path"], "rows": 0}]
    files = max(1, math.ceil(rows / rows_per_file))
    ordered = frame.repartitionByRange(files, "item_id").sortWithinPartitions("item_id")
    write = _write_function(directory, schema, s3, row_group_rows)
    return [row.asDict() for row in ordered.mapInArrow(write, WRITTEN).collect()]


def _write_function(directory: str, schema, s3: S3Config | None, row_group_rows: int):
    def write(batches):
        import pyarrow as pa
        from pyspark import TaskContext

        partition = TaskContext.get().partitionId()
        sized: dict = {"rows": row_group_rows} if row_group_rows else {}

        def open_writer():
            return PartWriter(
                directory,
                f"part-{partition:05d}.parquet",
                schema,
                s3,
                row_group_rows=sized["rows"],
                sorting_columns=("item_id",),
            )

        def tables():
            for batch in batches:
                if batch.num_rows and not sized:
                    sized["rows"] = max(1, ROW_GROUP_BYTES * batch.num_rows // max(1, batch.nbytes))
                yield pa.Table.from_batches([batch])

        written = write_part(tables(), open_writer)
        if written is None:
            return
        yield pa.RecordBatch.from_pylist(
            [{"partition": partition, "path": written["path"], "rows": written["rows"]}],
            schema=pa.schema([("partition", pa.int32()), ("path", pa.string()), ("rows", pa.int64())]),
        )

    return write
