"""Hostile names and files at the storage level: local file URIs round-trip any name, S3 keys keep
'#', '?' and '%', and fetch gives specific kinds for vanished, FIFO and oversized local files.
(The hostile corpus through decode: tests/unit/embed/test_images_hostile.py.)"""

from __future__ import annotations

import os

import pytest

from lookalike.config import S3Config
from lookalike.io import storage, uris


@pytest.mark.parametrize(
    "name", ["summer dress – été ✓.jpg", "odd #1?&%25 100%.jpg", "a%20b.jpg", "new\nline.jpg", "ünï cödé/ø.png"]
)
def test_local_file_uris_round_trip_any_name(tmp_path, name):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"data")
    uri = uris.file_uri(str(path))
    assert uri.startswith("file:///") and uris.local_path(uri) == str(path)
    assert storage.fetch(uri, S3Config(), 100) == b"data"


def test_a_file_name_that_is_not_utf8_is_listed_under_text_and_fetched_from_its_exact_bytes(tmp_path):
    # Issue 24: a Latin-1 name was listed, then "not found (deleted after listing?)" when fetched.
    raw = os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9 100%.jpg")
    with open(raw, "wb") as handle:
        handle.write(b"data")
    (entry,) = storage.storage_for(str(tmp_path), S3Config()).list(str(tmp_path))
    assert entry.key == "caf%E9 100%.jpg"  # text a table can hold; the byte stays readable
    entry.key.encode("utf-8")
    entry.uri.encode("utf-8")
    assert os.fsencode(uris.local_path(entry.uri)) == raw
    assert storage.fetch(entry.uri, S3Config(), 100) == b"data"


def test_s3_uris_keep_hash_question_mark_and_percent_in_the_key():
    assert uris.split_s3("s3://bkt/dir/odd #1?&%25 100%.jpg") == ("bkt", "dir/odd #1?&%25 100%.jpg")
    assert uris.split_s3("s3://bkt") == ("bkt", "")


def test_fetch_kinds_for_vanished_fifo_and_oversized_local_files(tmp_path):
    gone = tmp_path / "gone.jpg"
    gone.write_bytes(b"x")
    uri = uris.file_uri(str(gone))
    gone.unlink()
    with pytest.raises(storage.StorageError) as missing:
        storage.fetch(uri, S3Config(), 100)
    assert missing.value.kind == "not_found"
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block the task forever
    with pytest.raises(storage.StorageError) as fifo:
        storage.fetch(uris.file_uri(str(tmp_path / "pipe.jpg")), S3Config(), 100)
    assert fifo.value.kind == "unsupported"
    (tmp_path / "big.jpg").write_bytes(b"x" * 101)
    with pytest.raises(storage.StorageError) as big:
        storage.fetch(uris.file_uri(str(tmp_path / "big.jpg")), S3Config(), 100)
    assert big.value.kind == "too_large"
