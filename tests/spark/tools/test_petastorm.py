"""lookalike.readers' petastorm reader and Spark converter, against tables written by Spark.

petastorm 0.13.1 imports only with pyarrow<=14.0.2 and numpy<2, so these tests run in the pinned
second environment (`make test-compat`, which sets LOOKALIKE_COMPAT=1; CI runs it). In the main
environment the module is skipped, saying so; under `make test-compat` a failing import fails.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("LOOKALIKE_COMPAT") != "1":
    try:
        import petastorm  # noqa: F401
    except ImportError as exc:
        pytest.skip(
            f"petastorm cannot be imported in this environment ({exc}); it needs "
            f"pyarrow<=14.0.2 and numpy<2, so these tests run under `make test-compat`",
            allow_module_level=True,
        )

from petastorm.tf_utils import make_petastorm_dataset

from lookalike import schemas
from lookalike.tools import readers
from tests.support.embed_rows import assert_same_embeddings, embedding_rows

# petastorm 0.13.1 uses pyarrow's legacy APIs and distutils; their deprecation notices are not ours.
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Tensorflow will convert all unicode strings"),
    pytest.mark.slow,
]  # a petastorm reader and converter over Spark (make test-fast leaves it out)


@pytest.fixture
def spark_table(spark, tmp_path):
    """An embeddings table as the embed job writes it: Spark's Parquet layout, 3 part files."""
    path = tmp_path / "embeddings"
    frame = spark.createDataFrame(embedding_rows(60, 12, seed=11), schema=schemas.spark_schema(schemas.EMBEDDINGS))
    frame.repartition(3).write.parquet(str(path))
    return path


def test_petastorm_batch_reader_returns_the_embeddings_as_matrices(spark_table):
    with readers.petastorm_reader(str(spark_table), columns=["item_id", "dim", "embedding"]) as reader:
        batches = list(reader)

    assert len(batches) == 3  # one per row group: one per Spark part file here
    assert all(b.embedding.shape == (len(b.item_id), 12) for b in batches)
    assert all(set(b.dim) == {12} for b in batches)
    assert_same_embeddings(
        np.concatenate([b.item_id for b in batches]), np.concatenate([b.embedding for b in batches]), spark_table
    )


def test_petastorm_reader_as_tf_dataset(spark_table):
    with readers.petastorm_reader(f"file://{spark_table}") as reader:
        dataset = make_petastorm_dataset(reader)
        batches = [(b.item_id.numpy(), b.embedding.numpy()) for b in dataset]

    assert all(emb.dtype == np.float32 and emb.shape[1] == 12 for _, emb in batches)
    assert_same_embeddings(
        np.concatenate([ids for ids, _ in batches]), np.concatenate([emb for _, emb in batches]), spark_table
    )


def test_petastorm_spark_converter_makes_a_tf_dataset_from_a_dataframe(spark, spark_table, tmp_path):
    frame = spark.read.parquet(str(spark_table)).select("item_id", "embedding")
    converter = readers.petastorm_converter(frame, str(tmp_path / "petastorm-cache"))
    try:
        assert len(converter) == 60
        with converter.make_tf_dataset(batch_size=25, num_epochs=1, workers_count=2) as dataset:
            batches = [(b.item_id.numpy(), b.embedding.numpy()) for b in dataset]
    finally:
        converter.delete()

    assert [len(ids) for ids, _ in batches] == [25, 25, 10]
    assert_same_embeddings(
        np.concatenate([ids for ids, _ in batches]), np.concatenate([emb for _, emb in batches]), spark_table
    )
