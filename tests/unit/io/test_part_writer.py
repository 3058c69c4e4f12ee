"""The part writer the neighbours job writes its table with (lib/lookalike/io/partfiles.py), on S3
(a real moto server): row groups cut at item boundaries, the temporary object gone. The layout of
the job's whole table: tests/spark/neighbours/test_exact_job.py."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from lookalike import schemas
from lookalike.io.partfiles import PartWriter


def test_part_writer_on_s3_cuts_row_groups_at_items(s3_endpoint, s3, bucket):
    from lookalike.config import S3Config

    schema = schemas.arrow_schema(schemas.NEIGHBOURS)
    cfg = S3Config(endpoint_url=s3_endpoint)
    writer = PartWriter(f"s3://{bucket}/t/v1", "part-00000.parquet", schema, cfg, row_group_rows=5)
    for item in ("a", "b", "c"):  # three items of three rows: groups of two items (6 rows), then one
        writer.add(
            pa.table(
                {"item_id": [item] * 3, "rank": [1, 2, 3], "neighbour_id": ["x", "y", "z"], "score": [0.9, 0.8, 0.7]},
                schema=schema,
            )
        )
    assert writer.close() == {"path": f"s3://{bucket}/t/v1/part-00000.parquet", "rows": 9, "row_groups": 2}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["t/v1/part-00000.parquet"]  # the temporary object is gone
    body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    meta = pq.ParquetFile(pa.BufferReader(body)).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [6, 3]
