"""``lookalike evaluate --interactions HELD_OUT [--train TRAIN]``: how many held-out
co-interactions a neighbour table (any: neighbours, hybrid) recommends.

Definitions (docs/hybrid.md, "Evaluation"):

* a **co-interaction** of items a and b: one user interacted with both;
* it is **held out** when at least one of those two interactions is in HELD_OUT (the other may be
  in TRAIN, the interactions the table was computed from): what the table could not have seen;
* R(a): the items with a held-out co-interaction with a. Every item with a non-empty R(a) is a query;
* recall@k(a) = |top-k(a) ∩ R(a)| / min(k, |R(a)|), so that a perfect list scores 1; a query
  without a list in the table scores 0;
* hit rate@k: the share of queries with at least one of R(a) in their top k;
* **cold** queries: items that have no interaction in TRAIN (with no --train: not told apart).

Macro averages over queries, for all, warm and cold queries.
"""

from __future__ import annotations

import numpy as np

from lookalike.config import S3Config
from lookalike.errors import InputError

CSV_SUFFIXES = (".csv", ".csv.gz", ".txt")


def read_pairs(path: str, s3: S3Config | None = None):
    """(user_id, item_id) of an interactions table (CSV by name, else Parquet or Iceberg) as a
    pandas DataFrame of strings, one row per pair, rows without both ids left out."""
    import pyarrow.csv as pcsv

    from lookalike.io import arrowfs, tables

    if path.lower().endswith(CSV_SUFFIXES):
        filesystem, where = arrowfs.filesystem(path, s3)
        try:
            with filesystem.open_input_stream(where) as handle:
                table = pcsv.read_csv(
                    handle, convert_options=pcsv.ConvertOptions(column_types={"user_id": "string", "item_id": "string"})
                )
        except FileNotFoundError:
            raise InputError(f"interactions table not found: {path}") from None
        missing = [c for c in ("user_id", "item_id") if c not in table.column_names]
        if missing:
            raise InputError(f"{path} has no column {', '.join(missing)}; an interactions table needs user_id, item_id")
        table = table.select(["user_id", "item_id"])
    else:
        table = tables.read_table(path, ["user_id", "item_id"], s3)
    frame = table.to_pandas().dropna().astype(str)
    return frame.drop_duplicates(ignore_index=True)


def relevant_pairs(held, train=None):
    """(items, item codes a, item codes b): every held-out co-interaction, both ways, once."""
    import pandas as pd

    held = held.assign(held=True)
    if train is not None:
        train = train.merge(held[["user_id", "item_id"]], how="left", indicator=True)
        train = train[train["_merge"] == "left_only"].drop(columns="_merge").assign(held=False)
        every = pd.concat([held, train], ignore_index=True)
    else:
        every = held
    items = pd.Index(pd.unique(every["item_id"]))
    every = every.assign(code=items.get_indexer(every["item_id"]))
    joined = every[every["held"]][["user_id", "code"]].merge(every[["user_id", "code"]], on="user_id")
    a, b = joined["code_x"].to_numpy(np.int64), joined["code_y"].to_numpy(np.int64)
    keep = a != b
    a, b = a[keep], b[keep]
    n = len(items)
    keys = np.unique(np.concatenate([a * n + b, b * n + a]))
    return items, keys // n, keys % n


class CoTally:
    """The figures of a neighbour table's lists against the held-out co-interactions."""

    def __init__(self, held, k: int, train=None):
        if k < 1:
            raise InputError(f"k must be a positive integer, got {k}")
        self.k = k
        self.items, a, b = relevant_pairs(held, train)
        n = len(self.items)
        self.keys = a * n + b  # sorted
        self.relevant = np.bincount(a, minlength=n)
        self.hits = np.zeros(n, np.int64)
        self.listed = np.zeros(n, bool)
        self.cold = None
        if train is not None:
            self.cold = ~self.items.isin(train["item_id"].unique())

    def add(self, query_ids, sizes, neighbour_ids) -> None:
        """Ranked lists, as tools.evaluate.Tally.add takes them (at most k each, self left out)."""
        n = len(self.items)
        queries = self.items.get_indexer(_strings(query_ids))
        owner = np.repeat(queries, np.asarray(sizes, np.int64))
        neighbours = self.items.get_indexer(_strings(neighbour_ids))
        known = (owner >= 0) & (neighbours >= 0)
        keys = owner[known] * n + neighbours[known]
        at = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        hit = self.keys[at] == keys if len(self.keys) else np.zeros(len(keys), bool)
        np.add.at(self.hits, owner[known][hit], 1)
        self.listed[queries[queries >= 0]] = True

    def result(self) -> dict:
        queries = self.relevant > 0
        if not queries.any():
            raise InputError("the held-out interactions hold no co-interaction: no user has two items")
        recall = self.hits / np.maximum(np.minimum(self.relevant, self.k), 1)
        groups = {"all": queries}
        if self.cold is not None:
            groups["warm"] = queries & ~self.cold
            groups["cold"] = queries & self.cold
        out: dict = {"k": self.k, "relevant_pairs": int(len(self.keys))}
        for name, mask in groups.items():
            count = int(mask.sum())
            out[name] = {
                "queries": count,
                "recall_at_k": float(recall[mask].mean()) if count else None,
                "hit_rate_at_k": float((self.hits[mask] > 0).mean()) if count else None,
                "without_list": int((mask & ~self.listed).sum()),
            }
        return out


def _strings(ids) -> np.ndarray:
    if hasattr(ids, "to_numpy"):
        ids = ids.to_numpy(zero_copy_only=False)
    return np.asarray(ids, dtype=object)


def format_table(result: dict) -> str:
    k = result["k"]
    head = f"{'items':<6}  {'queries':>7}  {f'recall@{k}':>10}  {f'hit rate@{k}':>12}  {'no list':>7}"
    lines = [head, "-" * len(head)]
    for name in ("all", "warm", "cold"):
        if name not in result:
            continue
        f = result[name]
        if not f["queries"]:
            lines.append(f"{name:<6}  {0:>7}  {'-':>10}  {'-':>12}  {0:>7}")
            continue
        figures = f"{f['recall_at_k']:>10.3f}  {f['hit_rate_at_k']:>12.3f}"
        lines.append(f"{name:<6}  {f['queries']:>7}  {figures}  {f['without_list']:>7}")
    lines.append(
        f"{result['relevant_pairs']} held-out co-interactions (ordered pairs); recall@{k} = hits / min({k}, relevant)"
    )
    return "\n".join(lines)
