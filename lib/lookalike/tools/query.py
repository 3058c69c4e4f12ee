"""``lookalike similar ITEM_ID --neighbours PATH``: one item's recommendations, without Spark.

The neighbour table is sorted by item_id with row groups cut at item boundaries, so the Parquet
footers' statistics point at one row group of one file, and only that is read, wherever the table
is; an unknown id reads one or two more row groups for the ids it suggests.
"""

from __future__ import annotations

import csv
import json
import sys

from lookalike.config import S3Config
from lookalike.errors import InputError, ItemNotFoundError
from lookalike.terminal import printable

FORMATS = ("table", "json", "csv")


def add_arguments(parser) -> None:
    parser.add_argument("item_id", metavar="ITEM_ID", help="the item whose similar items to print")
    parser.add_argument(
        "--neighbours",
        required=True,
        metavar="PATH",
        help="the neighbour table (local path, file://, s3:// or hdfs:// URI)",
    )
    parser.add_argument(
        "-k", type=int, default=None, metavar="N", help="print at most N neighbours (default: all the table holds)"
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--config", metavar="FILE", help="YAML config, for the S3 settings of s3:// tables")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set s3.region=eu-west-1",
    )
    parser.add_argument("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint (overrides the config)")
    parser.add_argument(
        "--attributes",
        metavar="PATH",
        help="an attributes table (item_id and any columns, CSV or Parquet) whose values to show "
        "next to each item (default: neighbours.attributes of --config)",
    )


def similar(path: str, item_id: str, k: int | None = None, s3: S3Config | None = None) -> list[dict]:
    """[{rank, neighbour_id, score}, ...] best first; ItemNotFoundError for an id with no rows."""
    from lookalike.io import tables

    table = tables.open_table(path, s3)
    found = table.lookup(
        "item_id", [item_id], ["rank", "neighbour_id", "score"], [] if k is None else [("rank", "<=", k)]
    )
    if found.num_rows == 0:
        raise ItemNotFoundError(
            f"item {item_id!r} is not in the neighbour table {path}: it was not embedded, its "
            f"embedding was left out (zero or non-finite values), or no neighbour reached "
            f"neighbours.min_score.{_example_id(table, item_id)}"
        )
    rows = sorted(found.to_pylist(), key=lambda r: r["rank"])
    return [{"rank": r["rank"], "neighbour_id": r["neighbour_id"], "score": round(float(r["score"]), 6)} for r in rows]


def _example_id(table, item_id: str) -> str:
    """A hint at what ids look like, from the row group where the id would be (cheap: one or two
    row groups' ids, never the whole table)."""
    import difflib

    try:
        near = table.ids_near(item_id)
    except Exception:
        return ""
    if not near:
        return " The table is empty."
    close = difflib.get_close_matches(item_id, near, n=3)
    if close:
        return f" Similar ids: {', '.join(repr(c) for c in close)}."
    return f" Ids in this table look like {near[0]!r}."


def with_attributes(item_id: str, neighbours: list[dict], path: str | None, s3: S3Config | None = None):
    """(the query's attributes, the neighbours each with an "attributes" dict, the columns), read
    for these items only; ({}, neighbours, []) without an attributes table."""
    if not path:
        return {}, neighbours, []
    from lookalike.tools import attributes

    columns, found = attributes.lookup(path, [item_id, *(n["neighbour_id"] for n in neighbours)], s3)
    empty = dict.fromkeys(columns)
    return (
        found.get(item_id, empty),
        [{**n, "attributes": found.get(n["neighbour_id"], empty)} for n in neighbours],
        columns,
    )


def render(
    item_id: str, neighbours: list[dict], fmt: str, out=None, own: dict | None = None, columns: list[str] | None = None
) -> None:
    out = out or sys.stdout
    columns = columns or []

    def shown(n: dict) -> list:
        return ["" if n.get("attributes", {}).get(c) is None else n["attributes"][c] for c in columns]

    if fmt == "json":
        record: dict[str, object] = {"item_id": item_id, "neighbours": neighbours}
        if columns:
            record["attributes"] = own or {}
        json.dump(record, out)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["item_id", "rank", "neighbour_id", "score", *columns])
        for n in neighbours:
            writer.writerow([item_id, n["rank"], n["neighbour_id"], f"{n['score']:.6f}", *shown(n)])
    else:
        # A person's terminal: ids and attribute values with their control characters escaped.
        described = ", ".join(f"{c}={printable(str(v))}" for c, v in (own or {}).items() if v is not None)
        out.write(f"items similar to {printable(item_id)}{f' ({described})' if described else ''}\n")
        ids = [printable(n["neighbour_id"]) for n in neighbours]
        width = max([len("neighbour_id"), *(len(i) for i in ids)]) if columns else 0
        head = f"{'rank':>4}  {'score':>7}  {'neighbour_id':<{width}}"
        out.write((head + "".join(f"  {printable(c)}" for c in columns)).rstrip() + "\n")
        for n, shown_id in zip(neighbours, ids, strict=True):
            line = f"{n['rank']:>4}  {n['score']:>7.4f}  {shown_id:<{width}}"
            out.write((line + "".join(f"  {printable(str(v))}" for v in shown(n))).rstrip() + "\n")


def command(args) -> int:
    from lookalike.tools.cli import load_settings

    if args.k is not None and args.k < 1:
        raise InputError(f"-k must be a positive integer, got {args.k}")
    cfg = load_settings(args)
    s3 = cfg.s3
    neighbours = similar(args.neighbours, args.item_id, args.k, s3)
    own, neighbours, columns = with_attributes(
        args.item_id, neighbours, args.attributes or getattr(cfg.neighbours, "attributes", None), s3
    )
    render(args.item_id, neighbours, args.format, own=own, columns=columns)
    if args.format == "table":
        _note_random_init(args.neighbours, s3)
    return 0


def _note_random_init(path: str, s3: S3Config | None) -> None:
    from lookalike import publish

    try:
        summary = publish.read_summary(path, s3) or {}
    except Exception:
        return
    if str(summary.get("weights", "")).startswith("random-init"):
        print(
            f"note: {path} was computed from random-init weights ({summary['weights']}); "
            f"these are not real recommendations",
            file=sys.stderr,
        )
