"""Iceberg tables in AWS Glue with their files on S3, both served over HTTP on 127.0.0.1 by moto:
what Athena and EMR see by name. Data files are written to S3 with pyarrow, as tasks write them."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.config import S3Config
from lookalike.errors import OutputError, TransientError
from lookalike.iceberg import commit
from lookalike.iceberg.catalogs import CatalogSpec, open_catalog
from tests.support.net import free_port

SCHEMA = pa.schema([pa.field("item_id", pa.string(), nullable=False), pa.field("score", pa.float32())])


def put_run(s3, bucket: str, prefix: str, run: str, values: dict[str, float]) -> list[str]:
    sink = pa.BufferOutputStream()
    items = sorted(values)
    pq.write_table(pa.table({"item_id": items, "score": [values[i] for i in items]}, schema=SCHEMA), sink)
    key = f"{prefix}/data/{run}/part-00000.parquet"
    s3.put_object(Bucket=bucket, Key=key, Body=sink.getvalue().to_pybytes())
    return [f"s3://{bucket}/{key}"]


def test_tables_committed_to_glue_are_read_by_name_with_a_fresh_catalog(s3, bucket, s3_endpoint):
    spec = CatalogSpec(type="glue", endpoint_url=s3_endpoint, region="us-east-1")
    s3_cfg = S3Config(endpoint_url=s3_endpoint)
    location = f"s3://{bucket}/warehouse/neighbours"
    table = commit.open_table(
        open_catalog(spec, s3_cfg), spec, "output.neighbours", "shop.neighbours", location, SCHEMA, s3=s3_cfg
    )
    first = commit.replace_files(table, spec, put_run(s3, bucket, "warehouse/neighbours", "r1", {"a": 1.0}), {})
    commit.replace_files(
        table, spec, put_run(s3, bucket, "warehouse/neighbours", "r2", {"b": 2.0}), {"lookalike.run_id": "r2"}
    )
    reader = open_catalog(spec, s3_cfg).load_table("shop.neighbours")  # what Athena resolves by name
    assert reader.location() == location
    assert reader.scan().to_arrow().to_pylist() == [{"item_id": "b", "score": 2.0}]
    assert reader.scan(snapshot_id=first).to_arrow().to_pylist() == [{"item_id": "a", "score": 1.0}]
    assert reader.current_snapshot().summary.additional_properties["lookalike.run_id"] == "r2"
    # The Glue entry is an Iceberg table whose metadata is on S3.
    import boto3

    glue = boto3.client("glue", endpoint_url=s3_endpoint, region_name="us-east-1")
    entry = glue.get_table(DatabaseName="shop", Name="neighbours")["Table"]
    assert entry["Parameters"]["table_type"].upper() == "ICEBERG"
    assert entry["Parameters"]["metadata_location"].startswith(f"{location}/metadata/")


def test_an_s3_prefix_holding_other_objects_is_refused_before_the_catalog_changes(s3, bucket, s3_endpoint):
    spec = CatalogSpec(type="glue", endpoint_url=s3_endpoint, region="us-east-1")
    s3_cfg = S3Config(endpoint_url=s3_endpoint)
    s3.put_object(Bucket=bucket, Key="exports/catalog.csv", Body=b"mine")
    with pytest.raises(OutputError, match=r"output.neighbours: s3://.*/exports holds files .*catalog.csv"):
        commit.open_table(
            open_catalog(spec, s3_cfg),
            spec,
            "output.neighbours",
            "other.neighbours",
            f"s3://{bucket}/exports",
            SCHEMA,
            s3=s3_cfg,
        )
    assert s3.get_object(Bucket=bucket, Key="exports/catalog.csv")["Body"].read() == b"mine"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="exports/")["Contents"]] == [
        "exports/catalog.csv"
    ]


def test_a_catalog_that_is_down_is_a_transient_error_and_commits_nothing(tmp_path):
    spec = CatalogSpec(type="glue", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1")
    budget = S3Config(max_attempts=2)  # the catalog's calls get the run's retry budget, not boto3's default
    with pytest.raises(TransientError) as down:
        commit.open_table(
            open_catalog(spec, budget), spec, "output.neighbours", "shop.neighbours", str(tmp_path / "t"), SCHEMA
        )
    assert down.value.exit_code == 75
    assert str(down.value).startswith("cannot load table shop.neighbours from the glue catalog at http://127.0.0.1:")
    assert "run again later" in str(down.value)
    assert not (tmp_path / "t").exists()
