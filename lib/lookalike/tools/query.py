"""``lookalike similar ITEM_ID --neighbours PATH``: one item's recommendations, without Spark.

The neighbour table is sorted by item_id with row groups cut at item boundaries, so pyarrow's
filter pushdown on the Parquet statistics reads one row group of one file, wherever the table is.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Optional

from lookalike.config import S3Config
from lookalike.errors import InputError, ItemNotFoundError

FORMATS = ("table", "json", "csv")


def add_arguments(parser) -> None:
    parser.add_argument("item_id", metavar="ITEM_ID", help="the item whose similar items to print")
    parser.add_argument("--neighbours", required=True, metavar="PATH",
                        help="the neighbour table (local path, file://, s3:// or hdfs:// URI)")
    parser.add_argument("-k", type=int, default=None, metavar="N",
                        help="print at most N neighbours (default: all the table holds)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--config", metavar="FILE", help="YAML config, for the S3 settings of s3:// tables")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set s3.region=eu-west-1")
    parser.add_argument("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint (overrides the config)")


def similar(path: str, item_id: str, k: Optional[int] = None, s3: Optional[S3Config] = None) -> list[dict]:
    """[{rank, neighbour_id, score}, ...] best first; ItemNotFoundError for an id with no rows."""
    import pyarrow.dataset as ds

    from lookalike.io import tables

    condition = ds.field("item_id") == item_id
    if k is not None:
        condition = condition & (ds.field("rank") <= k)
    found = tables.read_table(path, ["rank", "neighbour_id", "score"], s3, condition)
    if found.num_rows == 0:
        raise ItemNotFoundError(
            f"item {item_id!r} is not in the neighbour table {path}: it was not embedded, its "
            f"embedding was left out (zero or non-finite values), or no neighbour reached "
            f"neighbours.min_score.{_example_id(path, s3)}")
    rows = sorted(found.to_pylist(), key=lambda r: r["rank"])
    return [{"rank": r["rank"], "neighbour_id": r["neighbour_id"], "score": round(float(r["score"]), 6)}
            for r in rows]


def _example_id(path: str, s3: Optional[S3Config]) -> str:
    """A hint at what ids look like, from the table's first row (cheap: one row group)."""
    from lookalike.io import tables

    try:
        head = tables.dataset(path, s3).head(1, columns=["item_id"]).column(0).to_pylist()
    except Exception:
        return ""
    return f" Ids in this table look like {head[0]!r}." if head else " The table is empty."


def render(item_id: str, neighbours: list[dict], fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "json":
        json.dump({"item_id": item_id, "neighbours": neighbours}, out)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["item_id", "rank", "neighbour_id", "score"])
        for n in neighbours:
            writer.writerow([item_id, n["rank"], n["neighbour_id"], f"{n['score']:.6f}"])
    else:
        out.write(f"items similar to {item_id}\n")
        out.write(f"{'rank':>4}  {'score':>7}  neighbour_id\n")
        for n in neighbours:
            out.write(f"{n['rank']:>4}  {n['score']:>7.4f}  {n['neighbour_id']}\n")


def command(args) -> int:
    from lookalike.tools.report import load_settings

    if args.k is not None and args.k < 1:
        raise InputError(f"-k must be a positive integer, got {args.k}")
    s3 = load_settings(args).s3
    neighbours = similar(args.neighbours, args.item_id, args.k, s3)
    render(args.item_id, neighbours, args.format)
    if args.format == "table":
        _note_random_init(args.neighbours, s3)
    return 0


def _note_random_init(path: str, s3: Optional[S3Config]) -> None:
    from lookalike import publish

    try:
        summary = publish.read_summary(path, s3) or {}
    except Exception:
        return
    if str(summary.get("weights", "")).startswith("random-init"):
        print(f"note: {path} was computed from random-init weights ({summary['weights']}); "
              f"these are not real recommendations", file=sys.stderr)
