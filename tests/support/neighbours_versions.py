"""Versioned tables for the publishing tests (lib/lookalike/publish/): small tables of a known
version, published locally or written to S3 as EMRFS would, and where a local output keeps its
versions. (Named ``neighbours_*`` after the helper that owns it; it is about publishing.)"""

from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike import publish

ROWS = 300


def table_of(version: int) -> pa.Table:
    return pa.table({"row": pa.array(range(ROWS), pa.int64()), "version": pa.array([version] * ROWS, pa.int64())})


def write_parts(directory: str, version: int, parts: int = 3) -> None:
    """Several files per version with the same names in every version: the worst case for a
    reader that would list one version and open files of another."""
    os.makedirs(directory, exist_ok=True)
    table = table_of(version)
    step = ROWS // parts
    for i in range(parts):
        pq.write_table(table.slice(i * step, step), os.path.join(directory, f"part-{i:05d}.parquet"))


def publish_local(out: str, version: int, run_id: str | None = None, **kwargs) -> str:
    run_id = run_id or f"run-{version:04d}"
    with publish.OutputSet(None, {"t": out}, run_id, **kwargs) as outputs:
        write_parts(outputs.staging("t"), version)
        outputs.commit({"t": {"run_id": run_id, "version": version}})
    return run_id


def versions_dir(out) -> str:
    return os.path.join(os.path.dirname(str(out)), f".{os.path.basename(str(out))}.versions")


def put_version(s3, uri: str, version: int) -> None:
    """The staged data written with boto3, as EMRFS would write it on EMR (Spark here has no
    hadoop-aws and cannot write s3://)."""
    bucket, key = uri[len("s3://") :].split("/", 1)
    for i in range(3):
        sink = pa.BufferOutputStream()
        pq.write_table(table_of(version).slice(i * 100, 100), sink)
        s3.put_object(Bucket=bucket, Key=f"{key}/part-{i:05d}.parquet", Body=sink.getvalue().to_pybytes())


def read_s3(s3, uri: str) -> pd.DataFrame:
    bucket, key = uri[len("s3://") :].split("/", 1)
    keys = sorted(
        o["Key"]
        for o in s3.list_objects_v2(Bucket=bucket, Prefix=key + "/")["Contents"]
        if o["Key"].endswith(".parquet")
    )
    tables = [pq.read_table(pa.BufferReader(s3.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in keys]
    return pa.concat_tables(tables).to_pandas()
