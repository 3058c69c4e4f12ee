"""lookalike.tools.readers: the embeddings table as a streamed tf.data.Dataset (pyarrow underneath).
The table written by Spark: tests/spark/tools/test_readers.py."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from lookalike import schemas
from lookalike.config import S3Config
from lookalike.errors import InputError, SchemaMismatchError
from lookalike.tools import readers
from tests.support.embed_rows import EPOCH, assert_same_embeddings, embedding_rows, write_table
from tests.support.row_groups import record_reads
from tests.support.s3 import upload_dir


def test_tf_dataset_yields_batches_of_item_ids_and_embeddings_equal_to_the_parquet_content(tmp_path):
    path = tmp_path / "embeddings"
    write_table(path, embedding_rows(1000, 16), rows_per_file=400, rows_per_group=100)

    dataset = readers.embeddings_dataset(str(path), batch_size=128)
    batches = [(ids.numpy(), emb.numpy()) for ids, emb in dataset]

    # 1000 rows over 3 files of 100-row groups come back re-cut to 128 rows, not per row group.
    assert [len(ids) for ids, _ in batches] == [128] * 7 + [104]
    assert all(emb.shape == (len(ids), 16) and emb.dtype == np.float32 for ids, emb in batches)
    assert dataset.element_spec[1].shape.as_list() == [None, 16]
    assert_same_embeddings(
        np.concatenate([ids for ids, _ in batches]), np.concatenate([emb for _, emb in batches]), path
    )
    # A second pass (epoch) reads the table again and sees the same rows.
    assert sum(int(ids.shape[0]) for ids, _ in dataset) == 1000


# Keras warns that a dataset of unknown length "ran out of data"; that is how predict ends here.
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_tf_dataset_feeds_a_keras_model_and_unbatches_to_rows(tmp_path):
    import keras

    path = tmp_path / "embeddings"
    rows = embedding_rows(300, 8, seed=3)
    write_table(path, rows, rows_per_file=300, rows_per_group=50)
    dataset = readers.embeddings_dataset(str(path), batch_size=64)

    first_id, first_vector = next(iter(dataset.unbatch()))
    assert first_id.numpy().decode() == rows[0]["item_id"]
    np.testing.assert_array_equal(first_vector.numpy(), np.float32(rows[0]["embedding"]))

    keras.utils.set_random_seed(0)
    head = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    predicted = head.predict(dataset.map(lambda ids, emb: emb), verbose=0)
    expected = head.predict(np.float32([r["embedding"] for r in rows]), verbose=0)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)


MEASURE = """
import sys, time, pyarrow as pa, pyarrow.dataset as ds
from lookalike.tools import readers
path, how = sys.argv[1], sys.argv[2]
peak = rows = batches = 0
if how == "stream":
    for arrays in readers.iter_batches(path, batch_size=256):
        time.sleep(0.002)  # a consumer slower than the disk, as a training step is
        peak = max(peak, pa.total_allocated_bytes())
        rows += len(arrays["item_id"])
        batches += 1
else:
    table = ds.dataset(path).to_table(columns=["item_id", "embedding"])
    peak, rows = pa.total_allocated_bytes(), table.num_rows
print(peak, rows, batches)
"""


def test_reader_never_holds_more_than_a_few_batches_of_a_large_table_in_memory(tmp_path):
    n, dim = 100_000, 128
    path = tmp_path / "embeddings"
    vectors = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    embedding_type = schemas.arrow_schema(schemas.EMBEDDINGS).field("embedding").type
    # Only the columns the reader reads: built from numpy, as Python rows would be slow here.
    table = pa.table(
        {
            "item_id": pa.array([f"item-{i:06d}" for i in range(n)]),
            "dim": pa.array(np.full(n, dim, dtype=np.int32)),
            "embedding": pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32)), pa.array(vectors.ravel())
            ).cast(embedding_type),
        }
    )
    ds.write_dataset(
        table,
        str(path),
        format="parquet",
        max_rows_per_file=1_000,
        max_rows_per_group=250,
        min_rows_per_group=250,
        basename_template="part-{i}.parquet",
    )
    del table
    table_bytes = vectors.nbytes  # the embeddings alone, 51 MB

    def peak_arrow_memory(how: str) -> tuple[int, int, int]:
        # A fresh interpreter: nothing but the reader allocates Arrow memory there.
        out = subprocess.run(
            [sys.executable, "-c", MEASURE, str(path), how], check=True, capture_output=True, text=True, timeout=300
        ).stdout.split()
        return int(out[0]), int(out[1]), int(out[2])

    peak, rows, batches = peak_arrow_memory("stream")
    assert rows == n and batches == -(-n // 256)
    # The same measure sees a full load (so it would catch a reader that does one) ...
    full_peak, full_rows, _ = peak_arrow_memory("full")
    assert full_rows == n and full_peak >= table_bytes
    # ... while the stream holds a few row groups (each 250 x 128 x 4 = 128 kB) of a few files
    # (2-6 MB measured, depending on how the scan threads run).
    assert peak < table_bytes / 4, f"peak Arrow memory {peak} bytes for a {table_bytes}-byte table"


def test_dict_elements_fill_nulls_convert_timestamps_and_drop_the_remainder(tmp_path):
    path = tmp_path / "embeddings"
    rows = embedding_rows(100, 4)
    write_table(path, rows, rows_per_file=100, rows_per_group=30)
    columns = ["item_id", "width", "source_version", "dim", "embedded_at", "embedding"]

    dataset = readers.embeddings_dataset(str(path), batch_size=32, columns=columns, drop_remainder=True)
    assert dataset.element_spec["embedding"].shape.as_list() == [32, 4]
    batches = list(dataset.as_numpy_iterator())

    assert len(batches) == 3  # 100 // 32: the last 4 rows are dropped
    assert all(set(b) == set(columns) for b in batches)
    first = batches[0]
    assert first["width"].dtype == np.int32 and first["dim"].tolist() == [4] * 32
    assert first["width"][0] == -1 and first["width"][1] == 201  # row 0 has no image size
    assert first["source_version"][0] == b"" and first["source_version"][1] == b"101-1"
    micros = int((EPOCH - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)).total_seconds() * 1_000_000)
    assert first["embedded_at"].tolist() == [micros + i * 1_000_000 for i in range(32)]


def test_reads_an_embeddings_table_from_s3(tmp_path, s3, bucket, s3_endpoint):
    local = tmp_path / "embeddings"
    write_table(local, embedding_rows(500, 8, seed=7), rows_per_file=200, rows_per_group=100)
    upload_dir(s3, bucket, local, "tables/embeddings/")

    batches = list(
        readers.iter_batches(f"s3://{bucket}/tables/embeddings", batch_size=100, s3=S3Config(endpoint_url=s3_endpoint))
    )
    assert [len(b["item_id"]) for b in batches] == [100] * 5
    assert_same_embeddings(
        np.concatenate([b["item_id"] for b in batches]), np.concatenate([b["embedding"] for b in batches]), local
    )


def test_a_table_mixing_embedding_lengths_names_the_first_bad_item(tmp_path):
    path = tmp_path / "embeddings"
    path.mkdir()
    for name, rows in (("part-0.parquet", embedding_rows(10, 8)), ("part-1.parquet", embedding_rows(10, 4, start=10))):
        pq.write_table(pa.Table.from_pylist(rows, schema=schemas.arrow_schema(schemas.EMBEDDINGS)), str(path / name))

    with pytest.raises(SchemaMismatchError, match=r"item 'item-000010' has an embedding of length 4.*8"):
        list(readers.iter_batches(str(path), batch_size=6))


def test_a_missing_table_or_column_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="table not found"):
        readers.embeddings_dataset(str(tmp_path / "nowhere"))

    neighbours = tmp_path / "neighbours"
    neighbours.mkdir()
    pq.write_table(
        pa.table({"item_id": ["a"], "rank": [1], "neighbour_id": ["b"], "score": [0.5]}),
        str(neighbours / "part-0.parquet"),
    )
    with pytest.raises(InputError, match="no column 'embedding'.*is it an embeddings table"):
        readers.embeddings_dataset(str(neighbours))
    with pytest.raises(ValueError, match="'colour'.*the embeddings table has item_id"):
        readers.embeddings_dataset(str(neighbours), columns=["item_id", "colour"])


def test_the_embedding_length_comes_from_one_row_group_then_the_table_streams(tmp_path, monkeypatch):
    path = tmp_path / "embeddings"
    write_table(path, embedding_rows(1000, 8), rows_per_file=200, rows_per_group=50)
    reads = record_reads(monkeypatch)
    batches = list(readers.iter_batches(str(path), batch_size=100))
    assert sum(len(b["item_id"]) for b in batches) == 1000
    # The first row's dim: one row group of one file, that column only; then one streamed scan.
    assert reads[0] == {"columns": ["dim"], "groups": [("embeddings/part-0.parquet", 0)]}
    assert len(reads) == 2 and reads[1]["columns"] == ["item_id", "embedding"]


def test_petastorm_reader_without_petastorm_says_how_to_get_it(tmp_path, monkeypatch):
    # Simulates the main environment, where petastorm cannot import (it needs pyarrow<=14).
    monkeypatch.setitem(__import__("sys").modules, "petastorm", None)
    with pytest.raises(ImportError, match=r"petastorm is not importable.*constraints-compat\.txt"):
        readers.petastorm_reader(str(tmp_path))
