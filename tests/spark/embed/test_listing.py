"""Listing inputs as a DataFrame (list_items): by Spark tasks for S3 prefixes on the moto server,
on the driver for local directories and small prefixes; ids, duplicates. The driver's listing
itself (list_images) and fetch: tests/unit/embed/test_listing.py."""

import logging
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from lookalike import schemas
from lookalike.config import InputConfig, S3Config
from lookalike.embed import listing
from lookalike.embed.stage import ITEMS
from lookalike.errors import DuplicateItemIdError, InputError
from tests.support.net import free_port

# --- list_items: the listing as a DataFrame, parallel for s3:// inputs ------------------------------


def put_many(s3, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(16) as pool:  # the moto server answers requests concurrently
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=key.encode()), keys))


def frame_items(frame) -> list[tuple]:
    return sorted(tuple(r) for r in frame.collect())


def driver_items(cfg: InputConfig, s3cfg: S3Config) -> list[tuple]:
    return sorted((i, o.uri, o.version, o.size) for i, o in listing.list_images(cfg, s3cfg))


def prefixes_listed_in_parallel(caplog) -> int:
    found = [
        int(m.group(1))
        for m in (re.search(r"with (\d+) prefixes listed in parallel", r.getMessage()) for r in caplog.records)
        if m
    ]
    return found[-1] if found else 0


@pytest.fixture
def nested_bucket(s3, bucket, monkeypatch):
    """Nested prefixes deeper than discovery goes, a leaf prefix of more than one 1,000-key page,
    objects next to prefixes at expanded levels, empty prefixes (a directory marker; only files
    that are not images), odd keys, and objects outside input.uri. Big enough for tasks to list."""
    monkeypatch.setattr(listing, "SMALL_INPUT_KEYS", 100)  # decided on the driver
    keys = [f"cat/big/x/y/z/{i:05d}.jpg" for i in range(1050)]
    keys += [
        "cat/top.jpg",
        "cat/notes.txt",
        "cat/a/1.jpg",
        "cat/a/b/2.JPG",
        "cat/a/b/c/3.jpg",
        "cat/a/b/c/d/e/4.jpeg",
        "cat/big/side.png",
        "cat/big/x/y/w.jpg",
        "cat/docs/readme.txt",
        "cat/odd//double.jpg",
        "cat/sp ace/é #1.jpg",
        "other/elsewhere.jpg",
        "cat.jpg",
    ]
    put_many(s3, bucket, keys)
    for marker in ("cat/", "cat/empty/", "cat/a/b/"):
        s3.put_object(Bucket=bucket, Key=marker, Body=b"")
    return bucket


def test_parallel_s3_listing_equals_the_driver_listing(spark, nested_bucket, s3_endpoint, caplog):
    s3cfg = S3Config(endpoint_url=s3_endpoint)
    cfg = InputConfig(uri=f"s3://{nested_bucket}/cat")
    with caplog.at_level(logging.INFO, logger="lookalike.embed.listing"):
        frame = listing.list_items(spark, cfg, s3cfg)

    expected = driver_items(cfg, s3cfg)
    assert len(expected) == 1050 + 9
    assert frame_items(frame) == expected  # every key exactly once, with its ETag and size
    # input.uri, a/, big/, docs/, sp ace/, a/b/, odd// for their own objects; a/b/c/, big/x/y/ whole.
    assert prefixes_listed_in_parallel(caplog) == 9
    assert ("odd//double", f"s3://{nested_bucket}/cat/odd//double.jpg") in [r[:2] for r in expected]
    assert frame.schema == schemas.spark_schema(ITEMS)
    assert frame.is_cached  # later actions do not list the bucket again; the caller frees it
    frame.unpersist()
    assert not frame.is_cached


@pytest.mark.version_independent
@pytest.mark.parametrize(
    "limit, value, tasks",
    [
        ("ENOUGH_PREFIXES", 3, 1 + 6),  # stops after the top level: its objects, its 6 prefixes whole
        ("DISCOVERY_DEPTH", 1, 1 + 6),  # the same, by depth
        ("EXPAND_OBJECTS", 1, 1),  # input.uri holds 2 objects itself: not expanded, one task lists it all
    ],
)
def test_discovery_limits_change_the_tasks_never_the_keys(
    spark, nested_bucket, s3_endpoint, caplog, monkeypatch, limit, value, tasks
):
    monkeypatch.setattr(listing, limit, value)
    s3cfg = S3Config(endpoint_url=s3_endpoint)
    cfg = InputConfig(uri=f"s3://{nested_bucket}/cat/", pattern="*.jpg|*.png", id_regex=r"(?:^|/)(?P<id>[^/]+)\.")
    with caplog.at_level(logging.INFO, logger="lookalike.embed.listing"):
        frame = listing.list_items(spark, cfg, s3cfg)
    expected = driver_items(cfg, s3cfg)
    assert frame_items(frame) == expected and len(expected) == 1050 + 8
    ids = {r[0] for r in expected}
    assert {"2", "side", "double", "é #1"} <= ids and "4" not in ids  # .JPG matches *.jpg; .jpeg is left out
    assert prefixes_listed_in_parallel(caplog) == tasks
    frame.unpersist()


@pytest.mark.version_independent
def test_parallel_listing_finds_duplicate_ids_across_prefixes(spark, s3, bucket, s3_endpoint, monkeypatch):
    monkeypatch.setattr(listing, "SMALL_INPUT_KEYS", 2)
    put_many(s3, bucket, ["in/a/sku-1_front.jpg", "in/b/sku-1_back.jpg", "in/b/sku-2_front.jpg", "in/c/x.jpg"])
    cfg = InputConfig(uri=f"s3://{bucket}/in", id_regex=r"sku-(?P<id>\d+)_")
    with pytest.raises(
        DuplicateItemIdError,
        match=r"item id '1' comes from two keys: 'a/sku-1_front.jpg' and 'b/sku-1_back.jpg'\. "
        r"Remove one, or set input.id_regex so that ids are unique\.",
    ):
        listing.list_items(spark, cfg, S3Config(endpoint_url=s3_endpoint))


@pytest.mark.version_independent
def test_small_s3_and_local_inputs_are_listed_on_the_driver(
    spark, s3, bucket, s3_endpoint, tmp_path, monkeypatch, caplog
):
    calls = []
    real = listing.list_images
    monkeypatch.setattr(listing, "list_images", lambda *a, **kw: calls.append(a[0].uri) or real(*a, **kw))
    put_many(s3, bucket, ["in/1.jpg", "in/one/2.jpg", "in/two/deeper/3.jpg"])
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jpg").write_bytes(b"1")
    (tmp_path / "y.png").write_bytes(b"22")
    s3cfg = S3Config(endpoint_url=s3_endpoint)
    with caplog.at_level(logging.INFO, logger="lookalike.embed.listing"):
        remote = listing.list_items(spark, InputConfig(uri=f"s3://{bucket}/in"), s3cfg)
        local = listing.list_items(spark, InputConfig(uri=str(tmp_path)), s3cfg)
        empty = listing.list_items(spark, InputConfig(uri=f"s3://{bucket}/nothing-here"), s3cfg)
    assert frame_items(remote) == driver_items(InputConfig(uri=f"s3://{bucket}/in"), s3cfg)
    assert [r[0] for r in frame_items(remote)] == ["1", "one/2", "two/deeper/3"]
    assert frame_items(local) == driver_items(InputConfig(uri=str(tmp_path)), s3cfg)
    assert [r[0] for r in frame_items(local)] == ["d/x", "y"]
    assert empty.count() == 0 and empty.schema == schemas.spark_schema(ITEMS)
    assert calls[:3] == [f"s3://{bucket}/in", str(tmp_path), f"s3://{bucket}/nothing-here"]
    assert prefixes_listed_in_parallel(caplog) == 0


@pytest.mark.version_independent
def test_list_items_errors_are_input_errors(spark, s3_endpoint, tmp_path):
    with pytest.raises(InputError, match="no such directory"):
        listing.list_items(spark, InputConfig(uri=str(tmp_path / "nope")), S3Config())
    with pytest.raises(InputError, match=r"cannot list s3://no-such-bucket-here/x: .*does not exist"):
        listing.list_items(spark, InputConfig(uri="s3://no-such-bucket-here/x"), S3Config(endpoint_url=s3_endpoint))


@pytest.mark.version_independent
def test_a_prefix_a_task_cannot_list_fails_the_listing_with_one_clear_error(spark):
    # Discovery worked; then S3 went away before the tasks listed their prefixes.
    dead = S3Config(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1)
    cfg = InputConfig(uri="s3://shop/in")
    with pytest.raises(InputError, match=r"^cannot list s3://shop/in: s3://shop/in/(a|b)/: .*Nothing was written\.$"):
        listing._list_in_parallel(spark, cfg, dead, "s3://shop/in/", [("a/", True), ("b/", False)])
