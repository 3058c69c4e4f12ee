"""The output tables, defined once. README section "Output tables" documents the same columns.

Each schema is a list of (name, type, nullable, description); Spark and Arrow schemas are derived
from it so that the jobs, the readers and the query command cannot drift apart.
"""

from __future__ import annotations

from typing import NamedTuple


class Column(NamedTuple):
    name: str
    type: str  # string | int | long | float | double | boolean | timestamp | array<float> | array<string>
    nullable: bool
    doc: str


EMBEDDINGS = [
    Column("item_id", "string", False, "Item id derived from the key (input.id_regex)."),
    Column("uri", "string", False, "Where the image was read from (s3://..., file:///..., hdfs://...)."),
    Column("source_version", "string", True, "S3 ETag, or size-mtime for files: what incremental runs compare."),
    Column("source_bytes", "long", True, "Size of the image file in bytes."),
    Column("width", "int", True, "Width of the original image in pixels, as shown (after EXIF rotation)."),
    Column("height", "int", True, "Height of the original image in pixels, as shown (after EXIF rotation)."),
    Column("model", "string", False, "The backbone (model.name), e.g. vgg16 or efficientnet_lite0."),
    Column(
        "weights",
        "string",
        False,
        "`imagenet`, `imagenet:CHECKPOINT@md5:MD5` (a packaged checkpoint), `file:NAME@md5:MD5`, "
        "or `random-init:seed=N` (never a real recommendation).",
    ),
    Column("pooling", "string", False, "`avg`, `max` or `flatten`."),
    Column(
        "precision",
        "string",
        True,
        "What the model computed in: `float32`, `bfloat16` or `float16` "
        "(null in tables from before lookalike recorded it).",
    ),
    Column(
        "runtime",
        "string",
        True,
        "What ran the model: `keras` or `openvino` (null in tables from before lookalike recorded it).",
    ),
    Column("dim", "int", False, "Length of the embedding."),
    Column("embedding", "array<float>", False, "The embedding, not normalised."),
    Column("model_fingerprint", "string", False, "Hash of model settings; a change forces a full recompute."),
    Column("run_id", "string", False, "Run that computed this row."),
    Column("embedded_at", "timestamp", False, "When the row was computed (UTC)."),
]

ERRORS = [
    Column("item_id", "string", False, "Item id derived from the key."),
    Column("uri", "string", False, "Where the image was read from."),
    Column("source_version", "string", True, "S3 ETag, or size-mtime for files."),
    Column("error", "string", False, "Kind: not_found, empty, too_large, decode_error, fetch_error, unsupported."),
    Column("message", "string", False, "What went wrong, for a person."),
    Column("run_id", "string", False, "Run that tried this item."),
    Column("failed_at", "timestamp", False, "When it failed (UTC)."),
]

NEIGHBOURS = [
    Column("item_id", "string", False, "The query item."),
    Column("rank", "int", False, "1 = most similar."),
    Column("neighbour_id", "string", False, "A recommended item, never item_id itself."),
    Column("score", "float", False, "Cosine similarity of the two embeddings."),
]

DUPLICATES = [
    Column(
        "group_id",
        "string",
        False,
        "First 16 hex digits of sha1(representative): the same for an unchanged group in every run.",
    ),
    Column(
        "item_id",
        "string",
        False,
        "A member of the group (one row per member; items without a near-duplicate have no row).",
    ),
    Column("group_size", "int", False, "Members of the group, 2 or more."),
    Column("representative", "string", False, "The group's smallest item id."),
    Column("max_score", "float", False, "The item's highest cosine to another member of its group."),
]

# The hybrid job's table: the neighbours' columns, its score the blend of behaviour and pictures.
HYBRID = [
    c if c.name != "score" else c._replace(doc="hybrid.alpha x behaviour cosine + (1 - alpha) x visual cosine.")
    for c in NEIGHBOURS
] + [
    Column(
        "source",
        "string",
        False,
        "What the pair's score comes from: `behaviour` (most of it from co-interaction), `visual` (most "
        "of it from the pictures, or either item has no interactions) or `blend` (docs/hybrid.md).",
    ),
]

TABLES = {"embeddings": EMBEDDINGS, "errors": ERRORS, "neighbours": NEIGHBOURS, "duplicates": DUPLICATES}

# Tables of optional stages, documented in their own page (docs/hybrid.md shows HYBRID).
STAGE_TABLES = {"hybrid": HYBRID}

# neighbours.incremental's own state, beside the published table (docs/scheduled-runs.md): each
# item's list k + reserve deep, and what its item was when the list was made.
NEIGHBOUR_LISTS = [
    Column("item_id", "string", False, "The query item."),
    Column(
        "fingerprint",
        "long",
        False,
        "Hash of the item's normalised vector, rule codes and candidacy: a different value next run "
        "means the item changed.",
    ),
    Column("neighbour_ids", "array<string>", False, "Its best neighbours, best first (may be empty)."),
    Column("scores", "array<float>", False, "Their cosines."),
    Column(
        "bound_score",
        "float",
        True,
        "Null when the list holds every allowed candidate; else a missing candidate ranks after "
        "(bound_score, bound_id).",
    ),
    Column("bound_id", "string", True, "See bound_score."),
]

# duplicates.incremental's own state, beside the published table: every valid item with its
# fingerprint (as in NEIGHBOUR_LISTS) and its pairs with items of a larger id (each pair once).
DUPLICATE_PAIRS = [
    Column("item_id", "string", False, "An item."),
    Column("fingerprint", "long", False, "Hash of the item's normalised vector: a different value means it changed."),
    Column("partner_ids", "array<string>", False, "Items of a larger id with cosine >= min_score (may be empty)."),
    Column("scores", "array<float>", False, "Their cosines."),
]

# neighbours.incremental with method ivf: the lists' centroids, kept so that later runs put new
# items in the same lists (and reported on when they drift).
IVF_CENTROIDS = [
    Column("list", "int", False, "The list's number (0 .. nlist - 1)."),
    Column("centroid", "array<float>", False, "Its unit centroid (spherical k-means)."),
]

# Tables lookalike writes for itself; committed like the others, not part of the product's schema.
INTERNAL_TABLES = {
    "neighbours_lists": NEIGHBOUR_LISTS,
    "neighbours_centroids": IVF_CENTROIDS,
    "duplicates_pairs": DUPLICATE_PAIRS,
}


def spark_schema(columns: list[Column]):
    from pyspark.sql import types as T

    simple = {
        "string": T.StringType(),
        "int": T.IntegerType(),
        "long": T.LongType(),
        "float": T.FloatType(),
        "double": T.DoubleType(),
        "boolean": T.BooleanType(),
        "timestamp": T.TimestampType(),
        "array<float>": T.ArrayType(T.FloatType(), False),
        "array<string>": T.ArrayType(T.StringType(), False),
    }
    return T.StructType([T.StructField(c.name, simple[c.type], c.nullable) for c in columns])


def arrow_schema(columns: list[Column]):
    import pyarrow as pa

    simple = {
        "string": pa.string(),
        "int": pa.int32(),
        "long": pa.int64(),
        "float": pa.float32(),
        "double": pa.float64(),
        "boolean": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        # Spark writes Parquet lists with non-null "element" items; match it so schemas compare equal.
        "array<float>": pa.list_(pa.field("element", pa.float32(), nullable=False)),
        "array<string>": pa.list_(pa.field("element", pa.string(), nullable=False)),
    }
    return pa.schema([pa.field(c.name, simple[c.type], c.nullable) for c in columns])


def names(columns: list[Column]) -> list[str]:
    return [c.name for c in columns]


def markdown(columns: list[Column]) -> str:
    """The README's table for one schema (tests/test_docs.py checks that the README shows it)."""
    rows = ["| column | type | description |", "| --- | --- | --- |"]
    rows += [
        f"| `{c.name}` | {c.type}{'' if c.nullable else ' not null'} | {c.doc.replace('|', chr(92) + '|')} |"
        for c in columns
    ]
    return "\n".join(rows)
