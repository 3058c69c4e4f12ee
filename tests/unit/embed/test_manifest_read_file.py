"""input.manifest without Spark: one key-table data file streamed in batches (manifest.read_file),
from local disk and from the moto S3 server. Through Spark: tests/spark/embed/test_manifest.py."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike.config import InputConfig, S3Config
from lookalike.embed import manifest


def test_a_data_file_larger_than_a_batch_is_streamed_in_several_batches(tmp_path, s3, bucket, s3_endpoint, monkeypatch):
    keys = [f"p/{i:05d}.jpg" for i in range(1000)]
    path = tmp_path / "keys.parquet"
    pq.write_table(
        pa.table({"key": keys, "size": pa.array(range(1000), pa.int64()), "notes": ["x" * 100] * 1000}),
        path,
        row_group_size=400,
    )
    s3.upload_file(str(path), bucket, "m/keys.parquet")
    cfg = InputConfig(uri="s3://shop/p", manifest=str(path))
    s3cfg = S3Config(endpoint_url=s3_endpoint)
    local = manifest.DataFile(f"file://{path}", "parquet")
    whole = list(manifest.read_file(local, cfg, s3cfg))
    assert len(whole) == 1  # 1,000 rows in three row groups, well under a batch

    monkeypatch.setattr(manifest, "BATCH_ROWS", 64)
    for spec in (local, manifest.DataFile(f"s3://{bucket}/m/keys.parquet", "parquet")):
        frames = list(manifest.read_file(spec, cfg, s3cfg))
        assert len(frames) >= 1000 // 64 and max(len(f) for f in frames) == 64
        assert pd.concat(frames, ignore_index=True).equals(pd.concat(whole, ignore_index=True))
    assert pd.concat(whole)["item_id"].tolist() == [k[2:-4] for k in keys]
