"""Atomic publishing on S3 (lib/lookalike/publish/) against a real moto server over HTTP: the
pointer object written last, the lock as a conditional write, an output of an older layout
refused. Spark here cannot write s3:// (no hadoop-aws), so staged data is written with boto3, as
EMRFS would write it on EMR."""

from __future__ import annotations

import json
import os
import socket

import pytest

from lookalike import publish
from lookalike.config import S3Config
from lookalike.errors import OutputError, OutputLockedError
from tests.support.neighbours_versions import put_version, read_s3


def test_s3_publish_writes_the_pointer_last_and_readers_follow_it(s3, bucket, s3_endpoint):
    cfg = S3Config(endpoint_url=s3_endpoint)
    out = f"s3://{bucket}/lookalike/emb"
    assert publish.resolve(out, cfg) == out and publish.current_version(out, cfg) is None
    for version in (1, 2, 3):
        with publish.OutputSet(None, {"emb": out}, f"run-{version}", s3=cfg) as outputs:
            staging = outputs.staging("emb")
            assert staging == f"s3://{bucket}/lookalike/.emb.versions/run-{version}"
            put_version(s3, staging, version)
            assert publish.current_version(out, cfg) == (f"run-{version - 1}" if version > 1 else None)
            outputs.commit({"emb": {"run_id": f"run-{version}"}})
    latest = s3.get_object(Bucket=bucket, Key="lookalike/emb/_LATEST")["Body"].read().decode().strip()
    assert latest == f"s3://{bucket}/lookalike/.emb.versions/run-3" == publish.resolve(out, cfg)
    assert set(read_s3(s3, publish.resolve(out, cfg))["version"]) == {3}
    assert publish.read_summary(out, cfg) == {"run_id": "run-3"}
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="lookalike/.emb.versions/", Delimiter="/")
    assert sorted(p["Prefix"] for p in listed["CommonPrefixes"]) == [
        "lookalike/.emb.versions/run-2/",
        "lookalike/.emb.versions/run-3/",
    ]

    with pytest.raises(RuntimeError, match="injected"):
        with publish.OutputSet(None, {"emb": out}, "run-4", s3=cfg) as outputs:
            put_version(s3, outputs.staging("emb"), 4)
            raise RuntimeError("injected failure after the data was staged")
    assert publish.resolve(out, cfg).endswith("/run-3")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="lookalike/.emb.versions/run-4/")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="lookalike/.emb.lock")


def test_s3_lock_is_a_conditional_write_and_refuses_a_second_writer(s3, bucket, s3_endpoint):
    cfg = S3Config(endpoint_url=s3_endpoint)
    out = f"s3://{bucket}/emb"
    with publish.OutputSet(None, {"emb": out}, "first", s3=cfg):
        owner = json.loads(s3.get_object(Bucket=bucket, Key=".emb.lock")["Body"].read())
        assert (owner["run_id"], owner["host"], owner["pid"]) == ("first", socket.gethostname(), os.getpid())
        with pytest.raises(OutputLockedError, match=r"locked by run first .*still running"):
            with publish.OutputSet(None, {"emb": out}, "second", s3=cfg):
                pass
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=".emb.lock")


def test_s3_output_with_objects_of_an_older_layout_is_refused_before_anything_is_written(s3, bucket, s3_endpoint):
    cfg = S3Config(endpoint_url=s3_endpoint)
    s3.put_object(Bucket=bucket, Key="emb/part-00000.parquet", Body=b"old")
    with pytest.raises(OutputError, match=r"older layout .*emb/part-00000.parquet.*aws s3 mv"):
        with publish.OutputSet(None, {"emb": f"s3://{bucket}/emb"}, "r", s3=cfg):
            pass
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["emb/part-00000.parquet"]
