"""Embeddings tables made by hand (rows in the embed job's schema) and the check that a reader
returned exactly their content: shared by the readers tests (tests/unit/tools, tests/spark/tools)
and petastorm's (compat environment). Also the check that two embed runs over the same images
agree (``assert_embeddings_agree``)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from lookalike import schemas
from tests.support.outputs import read_output

EPOCH = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def embedding_rows(n: int, dim: int, seed: int = 0, start: int = 0) -> list[dict]:
    """Rows in the embed job's schema; every 7th item lacks its image size (nullable columns)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return [
        {
            "item_id": f"item-{start + i:06d}",
            "uri": f"file:///images/{start + i}.jpg",
            "source_version": None if i % 7 == 0 else f"{100 + i}-1",
            "source_bytes": 100 + i,
            "width": None if i % 7 == 0 else 200 + i,
            "height": 300,
            "model": "vgg16",
            "weights": "random-init:seed=0",
            "pooling": "avg",
            "dim": dim,
            "embedding": vectors[i].tolist(),
            "model_fingerprint": "f" * 16,
            "run_id": "run-1",
            "embedded_at": EPOCH + dt.timedelta(seconds=i),
        }
        for i in range(n)
    ]


def write_table(path, rows: list[dict], rows_per_file: int, rows_per_group: int) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=schemas.arrow_schema(schemas.EMBEDDINGS))
    ds.write_dataset(
        table,
        str(path),
        format="parquet",
        max_rows_per_file=rows_per_file,
        max_rows_per_group=rows_per_group,
        min_rows_per_group=rows_per_group,
        basename_template="part-{i}.parquet",
    )
    return table


def by_item(item_ids, embeddings) -> dict[str, np.ndarray]:
    return {(i.decode() if isinstance(i, bytes) else i): e for i, e in zip(item_ids, embeddings, strict=False)}


def assert_same_embeddings(got_ids, got_embeddings, path) -> None:
    """What the reader returned equals the Parquet content, row for row and bit for bit."""
    truth = read_output(str(path), columns=["item_id", "embedding"])
    expected = by_item(truth.column("item_id").to_pylist(), truth.column("embedding").to_pylist())
    got = by_item(got_ids, got_embeddings)
    assert len(got_ids) == len(got) == len(expected)
    assert got.keys() == expected.keys()
    for item_id, vector in expected.items():
        np.testing.assert_array_equal(got[item_id], np.asarray(vector, dtype=np.float32))


def assert_embeddings_agree(got, want) -> None:
    """Two runs' embeddings of the same images, in the same row order, agree to float32 round-off.
    Not bit for bit: runs may split the images into other batches, and on some CPUs (AVX2 ones)
    TensorFlow's float32 kernels depend on the batch size (1e-10..4e-9 apart on values ~0.05);
    another image's vector is ~1e-2 away."""
    np.testing.assert_allclose(np.stack(list(got)), np.stack(list(want)), rtol=0, atol=1e-5)
