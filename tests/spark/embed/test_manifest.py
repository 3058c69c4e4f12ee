"""input.manifest: keys read by Spark from generated S3 Inventory reports and key tables (Parquet,
ORC, CSV), on the moto S3 server and on local disk, checked against what listing gives. One data
file streamed in batches without Spark: tests/unit/embed/test_manifest_read_file.py."""

import csv
import gzip
import io
import json
import shutil
from urllib.parse import quote_plus

import pandas as pd
import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

from lookalike.config import InputConfig, S3Config
from lookalike.embed import listing, manifest
from lookalike.errors import DuplicateItemIdError, InputError
from tests.support.paths import SAMPLE_DIR

INVENTORY_SCHEMA = "Bucket, Key, Size, LastModifiedDate, ETag"


def items_of(frame) -> list[tuple]:
    return sorted(tuple(r) for r in frame.select("item_id", "uri", "source_version", "source_bytes").collect())


def listed_items(cfg: InputConfig, s3cfg: S3Config) -> list[tuple]:
    return sorted((i, o.uri, o.version, o.size) for i, o in listing.list_images(cfg, s3cfg))


def put_inventory_csv(s3, bucket: str, rows: list[list], files: int) -> str:
    """An S3 Inventory report as S3 writes one: headerless gzipped CSV data files with URL-encoded
    keys, and the manifest.json that names them. Returns the manifest's URI."""
    base = f"inventory/{bucket}/daily/2026-11-22T01-00Z"
    keys = []
    for n in range(files):
        out = io.StringIO()
        writer = csv.writer(out, quoting=csv.QUOTE_ALL)
        for row in rows[n::files]:
            writer.writerow([row[0], quote_plus(row[1], safe="/")] + [str(v) for v in row[2:]])
        key = f"inventory/{bucket}/daily/data/part-{n}.csv.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(out.getvalue().encode()))
        keys.append({"key": key, "size": 0, "MD5checksum": "0"})
    document = {
        "sourceBucket": bucket,
        "destinationBucket": f"arn:aws:s3:::{bucket}",
        "version": "2016-11-30",
        "fileFormat": "CSV",
        "fileSchema": INVENTORY_SCHEMA,
        "files": keys,
    }
    s3.put_object(Bucket=bucket, Key=f"{base}/manifest.json", Body=json.dumps(document).encode())
    return f"s3://{bucket}/{base}/manifest.json"


def test_s3_inventory_report_gives_exactly_the_items_listing_gives(spark, s3, bucket, s3_endpoint):
    images = sorted(SAMPLE_DIR.rglob("*.jpg"))[:10]
    for path in images:
        s3.upload_file(str(path), bucket, f"shop/{path.parent.name}/{path.name}")
    # Keys that need URL-decoding, and rows that listing would not return as images.
    s3.upload_file(str(images[0]), bucket, "shop/new arrivals/a+b 100%.jpg")
    s3.put_object(Bucket=bucket, Key="shop/readme.txt", Body=b"not an image")
    s3.put_object(Bucket=bucket, Key="shop/empty/", Body=b"")
    s3.upload_file(str(images[1]), bucket, "elsewhere/x.jpg")
    rows = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            rows.append([bucket, obj["Key"], obj["Size"], "2026-11-22T00:00:00.000Z", obj["ETag"].strip('"')])
    s3cfg = S3Config(endpoint_url=s3_endpoint)
    cfg = InputConfig(uri=f"s3://{bucket}/shop/", manifest=put_inventory_csv(s3, bucket, rows, files=3))

    frame = manifest.read_manifest(spark, cfg, s3cfg)

    expected = listed_items(InputConfig(uri=cfg.uri), s3cfg)
    assert len(expected) == 11
    assert items_of(frame) == expected  # ids, URIs, ETags (what incremental runs compare), sizes
    assert ("new arrivals/a+b 100%", f"s3://{bucket}/shop/new arrivals/a+b 100%.jpg") in [r[:2] for r in expected]
    assert frame.rdd.getNumPartitions() == 3  # one task per inventory data file


def test_parquet_key_table_in_a_local_directory_with_size_and_etag(spark, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(SAMPLE_DIR, root)
    paths = sorted(root.rglob("*.jpg"))[:12]
    table = tmp_path / "keys"
    table.mkdir()
    for n in range(2):
        part = paths[n::2]
        pq.write_table(
            pa.table(
                {
                    "Path": [p.relative_to(root).as_posix() for p in part],
                    "size": pa.array([p.stat().st_size for p in part], pa.int64()),
                    "ETag": [f'"etag-{p.stem}"' for p in part],
                    "colour": ["red"] * len(part),
                }
            ),
            table / f"part-{n:05d}.snappy.parquet",
        )
    (table / "_SUCCESS").write_bytes(b"")

    frame = manifest.read_manifest(spark, InputConfig(uri=str(root), manifest=str(table), manifest_key_column="path"))

    listed = {i: o for i, o in listing.list_images(InputConfig(uri=str(root)), S3Config())}
    got = items_of(frame)
    assert len(got) == 12
    for item_id, uri, version, size in got:
        assert (uri, size) == (listed[item_id].uri, listed[item_id].size)
        assert version == f"etag-{item_id.rsplit('/', 1)[-1]}"  # quotes stripped, as for listed ETags


def test_generated_manifest_of_many_keys_is_read_by_spark_in_parallel(spark, tmp_path):
    table = tmp_path / "manifest"
    table.mkdir()
    n, files = 30_000, 6
    keys = [f"catalogue/{i % 97:02d}/sku-{i:07d}_front.jpg" for i in range(n)]
    keys += ["catalogue/00/sku-bad_front.jpg", "archive/sku-0000001_front.jpg", "catalogue/00/notes.txt"]
    for f in range(files):
        pq.write_table(pa.table({"key": keys[f::files]}), table / f"part-{f}.parquet", row_group_size=2000)
    cfg = InputConfig(uri="s3://shop-images/catalogue", manifest=str(table), id_regex=r"sku-(?P<id>\d+)_")

    frame = manifest.read_manifest(spark, cfg, S3Config())

    # One task per data file, each with its file's rows; the id-less, outside-the-prefix and
    # non-image keys are skipped.
    assert frame.rdd.glom().map(len).collect() == [n // files] * files
    row = frame.filter("item_id = '0012345'").collect()[0]
    assert row["uri"] == "s3://shop-images/catalogue/26/sku-0012345_front.jpg"
    assert row["source_version"] is None and row["source_bytes"] is None


@pytest.mark.version_independent
def test_two_keys_with_one_item_id_fail_naming_both_keys(spark, tmp_path):
    table = tmp_path / "m.parquet"
    pq.write_table(pa.table({"key": ["a/1.jpg", "a/2.jpg", "a/1.png", "a/2.jpg"]}), table)
    with pytest.raises(DuplicateItemIdError, match=r"'a/1' comes from two keys: 'a/1.jpg' and 'a/1.png'"):
        manifest.read_manifest(spark, InputConfig(uri="s3://b/", manifest=str(table)))
    # Issue 24: every clash at once (count, and the first 20 by id), not one per run.
    keys = [f"a/{n:02d}.{ext}" for n in range(25) for ext in ("jpg", "png")] + ["a/solo.jpg"]
    pq.write_table(pa.table({"key": keys}), table)
    with pytest.raises(DuplicateItemIdError) as clashes:
        manifest.read_manifest(spark, InputConfig(uri="s3://b/", manifest=str(table)))
    message = str(clashes.value)
    assert message.startswith("25 item ids come from two or more keys: 'a/00' from 'a/00.jpg' and 'a/00.png'; ")
    assert "'a/19' from 'a/19.jpg' and 'a/19.png' and 5 more." in message and "'a/20'" not in message
    # The same key twice (overlapping reports) is not a conflict: it is embedded once.
    pq.write_table(pa.table({"key": ["a/1.jpg", "a/2.jpg", "a/2.jpg"]}), table)
    frame = manifest.read_manifest(spark, InputConfig(uri="s3://b/", manifest=str(table)))
    assert sorted(r["item_id"] for r in frame.collect()) == ["a/1", "a/2"]


def test_versioned_orc_inventory_keeps_only_current_versions(spark, s3, bucket, s3_endpoint):
    # The ORC/Parquet inventory schema: lower-case names, e_tag, keys not URL-encoded.
    data = pa.table(
        {
            "bucket": [bucket] * 4,
            "key": ["p/a b.jpg", "p/a b.jpg", "p/gone.jpg", "p/c.jpg"],
            "version_id": ["v2", "v1", "v9", "v1"],
            "is_latest": [True, False, True, True],
            "is_delete_marker": [False, False, True, False],
            "size": pa.array([10, 9, 0, 30], pa.int64()),
            "e_tag": ["e2", "e1", "", "e3"],
        }
    )
    sink = io.BytesIO()
    orc.write_table(data, sink)
    s3.put_object(Bucket=bucket, Key="inv/data/one.orc", Body=sink.getvalue())
    document = {
        "destinationBucket": f"arn:aws:s3:::{bucket}",
        "fileFormat": "ORC",
        "fileSchema": "struct<bucket:string,key:string>",
        "files": [{"key": "inv/data/one.orc"}],
    }
    s3.put_object(Bucket=bucket, Key="inv/manifest.json", Body=json.dumps(document).encode())

    frame = manifest.read_manifest(
        spark,
        InputConfig(uri=f"s3://{bucket}/p", manifest=f"s3://{bucket}/inv/manifest.json"),
        S3Config(endpoint_url=s3_endpoint),
    )

    assert items_of(frame) == [("a b", f"s3://{bucket}/p/a b.jpg", "e2", 10), ("c", f"s3://{bucket}/p/c.jpg", "e3", 30)]


def test_csv_manifests_with_a_header_or_with_input_manifest_schema(spark, tmp_path):
    with_header = tmp_path / "with-header.csv"
    with_header.write_text("sku,object_key,size\n1,x/1.jpg,5\n2,x/007.jpg,6\n")
    frame = manifest.read_manifest(
        spark, InputConfig(uri="/data", manifest=str(with_header), manifest_key_column="object_key")
    )
    assert items_of(frame) == [("x/007", "file:///data/x/007.jpg", None, 6), ("x/1", "file:///data/x/1.jpg", None, 5)]

    headerless = tmp_path / "batch-ops.csv"
    headerless.write_text("bkt,x/a%2Bb.jpg,5,etag1\nbkt,x/c.jpg,7,etag2\n")
    with pytest.raises(InputError, match="input.manifest_schema"):
        manifest.read_manifest(spark, InputConfig(uri="s3://bkt/x", manifest=str(headerless)))
    frame = manifest.read_manifest(
        spark, InputConfig(uri="s3://bkt/x", manifest=str(headerless), manifest_schema="Bucket, Key, Size, ETag")
    )
    assert items_of(frame) == [("a+b", "s3://bkt/x/a+b.jpg", "etag1", 5), ("c", "s3://bkt/x/c.jpg", "etag2", 7)]


@pytest.mark.version_independent
def test_unreadable_manifests_are_one_clear_error(spark, tmp_path):
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"name": ["a.jpg"]}), table)
    with pytest.raises(InputError, match=r"no column 'key' \(input.manifest_key_column\); columns: name"):
        manifest.read_manifest(spark, InputConfig(uri="s3://b/", manifest=str(table)))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="broken.parquet"):
        manifest.read_manifest(spark, InputConfig(uri="s3://b/", manifest=str(broken)))
    with pytest.raises(InputError, match="missing: no such file or directory"):
        manifest.read_manifest(spark, InputConfig(uri="s3://b/", manifest=str(tmp_path / "missing")))
    odd = tmp_path / "keys.xlsx"
    odd.write_bytes(b"x")
    with pytest.raises(InputError, match="cannot tell the format"):
        manifest.read_manifest(spark, InputConfig(uri="s3://b/", manifest=str(odd)))


def test_gzipped_csv_manifest_is_streamed_in_blocks_with_keys_kept_as_text(spark, tmp_path, monkeypatch):
    rows = [f"{i:07d}/0{i}.jpg,{i}" for i in range(3000)]
    path = tmp_path / "keys.csv.gz"
    path.write_bytes(gzip.compress(("key,size\n" + "\n".join(rows) + "\n").encode()))
    cfg = InputConfig(uri="/data", manifest=str(path))
    spec = manifest.DataFile(f"file://{path}", "csv")
    whole = list(manifest.read_file(spec, cfg, S3Config()))
    assert len(whole) == 1

    monkeypatch.setattr(manifest, "READ_BUFFER_BYTES", 4096)
    frames = list(manifest.read_file(spec, cfg, S3Config()))
    assert len(frames) > 5 and all(f["problem"].isna().all() for f in frames)
    assert pd.concat(frames, ignore_index=True).equals(pd.concat(whole, ignore_index=True))

    monkeypatch.undo()
    got = items_of(manifest.read_manifest(spark, cfg))
    assert len(got) == 3000 and got[7] == ("0000007/07", "file:///data/0000007/07.jpg", None, 7)


@pytest.mark.version_independent
def test_keys_that_climb_out_of_input_uri_with_dot_dot_are_outside(spark, tmp_path):
    # Issue 24: "../" in a key was compared unnormalised and taken as inside input.uri.
    root = tmp_path / "images"
    (root / "dress").mkdir(parents=True)
    inside = sorted((SAMPLE_DIR / "dress").glob("*.jpg"))[:2]
    for path in inside:
        shutil.copy(path, root / "dress" / path.name)
    secret = tmp_path / "secret.jpg"
    shutil.copy(inside[0], secret)
    keys = tmp_path / "keys.csv"
    keys.write_text(
        "key\n"
        f"dress/{inside[0].name}\n"
        f"dress/../dress/{inside[1].name}\n"  # inside once normalised
        "../secret.jpg\n"  # outside: the file system would read tmp_path/secret.jpg
        f"dress/../../{secret.name}\n"
    )
    frame = manifest.read_manifest(spark, InputConfig(uri=str(root), manifest=str(keys), manifest_key_column="key"))
    got = items_of(frame)
    assert sorted(item_id for item_id, *_ in got) == sorted(f"dress/{p.stem}" for p in inside)
    assert all(uri.startswith(f"file://{root}/dress/") and ".." not in uri for _, uri, *_ in got)
