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
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Iterable, Mapping, Optional, Sequence

from lookalike.errors import InputError

log = logging.getLogger(__name__)

METRICS = ("precision_at_k", "recall_at_k", "map_at_k", "chance")


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


def evaluate(rankings: Mapping[str, Sequence], labels: Mapping[str, str], k: int,
             universe: Optional[Iterable[str]] = None) -> dict:
    """Metrics of ``rankings`` ({item: [neighbour_id or (neighbour_id, score), ...] best first}).

    ``universe``: the items a ranking could draw from (default: every item named in
    ``rankings``); only its labelled items count as relevant and as N for the chance level.
    """
    if k < 1:
        raise InputError(f"k must be a positive integer, got {k}")
    if universe is None:
        names = set(rankings)
        for ranked in rankings.values():
            names.update(_neighbour_id(n) for n in ranked)
    else:
        names = set(universe)
    labelled = {item: labels[item] for item in names if item in labels}
    per_label_size = Counter(labelled.values())
    n_items = len(labelled)

    rows: list[tuple[str, float, float, float, float]] = []
    unlabelled_queries = no_relevant = unlabelled_neighbours = 0
    for item, ranked in rankings.items():
        label = labelled.get(item)
        if label is None:
            unlabelled_queries += 1
            continue
        n_relevant = per_label_size[label] - 1
        if n_relevant == 0:
            no_relevant += 1
            continue
        neighbours = [_neighbour_id(n) for n in ranked if _neighbour_id(n) != item][:k]
        unlabelled_neighbours += sum(1 for n in neighbours if n not in labelled)
        rel = [1 if labelled.get(n) == label else 0 for n in neighbours]
        rows.append((label, precision_at_k(rel, k), recall_at_k(rel, k, n_relevant),
                     average_precision_at_k(rel, k, n_relevant), n_relevant / (n_items - 1)))

    if not rows:
        raise InputError(
            f"no query can be evaluated: {len(rankings)} queries, {unlabelled_queries} without a label, "
            f"{no_relevant} whose label has no other item. Do the label ids match the item ids "
            f"(see --id-regex)?"
        )
    result = {"k": k, "queries": len(rows), "items": n_items, "label_count": len(per_label_size),
              **_means(rows), "per_label": {}}
    for label in sorted({r[0] for r in rows}):
        subset = [r for r in rows if r[0] == label]
        result["per_label"][label] = {"queries": len(subset), "items": per_label_size[label], **_means(subset)}
    result["skipped"] = {"unlabelled_queries": unlabelled_queries, "no_other_item_with_label": no_relevant}
    result["unlabelled_neighbours"] = unlabelled_neighbours
    return result


def _neighbour_id(entry) -> str:
    return entry[0] if isinstance(entry, (tuple, list)) else entry


def _means(rows: list) -> dict:
    n = len(rows)
    return {name: sum(r[i + 1] for r in rows) / n for i, name in enumerate(METRICS)}


def format_table(result: dict) -> str:
    k = result["k"]
    width = max([len("label"), len("all")] + [len(label) for label in result["per_label"]])
    head = f"{'label':<{width}}  {'queries':>7}  {f'precision@{k}':>12}  {f'recall@{k}':>10}  {f'mAP@{k}':>8}  {'chance':>7}"
    lines = [head, "-" * len(head)]

    def line(name: str, figures: dict) -> str:
        return (f"{name:<{width}}  {figures['queries']:>7}  {figures['precision_at_k']:>12.3f}  "
                f"{figures['recall_at_k']:>10.3f}  {figures['map_at_k']:>8.3f}  {figures['chance']:>7.3f}")

    lines += [line(label, figures) for label, figures in result["per_label"].items()]
    lines += ["-" * len(head), line("all", result)]
    skipped = result["skipped"]
    notes = [f"{result['queries']} queries over {result['items']} labelled items in {result['label_count']} labels; "
             f"chance = expected precision@{k} of a random ranking"]
    if skipped["unlabelled_queries"] or skipped["no_other_item_with_label"]:
        notes.append(f"left out: {skipped['unlabelled_queries']} queries without a label, "
                     f"{skipped['no_other_item_with_label']} whose label has no other item")
    if result["unlabelled_neighbours"]:
        notes.append(f"{result['unlabelled_neighbours']} neighbours had no label and counted as not relevant")
    return "\n".join(lines + notes)


def add_arguments(parser) -> None:
    parser.add_argument("--neighbours", required=True, metavar="PATH", help="the neighbour table (Parquet)")
    parser.add_argument("--labels", required=True, metavar="CSV",
                        help="CSV with columns item_id,label or path,label (path: relative to input.uri)")
    parser.add_argument("-k", type=int, default=10, help="evaluate the top k neighbours (default 10)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument("--embeddings", metavar="PATH",
                        help="the embeddings table: its items define the catalogue (default: the items "
                             "named in the neighbour table)")
    parser.add_argument("--id-regex", metavar="REGEX",
                        help="turn label paths into ids with this regex (the embed job's input.id_regex)")
    parser.add_argument("--config", metavar="FILE", help="YAML config, for the S3 settings of s3:// tables")
    parser.add_argument("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint (overrides the config)")


def command(args) -> int:
    from lookalike.io import tables
    from lookalike.tools.labels import load_labels
    from lookalike.tools.report import load_settings

    if args.k < 1:
        raise InputError(f"-k must be a positive integer, got {args.k}")
    s3 = load_settings(args).s3
    labels = load_labels(args.labels, args.id_regex, s3)
    rankings = tables.read_rankings(args.neighbours, args.k, s3)
    if not rankings:
        raise InputError(f"the neighbour table {args.neighbours} has no rows")
    universe = None
    random_init = False
    if args.embeddings:
        embedded = tables.read_table(args.embeddings, ["item_id", "weights"], s3)
        universe = embedded.column("item_id").to_pylist()
        random_init = any(str(w).startswith("random-init") for w in set(embedded.column("weights").to_pylist()))
    result = evaluate(rankings, labels, args.k, universe)
    result["neighbours_table"] = args.neighbours
    result["labels_file"] = args.labels
    print(format_table(result))
    if random_init:
        print("note: the embeddings were computed with random-init weights; these figures say nothing "
              "about recommendation quality (use model.weights=imagenet)")
    if args.json:
        directory = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(directory, exist_ok=True)
        temporary = args.json + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2, sort_keys=True)
        os.replace(temporary, args.json)  # never a half-written file
    return 0
