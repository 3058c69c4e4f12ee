"""The whole pipeline with its input and every output on S3 and its tables in AWS Glue (moto over
HTTP on 127.0.0.1), from the tests' plain local Spark, which has no Hadoop S3 connector: the tasks
write and read the tables themselves through lookalike's storage layer (io/sparkparquet.py). The
tables, read by name through a fresh Glue catalog as Athena would, equal the same pipeline's on
local paths (SQLite catalog), and the next run on S3 is incremental."""

from __future__ import annotations

import uuid

import pytest

from lookalike.config import S3Config, load_config
from lookalike.iceberg.catalogs import CatalogSpec, open_catalog
from lookalike.jobs import pipeline
from tests.support.embed_rows import assert_embeddings_agree
from tests.support.outputs import read_output
from tests.support.paths import SAMPLE_DIR

IMAGES = 10


def read_table(uri: str, s3: S3Config | None):
    return read_output(uri, s3=s3).to_pandas()


def read_by_name(identifier: str, s3_endpoint: str):
    """The table as Athena or EMR find it: by name in Glue, nothing else known."""
    spec = CatalogSpec(type="glue", endpoint_url=s3_endpoint, region="us-east-1")
    return open_catalog(spec, S3Config(endpoint_url=s3_endpoint)).load_table(identifier).scan().to_arrow()


@pytest.fixture
def images() -> list:
    return sorted(SAMPLE_DIR.rglob("*.jpg"))[:: max(1, len(list(SAMPLE_DIR.rglob("*.jpg"))) // IMAGES)][:IMAGES]


def config(toy_overrides, uri: str, out: str, *extra: str):
    return load_config(
        None,
        [
            f"input.uri={uri}",
            *toy_overrides,
            "model.batch_size=4",
            "input.partition_size=4",
            "neighbours.k=3",
            "input.incremental=true",
            f"output.embeddings={out}/embeddings",
            f"output.errors={out}/errors",
            f"output.neighbours={out}/neighbours",
            *extra,
        ],
    )


def test_the_pipeline_on_s3_from_a_plain_local_spark_equals_the_local_run(
    spark, s3, bucket, s3_endpoint, tmp_path, toy_overrides, images
):
    local_in = tmp_path / "images"
    local_in.mkdir()
    for path in images:
        (local_in / path.name).write_bytes(path.read_bytes())
        s3.put_object(Bucket=bucket, Key=f"shop/{path.name}", Body=path.read_bytes())
    namespace = f"shop_{uuid.uuid4().hex[:8]}"  # the Glue server is shared by the session's tests
    on_s3 = config(
        toy_overrides,
        f"s3://{bucket}/shop",
        f"s3://{bucket}/lookalike",
        f"s3.endpoint_url={s3_endpoint}",
        "output.catalog.type=glue",
        f"output.catalog.endpoint_url={s3_endpoint}",
        f"output.namespace={namespace}",
    )
    on_disk = config(toy_overrides, str(local_in), str(tmp_path / "out"))
    assert pipeline.run(spark, on_s3)["ok"] and pipeline.run(spark, on_disk)["ok"]

    s3_cfg = S3Config(endpoint_url=s3_endpoint)
    for table, key in (("embeddings", "item_id"), ("neighbours", ["item_id", "rank"])):
        remote = read_table(f"s3://{bucket}/lookalike/{table}", s3_cfg).sort_values(key).reset_index(drop=True)
        named = read_by_name(f"{namespace}.{table}", s3_endpoint).to_pandas().sort_values(key).reset_index(drop=True)
        assert named.drop(columns=["embedding"], errors="ignore").equals(
            remote.drop(columns=["embedding"], errors="ignore")
        )
        local = read_table(str(tmp_path / "out" / table), None).sort_values(key).reset_index(drop=True)
        assert len(remote) == (IMAGES if table == "embeddings" else IMAGES * 3)
        if table == "embeddings":
            assert remote["uri"].str.startswith(f"s3://{bucket}/shop/").all()
            assert remote["item_id"].tolist() == local["item_id"].tolist()
            assert_embeddings_agree(remote["embedding"], local["embedding"])
        else:
            assert remote[["item_id", "rank", "neighbour_id"]].equals(local[["item_id", "rank", "neighbour_id"]])
    # Written by the tasks: sorted by item_id within each file, and no Spark bookkeeping files.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="lookalike/")["Contents"]]
    assert not [k for k in keys if k.endswith(("_SUCCESS", ".crc"))]
    assert {k.split("/")[2] for k in keys} == {"data", "metadata"}  # <table>/data/<run>/..., <table>/metadata/...
    errors = read_table(f"s3://{bucket}/lookalike/errors", s3_cfg)
    assert len(errors) == 0 and "message" in errors.columns

    # The next scheduled run reads the previous tables from S3: nothing to embed, nothing to rank.
    again = pipeline.run(spark, on_s3)
    assert again["embed"]["reused"] == IMAGES and again["embed"]["attempted"] == 0
    assert again["neighbours"].get("skipped") is True
