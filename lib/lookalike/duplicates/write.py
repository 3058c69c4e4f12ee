"""The duplicates table: one DUPLICATES row per member of a group (connected component of two or
more items), sorted by item_id, written by the tasks themselves with the exact Arrow schema."""

from __future__ import annotations

import hashlib

from lookalike import schemas
from lookalike.config import S3Config
from lookalike.io.sparkparquet import write_sorted

# Hex digits of sha1(representative) that make a group_id: 64 bits, no collision in practice.
GROUP_ID_HEX = 16
# Rows per output file: the table holds only the near-duplicates, a few small files at most.
ROWS_PER_FILE = 2_000_000
ROW_GROUP_ROWS = 65536


def group_id(representative: str) -> str:
    """The group_id of the group whose smallest item id is ``representative``: a function of that
    id alone, so an unchanged group keeps its id across runs (the Spark side computes the same)."""
    return hashlib.sha1(representative.encode("utf-8")).hexdigest()[:GROUP_ID_HEX]


def members(pairs, labels):
    """DUPLICATES rows from PAIRS rows and each item's component ``labels`` (v, label), and the
    group sizes (label, group_size), for the summary."""
    from pyspark.sql import functions as F

    ends = pairs.select(F.col("i").alias("v"), F.col("item_i").alias("item_id"), "score").union(
        pairs.select(F.col("j").alias("v"), F.col("item_j").alias("item_id"), "score")
    )
    items = ends.groupBy("v", "item_id").agg(F.max("score").alias("max_score"))
    sizes = labels.groupBy("label").agg(F.count(F.lit(1)).cast("int").alias("group_size"))
    representatives = items.select(F.col("v").alias("label"), F.col("item_id").alias("representative"))
    rows = (
        labels.join(items, "v")
        .join(sizes, "label")
        .join(representatives, "label")
        .select(
            F.substring(F.sha1("representative"), 1, GROUP_ID_HEX).alias("group_id"),
            "item_id",
            "group_size",
            "representative",
            F.col("max_score").cast("float"),
        )
    )
    return rows, sizes


def write_members(rows, n_rows: int, directory: str, s3: S3Config | None) -> list[dict]:
    """DUPLICATES rows -> Parquet files under ``directory`` covering disjoint, sorted item_id
    ranges; returns one WRITTEN row per file. With no rows, one empty file keeps the table readable."""
    return write_sorted(
        rows, n_rows, directory, schemas.arrow_schema(schemas.DUPLICATES), s3, ROWS_PER_FILE, ROW_GROUP_ROWS
    )
