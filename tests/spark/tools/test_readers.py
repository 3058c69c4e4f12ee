"""lookalike.tools.readers on an embeddings table written by Spark (its layout: _SUCCESS, .crc, part
files). The reader itself without Spark: tests/unit/tools/test_readers.py."""

from __future__ import annotations

from lookalike import schemas
from lookalike.tools import readers
from tests.support.embed_rows import assert_same_embeddings, by_item, embedding_rows


def test_reads_an_embeddings_table_written_by_spark(spark, tmp_path):
    rows = embedding_rows(50, 12, seed=5)
    path = tmp_path / "spark-embeddings"
    frame = spark.createDataFrame(rows, schema=schemas.spark_schema(schemas.EMBEDDINGS))
    frame.repartition(3).write.parquet(str(path))  # Spark's layout: _SUCCESS, .crc, part files

    ids, embeddings = [], []
    for batch_ids, batch_embeddings in readers.embeddings_dataset(f"file://{path}", batch_size=16):
        ids.extend(batch_ids.numpy())
        embeddings.extend(batch_embeddings.numpy())
    assert_same_embeddings(ids, embeddings, path)
    assert by_item(ids, embeddings).keys() == {r["item_id"] for r in rows}
