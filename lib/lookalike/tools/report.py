"""``lookalike report``: one self-contained HTML page of query items and their top-k neighbours.

People judge recommendations by looking at them. The page embeds small JPEG thumbnails as data:
URIs, so it opens anywhere (mail it, put it on a wiki) even when the originals sit in a private
bucket; each thumbnail links to its original URI. The page needs no script, and a
Content-Security-Policy forbids any: ids, URIs and labels come from other people's buckets and are
escaped everywhere, so a hostile id such as ``<script>alert(1)</script>`` shows as text.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from urllib.parse import urlparse

from lookalike.config import Config, InputConfig, S3Config
from lookalike.embed import images
from lookalike.errors import InputError, ItemNotFoundError, OutputError, storage_failure
from lookalike.io import tables
from lookalike.io.storage import StorageError, fetch, storage_for
from lookalike.progress import Progress

log = logging.getLogger(__name__)

DEFAULT_SAMPLE = 12
THUMB_SIZE = 160
# Links only to storage a person can open or copy; anything else (javascript:, data:) is not linked.
LINK_SCHEMES = ("s3", "s3a", "s3n", "gs", "file", "hdfs", "viewfs", "abfs", "abfss", "http", "https")
# No scripts, no requests: the page shows only what it embeds.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
.lk-report { font-family: system-ui, sans-serif; color: #222; background: #fff; margin: 0; padding: 12px 16px; }
.lk-report h1 { font-size: 20px; margin: 0 0 4px; }
.lk-report h2 { font-size: 13px; font-weight: 600; text-transform: uppercase; letter-spacing: .04em;
  color: #555; margin: 0 0 6px; }
.lk-meta { color: #555; font-size: 12px; margin: 0 0 12px; overflow-wrap: anywhere; }
.lk-warning { background: #fff3cd; border: 1px solid #e0b400; padding: 6px 10px; margin: 0 0 12px; font-size: 13px; }
.lk-query { display: flex; gap: 24px; align-items: flex-start; border-top: 1px solid #ddd; padding: 12px 0; }
.lk-input { flex: 0 0 auto; }
.lk-similar { flex: 1 1 auto; }
.lk-grid { display: flex; flex-wrap: wrap; gap: 10px; }
.lk-card { margin: 0; width: 164px; font-size: 11px; }
.lk-card a { display: block; text-decoration: none; color: inherit; }
.lk-card img, .lk-missing { display: block; width: 160px; height: 160px; object-fit: contain;
  background: #f6f6f6; border: 2px solid #e4e4e4; }
.lk-same img, .lk-same .lk-missing { border-color: #2e9e44; }
.lk-other img, .lk-other .lk-missing { border-color: #d9534f; }
.lk-missing { display: flex; align-items: center; justify-content: center; text-align: center;
  color: #888; font-size: 12px; padding: 6px; box-sizing: border-box; background:
  repeating-linear-gradient(45deg, #f3f3f3, #f3f3f3 8px, #e9e9e9 8px, #e9e9e9 16px); overflow: hidden; }
.lk-card figcaption { margin-top: 3px; line-height: 1.35; overflow-wrap: anywhere; }
.lk-rank { color: #888; }
.lk-score { font-weight: 600; font-variant-numeric: tabular-nums; }
.lk-label { color: #0b5394; }
.lk-attrs { color: #555; }
.lk-none { color: #888; font-style: italic; }
"""


@dataclass(frozen=True)
class Thumb:
    """A thumbnail (JPEG bytes) or the reason there is none."""

    data: bytes | None
    reason: str = ""


@dataclass(frozen=True)
class Card:
    item_id: str
    uri: str | None
    label: str | None = None
    rank: int | None = None
    score: float | None = None
    attributes: tuple = ()  # (column, value) pairs from the attributes table, shown as they are


def sample_queries(table: tables.ParquetTable, sample: int | None = None, seed: int = 0) -> list[str]:
    """``sample`` query items (default DEFAULT_SAMPLE) of the neighbour table, sorted: the items at
    seeded random row positions (``ParquetTable.sample``), so only the row groups they fall in
    are read."""
    count = DEFAULT_SAMPLE if sample is None else sample
    if count < 1:
        raise InputError(f"--sample must be a positive number of items, got {count}")
    chosen = table.sample(count, seed)
    if not chosen:
        raise InputError("the neighbour table has no items")
    return chosen


def _check_known(items: list[str], known: set, neighbours: tables.ParquetTable) -> None:
    missing = [item for item in items if item not in known]
    if missing:
        raise ItemNotFoundError(
            f"item {missing[0]!r} is in neither the embeddings nor the neighbour table"
            + (f" ({len(missing) - 1} more ids are missing too)" if len(missing) > 1 else "")
            + _close_matches(missing[0], neighbours)
        )


def _close_matches(item: str, neighbours: tables.ParquetTable) -> str:
    import difflib

    close = difflib.get_close_matches(item, neighbours.ids_near(item), n=3)
    return f"; similar ids: {', '.join(repr(c) for c in close)}" if close else ""


def fetch_thumbnails(
    uris: Iterable[str],
    s3: S3Config,
    input_cfg: InputConfig | None = None,
    size: int = THUMB_SIZE,
    threads: int = 8,
) -> dict[str, Thumb]:
    """{uri: Thumb} for each distinct uri, fetched concurrently (S3 latency dominates);
    ``input_cfg`` (input.max_bytes and the like) defaults to the default input section."""
    input_cfg = InputConfig() if input_cfg is None else input_cfg
    unique = list(dict.fromkeys(uris))
    progress = Progress(log, "thumbnails", len(unique), "images")
    out: dict[str, Thumb] = {}
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="lookalike-thumb") as pool:
        futures = {pool.submit(_thumbnail, uri, s3, input_cfg, size): uri for uri in unique}
        for done, future in enumerate(as_completed(futures), start=1):
            out[futures[future]] = future.result()
            progress.update(done, force=done == len(unique))
    return out


def _thumbnail(uri: str, s3: S3Config, input_cfg: InputConfig, size: int) -> Thumb:
    try:
        data = fetch(uri, s3, input_cfg.max_bytes)
        return Thumb(images.thumbnail(data, size, input_cfg.max_pixels))
    except (StorageError, images.ImageError) as exc:
        return Thumb(None, f"{exc.kind}: {exc.message}")
    except Exception as exc:  # an undecodable file is a placeholder, never a failed page
        return Thumb(None, f"cannot make a thumbnail: {type(exc).__name__}: {exc}")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _link(uri: str | None) -> str | None:
    if not uri:
        return None
    scheme = urlparse(uri).scheme.lower()
    return uri if scheme in LINK_SCHEMES else None


def render_card(card: Card, thumb: Thumb | None, query_label: str | None = None) -> str:
    if thumb is not None and thumb.data:
        picture = (
            f'<img src="data:image/jpeg;base64,{base64.b64encode(thumb.data).decode("ascii")}" '
            f'alt="{_e(card.item_id)}">'
        )
    else:
        reason = thumb.reason if thumb is not None else "not in the embeddings table"
        picture = f'<div class="lk-missing" title="{_e(reason)}">no image<br>{_e(reason[:80])}</div>'
    href = _link(card.uri)
    if href:
        picture = f'<a href="{_e(href)}" title="{_e(card.uri)}">{picture}</a>'
    match = ""
    if query_label is not None and card.label is not None:
        match = " lk-same" if card.label == query_label else " lk-other"
    caption = []
    if card.rank is not None:
        caption.append(
            f'<span class="lk-rank">#{card.rank}</span> '
            f'<span class="lk-score" title="cosine similarity">{card.score:.3f}</span><br>'
        )
    caption.append(f'<span class="lk-id">{_e(card.item_id)}</span>')
    if card.label is not None:
        caption.append(f'<br><span class="lk-label">{_e(card.label)}</span>')
    shown = [f"{_e(column)}: {_e(value)}" for column, value in card.attributes if value is not None]
    if shown:
        caption.append(f'<br><span class="lk-attrs">{" &middot; ".join(shown)}</span>')
    return f'<figure class="lk-card{match}">{picture}<figcaption>{"".join(caption)}</figcaption></figure>'


def render(
    queries: list[tuple[Card, list[Card]]],
    thumbs: Mapping[str, Thumb],
    title: str = "Similar items",
    notes: Iterable[str] = (),
    warning: str | None = None,
    full_page: bool = True,
) -> str:
    """The page (or, with full_page=False, a fragment for a notebook) for (query, neighbours) pairs."""
    parts = [f"<h1>{_e(title)}</h1>"]
    notes = list(notes)
    if notes:
        parts.append(f'<p class="lk-meta">{" &middot; ".join(_e(n) for n in notes)}</p>')
    if warning:
        parts.append(f'<div class="lk-warning">{_e(warning)}</div>')
    for query, neighbours in queries:
        cards = "".join(render_card(n, thumbs.get(n.uri) if n.uri else None, query.label) for n in neighbours)
        if not cards:
            cards = '<p class="lk-none">no neighbours in the table</p>'
        parts.append(
            '<section class="lk-query">'
            '<div class="lk-input"><h2>Input item</h2>'
            f"{render_card(query, thumbs.get(query.uri) if query.uri else None)}</div>"
            f'<div class="lk-similar"><h2>Similar items</h2><div class="lk-grid">{cards}</div></div>'
            "</section>"
        )
    body = f'<div class="lk-report">{"".join(parts)}</div>'
    if not full_page:
        return f"<style>{CSS}</style>{body}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>{body}</body></html>\n"
    )


def build(
    embeddings: str,
    neighbours: str,
    items: list[str] | None = None,
    sample: int | None = None,
    k: int = 10,
    labels: Mapping[str, str] | None = None,
    cfg: Config | None = None,
    seed: int = 0,
    size: int = THUMB_SIZE,
    title: str = "Similar items",
    full_page: bool = True,
    attributes: str | None = None,
) -> tuple[str, dict]:
    """Read what the page shows (the chosen items' neighbour rows, the uris of those items and
    their neighbours, never the embedding column; their rows of the ``attributes`` table, default
    neighbours.attributes), fetch thumbnails, render. Returns (html, counts). ``cfg``: the
    default configuration when not given."""
    cfg = Config() if cfg is None else cfg
    if k < 1:
        raise InputError(f"-k must be a positive integer, got {k}")
    labels = labels or {}
    embedded = tables.open_table(embeddings, cfg.s3)
    embedded.require(["item_id", "uri", "weights"], "an embeddings table")
    table = tables.open_table(neighbours, cfg.s3)
    table.require(tables.RANKING_COLUMNS, "a neighbour table")
    chosen = list(dict.fromkeys(items)) if items else sample_queries(table, sample, seed)
    rankings = tables.read_rankings(table, k, items=chosen)
    shown = set(chosen) | {n for item in chosen for n, _ in rankings.get(item, [])}
    found = embedded.lookup("item_id", shown, ["item_id", "uri"])
    uris = dict(zip(found.column("item_id").to_pylist(), found.column("uri").to_pylist(), strict=True))
    if items:
        _check_known(chosen, set(uris) | set(rankings), table)
    weights = embedded.distinct("weights")
    columns: list[str] = []
    described: dict[str, dict] = {}
    attributes_path = attributes or cfg.neighbours.attributes
    if attributes_path:
        from lookalike.tools import attributes as item_attributes

        columns, described = item_attributes.lookup(attributes_path, shown, cfg.s3)

    def of(item: str) -> tuple:
        return tuple((c, described.get(item, {}).get(c)) for c in columns)

    pairs = []
    for item in chosen:
        query = Card(item, uris.get(item), labels.get(item), attributes=of(item))
        ranked = [
            Card(n, uris.get(n), labels.get(n), rank, score, of(n))
            for rank, (n, score) in enumerate(rankings.get(item, []), start=1)
        ]
        pairs.append((query, ranked))
    wanted = [c.uri for q, ns in pairs for c in [q, *ns] if c.uri]
    thumbs = fetch_thumbnails(wanted, cfg.s3, cfg.input, size)

    warning = None
    if any(str(w).startswith("random-init") for w in weights):
        warning = (
            "These embeddings were computed with random-init weights (model.weights=none or no "
            "ImageNet weights available): the neighbours are not real recommendations."
        )
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes = [
        f"embeddings: {embeddings}",
        f"neighbours: {neighbours}",
        f"top {k}",
        f"weights: {', '.join(map(str, weights))}",
        f"generated {generated}",
    ]
    page = render(pairs, thumbs, title, notes, warning, full_page)
    missing = sum(1 for q, ns in pairs for c in [q, *ns] if not (c.uri and thumbs[c.uri].data))
    counts = {
        "items": len(pairs),
        "cards": sum(1 + len(ns) for _, ns in pairs),
        "images": len(thumbs),
        "missing": missing,
        "bytes": len(page.encode("utf-8")),
    }
    return page, counts


def add_arguments(parser) -> None:
    parser.add_argument("--embeddings", required=True, metavar="PATH", help="the embeddings table (Parquet)")
    parser.add_argument("--neighbours", required=True, metavar="PATH", help="the neighbour table (Parquet)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--items", metavar="ID,ID,...", action="append", help="the query items, comma-separated (repeatable)"
    )
    which.add_argument(
        "--sample", type=int, metavar="N", help=f"N random query items (default {DEFAULT_SAMPLE}; --seed picks which)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("-k", type=int, default=10, help="neighbours per item (default 10)")
    parser.add_argument("--labels", metavar="CSV", help="show labels from a CSV (item_id,label or path,label)")
    parser.add_argument(
        "--id-regex", metavar="REGEX", help="turn label paths into ids (the embed job's input.id_regex)"
    )
    parser.add_argument(
        "--attributes",
        metavar="PATH",
        help="show each item's values from an attributes table (item_id and any columns, CSV or "
        "Parquet; default: neighbours.attributes of --config)",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write")
    parser.add_argument("--title", default="Similar items", help="page title")
    parser.add_argument(
        "--thumb-size", type=int, default=THUMB_SIZE, help=f"thumbnail size in px (default {THUMB_SIZE})"
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config: S3 settings and input limits as for the jobs")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set s3.region=eu-west-1",
    )
    parser.add_argument("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint (overrides the config)")


def command(args) -> int:
    from lookalike.tools.cli import load_settings
    from lookalike.tools.labels import load_labels

    log.setLevel(logging.INFO)  # progress lines on stderr; the CLI's default level is WARNING
    if not 16 <= args.thumb_size <= 1024:
        raise InputError(f"--thumb-size must be between 16 and 1024 pixels, got {args.thumb_size}")
    cfg = load_settings(args)
    items = [i.strip() for text in (args.items or []) for i in text.split(",") if i.strip()] or None
    if args.items is not None and not items:
        raise InputError("--items is empty; give comma-separated item ids")
    labels = load_labels(args.labels, args.id_regex, cfg.s3) if args.labels else None
    page, counts = build(
        args.embeddings,
        args.neighbours,
        items,
        args.sample,
        args.k,
        labels,
        cfg,
        args.seed,
        args.thumb_size,
        args.title,
        attributes=args.attributes,
    )
    try:
        storage_for(args.out, cfg.s3).write(args.out, page.encode("utf-8"))  # never half a page
    except StorageError as exc:
        raise storage_failure(OutputError, f"cannot write {args.out}: {exc.message}", exc) from None
    print(
        f"wrote {args.out}: {counts['items']} items, {counts['cards']} pictures "
        f"({counts['missing']} missing), {counts['bytes'] / 1e6:.1f} MB"
    )
    return 0
