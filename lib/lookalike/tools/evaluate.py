"""``lookalike evaluate``: how often the neighbours share the query's label.

Definitions (docs/querying.md, "Evaluation against labels"), for one query item q with label L and its top-k list:

* relevant items: the other items of the catalogue with label L (``n_rel`` of them, q excluded);
  the catalogue is every labelled item in the neighbour table (or in --embeddings when given);
* ``rel_i`` = 1 when the neighbour at rank i has label L; unlabelled neighbours count as 0;
* precision@k = sum(rel_i, i <= k) / k  (a list shorter than k is not rewarded);
* recall@k    = sum(rel_i, i <= k) / n_rel;
* AP@k        = sum(P@i * rel_i, i <= k) / min(k, n_rel), so a perfect list scores 1.0;
* chance      = n_rel / (N - 1), the expected precision@k of a random ranking of the other N - 1
  items.

Every figure is a macro average over queries, overall and per label. Queries without a label, or
whose label has no other item, have no defined recall or AP and are left out (and counted).

Every list counts, so the whole neighbour table is read, but a row group at a time and only its
item_id, rank and neighbour_id: memory holds the labels, a few numbers per query and one row
group, not the table.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from lookalike.errors import InputError, OutputError

log = logging.getLogger(__name__)

METRICS = ("precision_at_k", "recall_at_k", "map_at_k", "chance")


# The definitions, for one list; Tally computes the same over many lists at once (tests check both).
def precision_at_k(rel: Sequence[int], k: int) -> float:
    return sum(rel[:k]) / k


def recall_at_k(rel: Sequence[int], k: int, n_relevant: int) -> float:
    return sum(rel[:k]) / n_relevant


def average_precision_at_k(rel: Sequence[int], k: int, n_relevant: int) -> float:
    hits = 0
    total = 0.0
    for i, r in enumerate(rel[:k], start=1):
        if r:
            hits += 1
            total += hits / i
    return total / min(k, n_relevant)


class Tally:
    """The figures of many ranked lists, fed in pieces (a table is read a few row groups at a time).

    N and each label's size, hence recall, AP and chance, are known only once the whole catalogue
    has been seen, so per label only sums are kept: counts and hits exactly, and each query's AP
    numerator, summed with ``math.fsum`` at the end, so the figures do not depend on the order or
    the pieces in which the lists arrive.
    """

    def __init__(self, labels: Mapping[str, str], k: int, catalogue_from_lists: bool = True):
        import pandas as pd

        if k < 1:
            raise InputError(f"k must be a positive integer, got {k}")
        self.k = k
        self.label_names = sorted(set(labels.values()))
        code = {name: i for i, name in enumerate(self.label_names)}
        self.index = pd.Index(list(labels), dtype=object)
        self.codes = np.fromiter((code[v] for v in labels.values()), np.int64, len(labels))
        self.in_catalogue = np.zeros(len(labels), bool)
        self.from_lists = catalogue_from_lists
        size = len(self.label_names)
        self.queries = np.zeros(size, np.int64)
        self.hits = np.zeros(size, np.int64)
        self.unlabelled = np.zeros(size, np.int64)  # neighbours without a label, per query label
        self.ap_parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.lists = 0
        self.unlabelled_queries = 0

    def name(self, ids) -> None:
        """Items of the catalogue (ids: any sequence or pyarrow array of strings)."""
        found = self._positions(ids)
        self.in_catalogue[found[found >= 0]] = True

    def add(self, query_ids, sizes, neighbour_ids) -> None:
        """Ranked lists: query_ids[i] has the next sizes[i] neighbour_ids, best first, without
        itself and at most k. With ``catalogue_from_lists`` they also name the catalogue."""
        sizes = np.asarray(sizes, np.int64)
        if self.from_lists:
            self.name(query_ids)
            self.name(neighbour_ids)
        query = self._labels(query_ids)
        owner = np.repeat(query, sizes)
        neighbour = self._labels(neighbour_ids)
        rel = (neighbour == owner) & (owner >= 0)
        starts = np.cumsum(sizes) - sizes
        position = np.arange(len(rel)) - np.repeat(starts, sizes) + 1
        cumulative = np.concatenate([[0], np.cumsum(rel)])
        hits_before = np.repeat(cumulative[starts], sizes)
        terms = np.where(rel, (cumulative[1:] - hits_before) / position, 0.0)
        ap = np.zeros(len(sizes))
        filled = sizes > 0
        if filled.any():
            ap[filled] = np.add.reduceat(terms, starts[filled])
        labelled = query >= 0
        self.lists += len(sizes)
        self.unlabelled_queries += int((~labelled).sum())
        size = len(self.label_names)
        self.queries += np.bincount(query[labelled], minlength=size)
        self.hits += np.bincount(
            query[labelled], (cumulative[starts + sizes] - cumulative[starts])[labelled], minlength=size
        ).astype(np.int64)
        self.unlabelled += np.bincount(owner[(neighbour < 0) & (owner >= 0)], minlength=size)
        self.ap_parts.append((query[labelled], ap[labelled]))

    def result(self) -> dict:
        k = self.k
        size_of = np.bincount(self.codes[self.in_catalogue], minlength=len(self.label_names))
        n_items = int(self.in_catalogue.sum())
        codes = np.concatenate([c for c, _ in self.ap_parts] or [np.zeros(0, np.int64)])
        values = np.concatenate([v for _, v in self.ap_parts] or [np.zeros(0)])
        order = np.argsort(codes, kind="stable")
        ap_by_label = np.split(values[order], np.searchsorted(codes[order], np.arange(1, len(self.label_names))))

        per_label, no_relevant, unlabelled_neighbours = {}, 0, 0
        for code, label in enumerate(self.label_names):
            queries = int(self.queries[code])
            if not queries:
                continue
            n_relevant = int(size_of[code]) - 1
            if n_relevant == 0:
                no_relevant += queries
                continue
            unlabelled_neighbours += int(self.unlabelled[code])
            per_label[label] = {
                "queries": queries,
                "items": int(size_of[code]),
                # Sums over the label's queries, divided by its query count below.
                "precision_at_k": int(self.hits[code]) / k,
                "recall_at_k": int(self.hits[code]) / n_relevant,
                "map_at_k": math.fsum(ap_by_label[code]) / min(k, n_relevant),
                "chance": queries * n_relevant / (n_items - 1),
            }
        if not per_label:
            raise InputError(
                f"no query can be evaluated: {self.lists} queries, {self.unlabelled_queries} without a label, "
                f"{no_relevant} whose label has no other item. Do the label ids match the item ids "
                f"(see --id-regex)?"
            )
        total = sum(figures["queries"] for figures in per_label.values())
        overall = {name: math.fsum(figures[name] for figures in per_label.values()) / total for name in METRICS}
        for figures in per_label.values():
            for name in METRICS:
                figures[name] /= figures["queries"]
        return {
            "k": k,
            "queries": total,
            "items": n_items,
            "label_count": int((size_of > 0).sum()),
            **overall,
            "per_label": per_label,
            "skipped": {"unlabelled_queries": self.unlabelled_queries, "no_other_item_with_label": no_relevant},
            "unlabelled_neighbours": unlabelled_neighbours,
        }

    def _positions(self, ids) -> np.ndarray:
        if hasattr(ids, "to_numpy"):
            ids = ids.to_numpy(zero_copy_only=False)
        return self.index.get_indexer(np.asarray(ids, dtype=object)) if len(ids) else np.zeros(0, np.int64)

    def _labels(self, ids) -> np.ndarray:
        """Each id's label code, -1 for an id without a label or outside the catalogue."""
        found = self._positions(ids)
        known = found >= 0
        if not self.from_lists:
            known[known] = self.in_catalogue[found[known]]
        return np.where(known, self.codes[np.where(known, found, 0)] if len(self.codes) else -1, -1)


def evaluate(
    rankings: Mapping[str, Sequence], labels: Mapping[str, str], k: int, universe: Iterable[str] | None = None
) -> dict:
    """Metrics of ``rankings`` ({item: [neighbour_id or (neighbour_id, score), ...] best first}).

    ``universe``: the items a ranking could draw from (default: every item named in
    ``rankings``); only its labelled items count as relevant and as N for the chance level.
    """
    tally = Tally(labels, k, catalogue_from_lists=universe is None)
    if universe is not None:
        tally.name(list(universe))
    query_ids, sizes, neighbour_ids, named = [], [], [], []
    for item, ranked in rankings.items():
        entries = [_neighbour_id(n) for n in ranked]
        named.extend(entries)  # every entry names a catalogue item, also those beyond k
        kept = [n for n in entries if n != item][:k]
        query_ids.append(item)
        sizes.append(len(kept))
        neighbour_ids.extend(kept)
    if universe is None:
        tally.name(named)
    tally.add(query_ids, sizes, neighbour_ids)
    return tally.result()


def _neighbour_id(entry) -> str:
    return entry[0] if isinstance(entry, (tuple, list)) else entry


def format_table(result: dict) -> str:
    k = result["k"]
    width = max([len("label"), len("all")] + [len(label) for label in result["per_label"]])
    head = (
        f"{'label':<{width}}  {'queries':>7}  "
        f"{f'precision@{k}':>12}  {f'recall@{k}':>10}  {f'mAP@{k}':>8}  {'chance':>7}"
    )
    lines = [head, "-" * len(head)]

    def line(name: str, figures: dict) -> str:
        return (
            f"{name:<{width}}  {figures['queries']:>7}  {figures['precision_at_k']:>12.3f}  "
            f"{figures['recall_at_k']:>10.3f}  {figures['map_at_k']:>8.3f}  {figures['chance']:>7.3f}"
        )

    lines += [line(label, figures) for label, figures in result["per_label"].items()]
    lines += ["-" * len(head), line("all", result)]
    skipped = result["skipped"]
    notes = [
        f"{result['queries']} queries over {result['items']} labelled items in {result['label_count']} labels; "
        f"chance = expected precision@{k} of a random ranking"
    ]
    if skipped["unlabelled_queries"] or skipped["no_other_item_with_label"]:
        notes.append(
            f"left out: {skipped['unlabelled_queries']} queries without a label, "
            f"{skipped['no_other_item_with_label']} whose label has no other item"
        )
    if result["unlabelled_neighbours"]:
        notes.append(f"{result['unlabelled_neighbours']} neighbours had no label and counted as not relevant")
    return "\n".join(lines + notes)


def add_arguments(parser) -> None:
    parser.add_argument("--neighbours", required=True, metavar="PATH", help="the neighbour table (Parquet)")
    parser.add_argument(
        "--labels",
        metavar="CSV",
        help="CSV with columns item_id,label or path,label (path: relative to input.uri); or --interactions",
    )
    parser.add_argument(
        "--interactions",
        metavar="HELD_OUT",
        help="instead of labels: held-out interactions (user_id, item_id; Parquet, CSV or Iceberg): recall@k and "
        "hit rate of their co-interactions (docs/hybrid.md)",
    )
    parser.add_argument(
        "--train",
        metavar="TABLE",
        help="with --interactions: the interactions the table was computed from; items without any are cold",
    )
    parser.add_argument("-k", type=int, default=10, help="evaluate the top k neighbours (default 10)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument(
        "--embeddings",
        metavar="PATH",
        help="the embeddings table: its items define the catalogue (default: the items named in the neighbour table)",
    )
    parser.add_argument(
        "--id-regex", metavar="REGEX", help="turn label paths into ids with this regex (the embed job's input.id_regex)"
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config, for the S3 settings of s3:// tables")
    parser.add_argument("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint (overrides the config)")


def command(args) -> int:
    from lookalike.io import tables
    from lookalike.tools.cli import load_settings
    from lookalike.tools.labels import load_labels

    if args.k < 1:
        raise InputError(f"-k must be a positive integer, got {args.k}")
    if args.json and os.path.isdir(args.json):
        raise InputError(
            f"--json {args.json} is a directory; give the name of the file to write, e.g. {args.json}/quality.json"
        )
    if bool(args.labels) == bool(args.interactions):
        raise InputError(
            "give either --labels CSV (same-label neighbours) or --interactions HELD_OUT (co-interactions)"
        )
    s3 = load_settings(args).s3
    if args.interactions:
        return _co_interactions(args, s3)
    labels = load_labels(args.labels, args.id_regex, s3)
    neighbours = tables.open_table(args.neighbours, s3)
    neighbours.require(["item_id", "rank", "neighbour_id"], "a neighbour table")
    tally = Tally(labels, args.k, catalogue_from_lists=not args.embeddings)
    random_init = False
    if args.embeddings:
        embedded = tables.open_table(args.embeddings, s3)
        for batch in embedded.scan(["item_id"]):
            tally.name(batch.column(0))
        random_init = any(str(w).startswith("random-init") for w in embedded.distinct("weights"))
    # Every list counts, so the whole table is read, but a few row groups at a time and without scores.
    for query_ids, sizes, neighbour_ids, _ in tables.iter_ranked_lists(
        neighbours, args.k, columns=["item_id", "rank", "neighbour_id"]
    ):
        tally.add(query_ids, sizes, neighbour_ids)
    if not tally.lists:
        raise InputError(f"the neighbour table {args.neighbours} has no rows")
    result = tally.result()
    result["neighbours_table"] = args.neighbours
    result["labels_file"] = args.labels
    print(format_table(result))
    if random_init:
        print(
            "note: the embeddings were computed with random-init weights; these figures say nothing "
            "about recommendation quality (use model.weights=imagenet)"
        )
    _write_json(args.json, result)
    return 0


def _co_interactions(args, s3) -> int:
    """``--interactions``: the neighbour table against held-out co-interactions (hybrid.heldout)."""
    from lookalike.hybrid import heldout
    from lookalike.io import tables

    train = heldout.read_pairs(args.train, s3) if args.train else None
    tally = heldout.CoTally(heldout.read_pairs(args.interactions, s3), args.k, train)
    neighbours = tables.open_table(args.neighbours, s3)
    neighbours.require(["item_id", "rank", "neighbour_id"], "a neighbour table")
    for query_ids, sizes, neighbour_ids, _ in tables.iter_ranked_lists(
        neighbours, args.k, columns=["item_id", "rank", "neighbour_id"]
    ):
        tally.add(query_ids, sizes, neighbour_ids)
    result = tally.result()
    result.update(neighbours_table=args.neighbours, interactions=args.interactions, train=args.train)
    print(heldout.format_table(result))
    _write_json(args.json, result)
    return 0


def _write_json(path: str | None, result: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = path + ".tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2, sort_keys=True)
        os.replace(temporary, path)  # never a half-written file
    except OSError as exc:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise OutputError(f"cannot write --json {path}: {exc.strerror or exc}") from None
