"""Retrieval quality of an embeddings table against labels: exact cosine top-k (the neighbours
job's numpy kernel, lookalike.neighbours.topk, run here on one machine) then ``lookalike evaluate``'s metrics
for several k. Prints a table and writes bench/results/evaluate-<name>.json.

    .venv/bin/python bench/evaluate_labels.py --embeddings /tmp/x/emb --labels LABELS.csv --name NAME

The embeddings come from the embed job, e.g. with random-init weights:
    ./spark-submit.sh embed --set model.weights=none --set input.uri=DIR \\
        --set output.embeddings=/tmp/x/emb --set output.errors=/tmp/x/err
Where the neighbours job exists, its table can be evaluated directly with ``lookalike evaluate``;
this script only needs the embeddings, so figures can be produced before that job runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike import schemas
from lookalike.io import tables
from lookalike.neighbours import topk
from lookalike.tools import evaluate
from lookalike.tools.labels import load_labels

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BLOCK = 1024


def neighbours(ids: list[str], vectors: np.ndarray, k: int) -> pa.Table:
    order = np.argsort(np.asarray(ids, dtype=object))
    ids = np.asarray(ids, dtype=object)[order]
    unit, valid = topk.normalise(vectors[order])
    rows = {"item_id": [], "rank": [], "neighbour_id": [], "score": []}
    for start in range(0, len(ids), BLOCK):
        stop = min(start + BLOCK, len(ids))
        scores, found = topk.topk_block(unit[start:stop], unit, k, self_index=np.arange(start, stop))
        for r in range(stop - start):
            if not valid[start + r]:
                continue
            for rank, (s, j) in enumerate(zip(scores[r], found[r], strict=False), start=1):
                if j != topk.EMPTY_ID:
                    rows["item_id"].append(ids[start + r])
                    rows["rank"].append(rank)
                    rows["neighbour_id"].append(ids[j])
                    rows["score"].append(float(s))
    return pa.Table.from_pydict(rows, schema=schemas.arrow_schema(schemas.NEIGHBOURS))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embeddings", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--name", required=True, help="names the JSON file in bench/results/")
    parser.add_argument("--id-regex")
    parser.add_argument("-k", type=int, action="append", help="k to evaluate (repeatable; default 1, 5, 10)")
    parser.add_argument("--neighbours-out", help="also write the neighbour table (Parquet) here")
    args = parser.parse_args(argv)
    ks = sorted(set(args.k or [1, 5, 10]))

    started = time.perf_counter()
    table = tables.read_table(args.embeddings, ["item_id", "embedding", "weights"])
    ids = table.column("item_id").to_pylist()
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    weights = sorted(set(table.column("weights").to_pylist()))
    read_s = time.perf_counter() - started

    started = time.perf_counter()
    result_table = neighbours(ids, vectors, max(ks))
    topk_s = time.perf_counter() - started
    if args.neighbours_out:
        os.makedirs(args.neighbours_out, exist_ok=True)
        pq.write_table(result_table, os.path.join(args.neighbours_out, "part-00000.parquet"))

    frame = result_table.to_pandas().sort_values(["item_id", "rank"])
    labels = load_labels(args.labels, args.id_regex)
    results = {}
    for k in ks:
        top = frame[frame["rank"] <= k]
        rankings = top.groupby("item_id", sort=False)["neighbour_id"].apply(list).to_dict()
        results[k] = evaluate.evaluate(rankings, labels, k, universe=ids)

    print(
        f"{args.name}: {len(ids)} items, dim {vectors.shape[1]}, weights {', '.join(weights)}; "
        f"read {read_s:.1f}s, exact top-{max(ks)} {topk_s:.1f}s"
    )
    print(f"{'k':>3}  {'queries':>7}  {'precision@k':>11}  {'recall@k':>8}  {'mAP@k':>6}  {'chance':>6}")
    for k, r in results.items():
        print(
            f"{k:>3}  {r['queries']:>7}  {r['precision_at_k']:>11.3f}  {r['recall_at_k']:>8.3f}  "
            f"{r['map_at_k']:>6.3f}  {r['chance']:>6.3f}"
        )
    print(evaluate.format_table(results[max(ks)]))

    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, f"evaluate-{args.name}.json")
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "name": args.name,
                "embeddings": args.embeddings,
                "labels": args.labels,
                "items": len(ids),
                "dim": int(vectors.shape[1]),
                "weights": weights,
                "seconds": {"read": round(read_s, 2), "topk": round(topk_s, 2)},
                "by_k": {str(k): r for k, r in results.items()},
            },
            handle,
            indent=2,
            sort_keys=True,
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
