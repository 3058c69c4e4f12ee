"""Listing inputs on the driver (local directories, S3 prefixes on the moto server): ids, patterns,
duplicates, paging; and fetch's error kinds. No Spark: the listing as a DataFrame, by Spark tasks,
is tested in tests/spark/embed/test_listing.py."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from lookalike.config import InputConfig, S3Config
from lookalike.embed import listing
from lookalike.errors import DuplicateItemIdError, InputError
from lookalike.io import storage
from tests.support.paths import SAMPLE_DIR


def test_local_listing_gives_ids_relative_to_the_root_without_extension():
    listed = listing.list_images(InputConfig(uri=str(SAMPLE_DIR)), S3Config())
    assert len(listed) == 60
    item_id, obj = listed[0]
    assert "/" in item_id and not item_id.endswith(".jpg")
    assert obj.uri == f"file://{SAMPLE_DIR}/{item_id}.jpg"
    assert obj.version == f"{obj.size}-{(SAMPLE_DIR / (item_id + '.jpg')).stat().st_mtime_ns}"
    # LICENSE and PROVENANCE.md are not images.
    assert not any(i.endswith(("LICENSE", "PROVENANCE")) for i, _ in listed)


def test_pattern_is_case_insensitive_and_configurable(tmp_path):
    for name in ("a.JPG", "b.png", "c.txt", "d.Jpeg"):
        (tmp_path / name).write_bytes(b"x")
    ids = [i for i, _ in listing.list_images(InputConfig(uri=str(tmp_path)), S3Config())]
    assert ids == ["a", "b", "d"]
    ids = [i for i, _ in listing.list_images(InputConfig(uri=f"file://{tmp_path}", pattern="*.png"), S3Config())]
    assert ids == ["b"]


def test_id_regex_uses_the_named_group(tmp_path):
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "sku-123_front.jpg").write_bytes(b"x")
    listed = listing.list_images(InputConfig(uri=str(tmp_path), id_regex=r"sku-(?P<id>\d+)_"), S3Config())
    assert [i for i, _ in listed] == ["123"]


def test_duplicate_ids_name_both_keys(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"1")
    (tmp_path / "x.png").write_bytes(b"2")
    with pytest.raises(DuplicateItemIdError, match=r"'x' comes from two keys: 'x.jpg' and 'x.png'"):
        listing.list_images(InputConfig(uri=str(tmp_path)), S3Config())


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such directory"):
        listing.list_images(InputConfig(uri=str(tmp_path / "nope")), S3Config())


def test_s3_listing_pages_through_more_than_one_page(s3, bucket, s3_endpoint):
    with ThreadPoolExecutor(16) as pool:  # the moto server answers requests concurrently
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"imgs/{i:05d}.jpg", Body=b"x"), range(1003)))
    s3.put_object(Bucket=bucket, Key="imgs/readme.txt", Body=b"x")
    s3.put_object(Bucket=bucket, Key="other/0.jpg", Body=b"x")
    listed = listing.list_images(InputConfig(uri=f"s3://{bucket}/imgs"), S3Config(endpoint_url=s3_endpoint))
    assert len(listed) == 1003  # more than one 1,000-key page
    item_id, obj = listed[0]
    assert item_id == "00000" and obj.uri == f"s3://{bucket}/imgs/00000.jpg"
    assert obj.version == s3.head_object(Bucket=bucket, Key="imgs/00000.jpg")["ETag"].strip('"')


def test_fetch_reports_kinds(s3, bucket, s3_endpoint, tmp_path):
    cfg = S3Config(endpoint_url=s3_endpoint)
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=b"abc")
    assert storage.fetch(f"s3://{bucket}/a.jpg", cfg, 100) == b"abc"
    with pytest.raises(storage.StorageError) as missing:
        storage.fetch(f"s3://{bucket}/gone.jpg", cfg, 100)
    assert missing.value.kind == "not_found"
    with pytest.raises(storage.StorageError) as big:
        storage.fetch(f"s3://{bucket}/a.jpg", cfg, 2)
    assert big.value.kind == "too_large"
    with pytest.raises(storage.StorageError) as local_missing:
        storage.fetch(f"file://{tmp_path}/none.jpg", cfg, 100)
    assert local_missing.value.kind == "not_found"


def test_every_duplicate_id_of_a_listing_is_reported_at_once(tmp_path):
    # Issue 24: one clash per run meant as many failed runs as clashes.
    for n in range(22):
        for ext in ("jpg", "png"):
            (tmp_path / f"{n:02d}.{ext}").write_bytes(b"x")
    (tmp_path / "solo.jpg").write_bytes(b"x")
    with pytest.raises(DuplicateItemIdError) as clashes:
        listing.list_images(InputConfig(uri=str(tmp_path)), S3Config())
    message = str(clashes.value)
    assert message.startswith("22 item ids come from two or more keys: '00' from '00.jpg' and '00.png'; ")
    assert message.count(" from '") == 20 and message.endswith(
        "and 2 more. Remove the extra keys, or set input.id_regex so that ids are unique."
    )
