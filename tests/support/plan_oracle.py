"""The incremental plan as it was computed before it moved to Spark: pandas on the driver. Kept as
the oracle the Spark plan is checked against."""

from __future__ import annotations

import pandas as pd


def plan(items: pd.DataFrame, rows, failed_ids, fingerprint: str, weights: str) -> dict:
    """``rows``: the previous table's key columns (None: no previous table); ``failed_ids``: the
    previous errors table's ids (None: none). Returns to_embed ids, reused ids, counts, carry_over."""
    if rows is None:
        return _full(items)
    failed_ids = frozenset(failed_ids or ())
    same_model = (rows["model_fingerprint"] == fingerprint) & (rows["weights"] == weights)
    if len(rows) and not same_model.any():
        return _full(items, changed_model=True)
    duplicated = rows["item_id"].duplicated(keep=False)
    usable = rows[same_model & ~duplicated]
    merged = items.merge(
        usable[["item_id", "uri", "source_version"]],
        on="item_id",
        how="left",
        suffixes=("", "_previous"),
        indicator=True,
    )
    known = merged["_merge"] == "both"
    same = (
        known
        & (merged["uri"] == merged["uri_previous"])
        & merged["source_version"].notna()
        & (merged["source_version"] == merged["source_version_previous"])
    )
    reused = set(merged.loc[same, "item_id"])
    listed_ids = set(items["item_id"])
    previous_ids = set(rows["item_id"])
    to_embed = items[~items["item_id"].isin(reused)]
    unknown = to_embed[~to_embed["item_id"].isin(previous_ids)]["item_id"]
    retried = int(unknown.isin(failed_ids).sum())
    counts = {
        "new": len(unknown) - retried,
        "changed": int((~to_embed["item_id"].isin(unknown)).sum()),
        "retried": retried,
        "reused": len(reused),
        "deleted": len(previous_ids - listed_ids),
        "stale_errors": len(failed_ids - listed_ids),
    }
    return {
        "to_embed": sorted(to_embed["item_id"]),
        "reused": sorted(reused),
        "counts": counts,
        "carry_over": True,
        "changed_model": False,
    }


def _full(items: pd.DataFrame, changed_model: bool = False) -> dict:
    counts = {"new": len(items), "changed": 0, "retried": 0, "reused": 0, "deleted": 0, "stale_errors": 0}
    return {
        "to_embed": sorted(items["item_id"]),
        "reused": [],
        "counts": counts,
        "carry_over": False,
        "changed_model": changed_model,
    }
