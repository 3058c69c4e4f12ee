"""The storage interface (lib/lookalike/io/storage.py): one contract, run against local files, S3
(the moto server) and the Hadoop implementation on pyarrow's local file system; then what only S3
has (conditional writes and their fallback), and the table reader going through this layer with
the configured retries instead of pyarrow's own S3 client."""

from __future__ import annotations

import re
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.config import S3Config
from lookalike.errors import InputError
from lookalike.io import tables
from lookalike.io.hadoop import HadoopStorage
from lookalike.io.local import LocalStorage
from lookalike.io.s3 import S3Storage
from lookalike.io.storage import StorageError, storage_for
from tests.support.faultproxy import FAULT_KINDS, FaultProxy
from tests.support.paths import ROOT


@pytest.fixture(params=["local", "file-uri", "s3", "hadoop"])
def store(request, tmp_path):
    """(storage, root URI): an empty directory or prefix."""
    if request.param == "local":
        return LocalStorage(), str(tmp_path / "root")
    if request.param == "file-uri":
        return LocalStorage(), f"file://{tmp_path}/root"
    if request.param == "hadoop":
        return HadoopStorage(), f"file://{tmp_path}/root"
    endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
    return S3Storage(S3Config(endpoint_url=endpoint)), f"s3://{bucket}/root"


def test_storage_for_dispatches_on_the_scheme():
    assert isinstance(storage_for("s3://b/k"), S3Storage) and isinstance(storage_for("s3a://b/k"), S3Storage)
    assert isinstance(storage_for("hdfs://nn:8020/x"), HadoopStorage)
    assert isinstance(storage_for("/tmp/x"), LocalStorage) and isinstance(storage_for("file:///tmp/x"), LocalStorage)


def test_write_list_stat_read(store):
    storage, root = store
    files = {"top.txt": b"1", "a/b.txt": b"22", "a/c/d.txt": b"333"}
    for key, data in files.items():
        storage.write(f"{root}/{key}", data)
    listed = sorted(storage.list(root), key=lambda e: e.key)
    assert [(e.key, e.size) for e in listed] == sorted((k, len(v)) for k, v in files.items())
    assert all(e.version for e in listed)
    for entry in listed:
        assert storage.read(entry.uri, 100) == files[entry.key]
        assert storage.stat(entry.uri).size == entry.size
    # A URI naming one file lists that file, keyed by its name.
    assert [(e.key, e.size) for e in storage.list(f"{root}/a/c/d.txt")] == [("d.txt", 3)]
    assert [e.key for e in storage.list(f"{root}/a")] == ["b.txt", "c/d.txt"]
    assert storage.list_dirs(root) == ["a"] and storage.list_dirs(f"{root}/a") == ["c"]
    assert storage.exists(root) and storage.exists(f"{root}/a/b.txt")
    # Missing: nothing listed, no stat, no error.
    assert list(storage.list(f"{root}/missing")) == [] and storage.list_dirs(f"{root}/missing") == []
    assert storage.stat(f"{root}/missing") is None and not storage.exists(f"{root}/missing")
    assert storage.stat(f"{root}/a") is None  # a directory is not a file


def test_read_kinds_and_ranges(store):
    storage, root = store
    storage.write(f"{root}/f.bin", bytes(range(100)))
    with pytest.raises(StorageError) as big:
        storage.read(f"{root}/f.bin", 99)
    assert big.value.kind == "too_large"
    with pytest.raises(StorageError) as missing:
        storage.read(f"{root}/gone.bin", 100)
    assert missing.value.kind == "not_found"
    assert storage.read_range(f"{root}/f.bin", 0, 10) == bytes(range(10))
    assert storage.read_range(f"{root}/f.bin", 95, 10) == bytes(range(95, 100))  # fewer at the end
    assert storage.read_range(f"{root}/f.bin", 100, 10) == b""
    storage.write(f"{root}/empty", b"")
    assert storage.read(f"{root}/empty", 0) == b"" and storage.read_range(f"{root}/empty", 0, 10) == b""


def test_writes_replace_in_one_step_and_aborted_writes_leave_nothing(store):
    storage, root = store
    target = f"{root}/t/x.bin"
    storage.write(target, b"old")
    before = storage.stat(target).version
    out = storage.open_write(target)
    out.file.write(b"new, longer")
    assert storage.read(target, 100) == b"old"  # nothing visible before commit
    out.commit()
    assert storage.read(target, 100) == b"new, longer" and storage.stat(target).version != before
    with pytest.raises(RuntimeError):
        with storage.open_write(f"{root}/t/never.bin") as out:
            out.file.write(b"half")
            raise RuntimeError("the writer fails")
    aborted = storage.open_write(target)
    aborted.file.write(b"discarded")
    aborted.abort()
    assert storage.read(target, 100) == b"new, longer"
    assert [e.key for e in storage.list(f"{root}/t")] == ["x.bin"]  # no temporary files left


def test_create_exclusive_delete_and_delete_prefix(store):
    storage, root = store
    lock = f"{root}/.out.lock"
    assert storage.create_exclusive(lock, b"first")
    assert not storage.create_exclusive(lock, b"second")
    assert storage.read(lock, 100) == b"first"
    storage.delete(lock)
    storage.delete(lock)  # missing is fine
    assert storage.stat(lock) is None and storage.create_exclusive(lock, b"third")
    for key in ("v/1/a", "v/1/b/c", "v/10/a", "v/2/a"):
        storage.write(f"{root}/{key}", b"x")
    storage.delete_prefix(f"{root}/v/1")
    storage.delete_prefix(f"{root}/v/missing")
    assert sorted(e.key for e in storage.list(root)) == [".out.lock", "v/10/a", "v/2/a"]


def test_upload_and_download(store, tmp_path):
    storage, root = store
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 5000)
    storage.make_dirs(f"{root}/up")
    storage.upload(str(source), f"{root}/up/data.bin")
    target = tmp_path / "copy.bin"
    storage.download(f"{root}/up/data.bin", str(target))
    assert target.read_bytes() == source.read_bytes()
    with pytest.raises(StorageError) as missing:
        storage.download(f"{root}/up/none.bin", str(tmp_path / "none"))
    assert missing.value.kind == "not_found"


# --- S3 only ------------------------------------------------------------------------------------


def test_s3_create_exclusive_falls_back_on_servers_without_conditional_writes(s3_endpoint, bucket, monkeypatch):
    from botocore.exceptions import ClientError

    storage = S3Storage(S3Config(endpoint_url=s3_endpoint))
    client = storage.client
    real_put = client.put_object

    def put_without_conditions(**kwargs):
        if "IfNoneMatch" in kwargs:
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "no conditional writes"}}, "PutObject")
        return real_put(**kwargs)

    monkeypatch.setattr(client, "put_object", put_without_conditions)
    lock = f"s3://{bucket}/.emb.lock"
    assert storage.create_exclusive(lock, b"first") and not storage.create_exclusive(lock, b"second")
    assert storage.read(lock, 100) == b"first"


def test_s3_errors_say_how_often_they_were_tried_and_never_quote_credentials(s3_endpoint, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    with FaultProxy(s3_endpoint, always_fail={"k"}, kinds=("internal",), echo_authorization=True) as proxy:
        storage = S3Storage(S3Config(endpoint_url=proxy.url, max_attempts=2))
        with pytest.raises(StorageError) as failed:
            storage.stat(f"s3://{bucket}/k")
        assert proxy.stats.attempts[("head", f"{bucket}/k")] == 2
    assert "gave up after 2 attempts (s3.max_attempts=2" in failed.value.message


# --- the tables reader uses the same S3 settings ----------------------------------------------------


@pytest.fixture
def s3_table(s3, bucket, tmp_path):
    """A small neighbour-shaped table on S3 (no _LATEST: read as it is)."""
    table = pa.table(
        {
            "item_id": [f"i{n:03d}" for n in range(50)],
            "rank": pa.array([1] * 50, pa.int32()),
            "neighbour_id": [f"n{n:03d}" for n in range(50)],
            "score": pa.array([0.5] * 50, pa.float32()),
        }
    )
    pq.write_table(table, tmp_path / "part-00000.parquet")
    s3.upload_file(str(tmp_path / "part-00000.parquet"), bucket, "tables/t/part-00000.parquet")
    return f"s3://{bucket}/tables/t", f"{bucket}/tables/t/part-00000.parquet", table


def test_table_reader_honours_s3_max_attempts_where_pyarrows_default_would_give_up(s3_endpoint, s3_table):
    """Every GET fails three times before it succeeds (errors, dropped connections, bodies cut off
    half way): pyarrow's S3 file system with its default strategy (3 attempts) would fail; built
    from s3.max_attempts=4 it reads the table, each GET costing exactly 4 requests."""
    uri, part, table = s3_table
    with FaultProxy(s3_endpoint, seed=5, rates={"get": 1.0}, max_consecutive=3, kinds=FAULT_KINDS) as proxy:
        read = tables.read_table(uri, ["item_id", "score"], S3Config(endpoint_url=proxy.url, max_attempts=4))
        attempts = proxy.stats.attempts[("get", part)]
    assert read.equals(table.select(["item_id", "score"]))
    assert attempts >= 4 and attempts % 4 == 0
    # A file that never reads: exactly s3.max_attempts requests (pyarrow's default would send 3).
    with FaultProxy(s3_endpoint, always_fail={part.split("/", 1)[1]}, kinds=FAULT_KINDS) as proxy:
        with pytest.raises(
            InputError,
            match=r"cannot read the Parquet table .*tried up to "
            r"s3.max_attempts=2 times, s3.retry_mode=standard",
        ):
            tables.read_table(uri, ["item_id"], S3Config(endpoint_url=proxy.url, max_attempts=2))
        assert proxy.stats.attempts[("get", part)] + proxy.stats.attempts[("head", part)] == 2


def test_table_reader_point_lookup_sends_a_few_ranged_reads_and_nothing_else(s3_endpoint, s3_table):
    import pyarrow.dataset as ds

    uri, part, _ = s3_table
    with FaultProxy(s3_endpoint) as proxy:
        found = tables.read_table(
            uri, ["neighbour_id"], S3Config(endpoint_url=proxy.url), ds.field("item_id") == "i007"
        )
        stats = proxy.stats
    assert found.column("neighbour_id").to_pylist() == ["n007"]
    # A few ranged GETs (the footer when the dataset learns the schema, then the footer and the
    # column chunk the scan needs) and nothing but reads.
    assert 1 <= stats.attempts[("get", part)] <= 3
    assert stats.requests["other"] == 0


def test_missing_s3_table_is_table_not_found(s3_endpoint, bucket):
    with pytest.raises(InputError, match="table not found"):
        tables.read_table(f"s3://{bucket}/nothing/{uuid.uuid4().hex}", ["item_id"], S3Config(endpoint_url=s3_endpoint))


def test_no_module_outside_the_storage_layer_talks_to_s3_itself():
    forbidden = re.compile(r"^\s*(import|from)\s+(boto3|botocore|s3transfer|s3fs|fsspec)\b|S3FileSystem\(")
    package = ROOT / "lib" / "lookalike"
    hits = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sorted(package.rglob("*.py"))
        if p.parent.name != "io"
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if forbidden.search(line)
    ]
    assert hits == []


def test_local_listing_keeps_links_that_cannot_be_read_and_their_fetch_says_why(tmp_path):
    # Issue 24: a link to itself (ELOOP) escaped listing as a traceback; a dangling link vanished.
    from lookalike.io.local import LocalStorage

    (tmp_path / "good.jpg").write_bytes(b"jpeg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    store = LocalStorage()
    listed = {e.key: e for e in store.list(str(tmp_path))}
    assert sorted(listed) == ["dangling.jpg", "good.jpg", "loop.jpg"]
    assert listed["good.jpg"].size == 4 and listed["loop.jpg"].size is None
    with pytest.raises(StorageError) as loop:
        store.read(listed["loop.jpg"].uri, 100)
    assert loop.value.kind == "fetch_error" and "symbolic links" in loop.value.message
    with pytest.raises(StorageError) as dangling:
        store.read(listed["dangling.jpg"].uri, 100)
    assert dangling.value.kind == "not_found"
    assert dangling.value.message == f"a symbolic link to {tmp_path / 'gone.jpg'}, which does not exist"
