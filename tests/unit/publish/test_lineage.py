"""The identity of an input table (lib/lookalike/publish/lineage.py), which the unchanged-input
checks compare: listed files by name, size and version, bookkeeping files left out, on S3 (a
real moto server) and on a local disk."""

from __future__ import annotations

import dataclasses
import logging

from lookalike.config import S3Config
from lookalike.io.storage import Entry
from lookalike.publish.lineage import entries_identity, files_identity


def test_identity_of_listed_files():
    files = [
        Entry("part-0.parquet", "s3://b/t/part-0.parquet", 100, "etag0"),
        Entry("part-1.parquet", "s3://b/t/part-1.parquet", 200, "etag1"),
    ]
    identity = entries_identity(files)
    assert identity == entries_identity(files[::-1]) and identity.startswith("2-")
    resized = [files[0], dataclasses.replace(files[1], size=201)]
    rewritten = [files[0], dataclasses.replace(files[1], version="etag1b")]
    added = files + [Entry("part-2.parquet", "s3://b/t/part-2.parquet", 100, "etag2")]
    assert (
        len(
            {
                identity,
                entries_identity(resized),
                entries_identity(rewritten),
                entries_identity(added),
                entries_identity(files[:1]),
            }
        )
        == 5
    )
    bookkeeping = [
        Entry(key, f"s3://b/t/{key}", 0, "x")
        for key in ("_SUCCESS", "._SUCCESS.crc", ".part-0.parquet.crc", "_temporary/0/part-9.parquet")
    ]
    assert entries_identity(files + bookkeeping) == identity
    assert entries_identity(bookkeeping) is None and entries_identity([]) is None


def test_identity_of_s3_and_local_files(s3, bucket, s3_endpoint, tmp_path, caplog):
    s3cfg = S3Config(endpoint_url=s3_endpoint)
    table = f"s3://{bucket}/likes"
    s3.put_object(Bucket=bucket, Key="likes/part-0.csv", Body=b"item_id\na\n")
    first = files_identity(table, s3cfg)
    s3.put_object(Bucket=bucket, Key="likes/_SUCCESS", Body=b"")
    s3.put_object(Bucket=bucket, Key="likes/part-0.csv", Body=b"item_id\na\n")  # the same bytes again
    assert files_identity(table, s3cfg) == first
    s3.put_object(Bucket=bucket, Key="likes/part-0.csv", Body=b"item_id\nb\n")  # same size, new ETag
    assert files_identity(table, s3cfg) != first
    assert files_identity(f"{table}/part-0.csv", s3cfg) is not None  # one object

    directory = tmp_path / "likes"
    directory.mkdir()
    (directory / "part-0.csv").write_text("item_id\na\n")
    local = files_identity(str(directory))
    assert files_identity(f"file://{directory}") == local
    (directory / "part-0.csv").write_text("item_id\na\nb\n")
    assert files_identity(str(directory)) != local

    with caplog.at_level(logging.WARNING, logger="lookalike.publish.lineage"):
        assert files_identity(f"s3://{bucket}-missing/likes", s3cfg) is None
        assert files_identity(str(tmp_path / "nowhere")) is None
    assert "cannot list" in caplog.text and "no data file" in caplog.text
