"""The rule codes of every item (lookalike.neighbours.rules): neighbours.same and
neighbours.exclude_same from the attributes table, hide_duplicates from the duplicates table's
group_id, each value hashed in Spark and attached to the embeddings as one array<bigint>
column ``codes`` that travels with the vector through ordering, chunks and IVF routing."""

from __future__ import annotations

from lookalike.config import NeighboursConfig
from lookalike.neighbours import rules

SAMPLE_IDS = 5
# hide_duplicates scores each list this much deeper than k at most (see ``depth``).
HIDE_MAX_EXTRA = 200


def layout_for(settings: NeighboursConfig) -> rules.Layout:
    width = sum(1 for on in (settings.same, settings.exclude_same, settings.hide_duplicates) if on)
    return rules.Layout(same=settings.same is not None, width=width)


def _numbered(frame, column: str, name: str):
    """(item_id, ``name`` long): a 64-bit hash of each value of ``column`` (as a string, so 1 and
    "1" are one value); NULL stays NULL. A hash, not a dense number, so that a value keeps its code
    from run to run and an item's fingerprint (neighbours.incremental) changes only when its own
    value does; two values sharing a hash would take 2**32 distinct values to be likely at all."""
    from pyspark.sql import functions as F

    value = F.col(column).cast("string")
    code = F.xxhash64(value)
    code = F.when(code == rules.NULL, F.lit(rules.NULL - 1).cast("long")).otherwise(code)
    return frame.select("item_id", F.when(value.isNotNull(), code).alias(name))


def attach(spark, embeddings, settings: NeighboursConfig, attributes=None, duplicates=None):
    """``embeddings`` with the ``codes`` column of ``layout_for(settings)``: NULL (-1) where an
    item has no attributes row, no value, or no near-duplicate group."""
    from pyspark.sql import functions as F

    parts = []
    if settings.same:
        parts.append(_numbered(attributes, settings.same, "code_same"))
    if settings.exclude_same:
        parts.append(_numbered(attributes, settings.exclude_same, "code_exclude"))
    if settings.hide_duplicates:
        groups = duplicates.select(F.col("item_id").cast("string").alias("item_id"), "group_id")
        parts.append(_numbered(groups, "group_id", "code_group"))
    if not parts:
        return embeddings
    names = [c for part in parts for c in part.columns if c != "item_id"]
    joined = embeddings
    for part in parts:
        joined = joined.join(part, "item_id", "left")
    codes = F.array(*[F.coalesce(F.col(n), F.lit(rules.NULL).cast("long")) for n in names])
    return joined.withColumn("codes", codes).drop(*names)


def depth(settings: NeighboursConfig, largest_group: int) -> int:
    """Neighbours scored per item before hide_duplicates keeps one per group and cuts to k.

    A near-duplicate group of s members can push at most s - 1 hidden members ahead of any kept
    one, so k * (largest group - 1) extra always suffice for a full list; the extra is capped at
    HIDE_MAX_EXTRA. Whatever the depth, each list is exactly the start of the rule's list (the
    rule applied to the best ``depth`` neighbours drops nothing it would keep); it can only come
    out shorter than k when more than the extra members were hidden."""
    if not settings.hide_duplicates:
        return settings.k
    return settings.k + min(settings.k * max(largest_group - 1, 0), HIDE_MAX_EXTRA)


def counts(spark, ordered, settings: NeighboursConfig, attributes, attributes_path: str | None, duplicates) -> dict:
    """The summary's counts for the rules: items without a group value, attribute ids the
    embeddings do not have (a few sampled), items without an attributes row."""
    from pyspark.sql import functions as F

    out: dict = {}
    valid = ordered.filter("valid")
    if attributes is not None:
        known = ordered.select("item_id")
        unknown = attributes.select("item_id").join(known, "item_id", "left_anti")
        out["attributes"] = attributes_path
        out["attributes_rows"] = attributes.count()
        out["attributes_unknown"] = unknown.count()
        out["attributes_unknown_sample"] = [r.item_id for r in unknown.limit(SAMPLE_IDS).collect()]
        out["items_without_attributes"] = valid.join(attributes.select("item_id"), "item_id", "left_anti").count()
    if settings.same:
        out["same"] = settings.same
        out["items_without_group"] = valid.filter(F.col("codes")[0] == rules.NULL).count()
        out["groups"] = valid.filter(F.col("codes")[0] != rules.NULL).select(F.col("codes")[0]).distinct().count()
    if settings.exclude_same:
        out["exclude_same"] = settings.exclude_same
    if settings.hide_duplicates:
        largest = duplicates.agg(F.max("group_size").alias("m")).collect()[0].m or 0
        out["hide_duplicates"] = {
            "groups": duplicates.select("group_id").distinct().count(),
            "largest_group": int(largest),
            "depth": depth(settings, int(largest)),
        }
    return out
