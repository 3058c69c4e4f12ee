"""Behaviour blended with pictures (the hybrid job) on SIMULATED interactions: recall@10 of held-out
co-interactions for visual-only (alpha 0), behaviour-only (alpha 1) and blends, warm and cold
items; and the time of training plus evaluation at 25,000 items / 600,000 interactions.

No redistributable data set with both product photos and interactions is available offline, so
the interactions are generated (``simulate``), and say nothing about a real shop's figures:

* items: the photos of ../shared/data/clothing-small with their garment kind (its labels) and a
  colour (the hue/lightness bin of the photo's central pixels, one of COLOURS), and a popularity
  drawn from a Zipf law (weight rank^-POPULARITY_EXPONENT over a random order of the items);
* users: each has a taste over kinds and over colours (Dirichlet draws, peaked on a few), and
  makes SESSIONS_PER_USER outfits: an anchor item (its kind from the user's taste, then an item of
  that kind by popularity x colour taste), then with probability COMPLEMENT_P one or two
  complements of other kinds (COMPLEMENTS: a top with trousers, a dress with shoes, ...), in the
  anchor's colour with probability SAME_COLOUR_P, else by the user's colour taste; and with
  probability NOISE_P one item drawn by popularity alone;
* split: 20% of the items are cold (every interaction with them is held out), then 20% of the
  remaining interactions are held out; the rest trains.

Figures: ``lookalike evaluate --interactions`` definitions (lookalike.hybrid.heldout): the table's
top 10 against the held-out co-interactions, for warm and cold query items.

    .venv/bin/python bench/hybrid.py --embeddings /tmp/hyb/embeddings      # clothing-small (embed it first)
    .venv/bin/python bench/hybrid.py --scale-only                          # 25,000 x 600,000, synthetic

The embeddings of clothing-small come from the embed job (docs/hybrid.md gives the command).
Writes bench/results/hybrid.json.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
RESULTS = os.path.join(ROOT, "bench", "results")
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "clothing-small")

COLOURS = ("black", "white", "grey", "red", "yellow", "green", "blue", "purple")
COMPLEMENTS = {
    "t-shirt": ("pants", "shorts", "skirt", "shoes"),
    "shirt": ("pants", "skirt", "shoes", "outwear"),
    "longsleeve": ("pants", "skirt", "shoes", "outwear"),
    "outwear": ("pants", "longsleeve", "hat", "shoes"),
    "dress": ("shoes", "hat", "outwear"),
    "pants": ("t-shirt", "shirt", "longsleeve", "shoes"),
    "shorts": ("t-shirt", "shoes", "hat"),
    "skirt": ("t-shirt", "shirt", "shoes"),
    "shoes": ("pants", "dress", "shorts"),
    "hat": ("t-shirt", "dress", "outwear"),
}
POPULARITY_EXPONENT = 0.8
SESSIONS_PER_USER = 6
COMPLEMENT_P = 0.7
SAME_COLOUR_P = 0.6
NOISE_P = 0.1
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def colour_of(path: str) -> str:
    """The colour bin of a photo's central half (mean over pixels away from a white background)."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB").resize((64, 64)), np.float64)[16:48, 16:48] / 255
    pixels = rgb.reshape(-1, 3)
    garment = pixels[pixels.min(axis=1) < 0.92]  # not the studio background
    r, g, b = (garment if len(garment) else pixels).mean(axis=0)
    hue, light, sat = colorsys.rgb_to_hls(r, g, b)
    if sat < 0.2 or light < 0.15 or light > 0.85:
        return "black" if light < 0.3 else "white" if light > 0.7 else "grey"
    return ("red", "yellow", "green", "green", "blue", "blue", "purple", "red")[int(hue * 8) % 8]


def simulate(kinds: np.ndarray, colours: np.ndarray, n_users: int, seed: int = 0, sessions: int = SESSIONS_PER_USER):
    """(user index, item index) pairs of the generator described above, duplicates removed."""
    rng = np.random.default_rng(seed)
    n = len(kinds)
    popularity = np.empty(n)
    popularity[rng.permutation(n)] = np.arange(1, n + 1) ** -POPULARITY_EXPONENT
    kind_names, colour_names = sorted(set(kinds)), list(COLOURS)
    by_kind = {k: np.flatnonzero(kinds == k) for k in kind_names}
    colour_code = np.array([colour_names.index(c) for c in colours])
    users, items = [], []
    for user in range(n_users):
        kind_taste = rng.dirichlet(np.full(len(kind_names), 0.3))
        colour_taste = rng.dirichlet(np.full(len(colour_names), 0.3))

        def pick(kind, colour=None, colour_taste=colour_taste):
            members = by_kind[kind]
            taste = (
                colour_taste[colour_code[members]]
                if colour is None
                else np.where(colour_code[members] == colour, 1.0, 0.05)
            )
            weights = popularity[members] * (taste + 1e-3)
            return members[rng.choice(len(members), p=weights / weights.sum())]

        for _ in range(sessions):
            anchor = pick(kind_names[rng.choice(len(kind_names), p=kind_taste)])
            chosen = [anchor]
            if rng.random() < COMPLEMENT_P:
                options = [k for k in COMPLEMENTS[kinds[anchor]] if k in by_kind]
                for kind in rng.choice(options, size=min(len(options), rng.integers(1, 3)), replace=False):
                    colour = colour_code[anchor] if rng.random() < SAME_COLOUR_P else None
                    chosen.append(pick(kind, colour))
            if rng.random() < NOISE_P:
                chosen.append(rng.choice(n, p=popularity / popularity.sum()))
            users += [user] * len(chosen)
            items += chosen
    pairs = np.unique(np.stack([users, items], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def split(users: np.ndarray, items: np.ndarray, n_items: int, seed: int = 1):
    """(train mask, cold item mask): 20% of the items cold, 20% of the other interactions held out."""
    rng = np.random.default_rng(seed)
    cold = np.zeros(n_items, bool)
    cold[rng.choice(n_items, size=n_items // 5, replace=False)] = True
    train = ~cold[items] & (rng.random(len(items)) >= 0.2)
    return train, cold


def write_interactions(path: str, ids: np.ndarray, users: np.ndarray, items: np.ndarray) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {"user_id": [f"user-{u}" for u in users], "item_id": ids[items].tolist(), "weight": np.ones(len(users))}
        ),
        path,
    )
    return path


def run_job(spark, work: str, embeddings: str, interactions: str, alpha: float, name: str) -> tuple[str, dict]:
    from lookalike.config import from_dict
    from lookalike.jobs import hybrid

    out = os.path.join(work, name)
    cfg = from_dict(
        {
            "output": {
                "embeddings": embeddings,
                "hybrid": os.path.join(out, "hybrid"),
                "catalog": {"uri": os.path.join(out, "catalog.db")},
            },
            "neighbours": {"k": 10},
            "hybrid": {"interactions": interactions, "alpha": alpha},
        }
    )
    return os.path.join(out, "hybrid"), hybrid.run(spark, cfg)


def evaluate(table: str, held, train, k: int = 10) -> dict:
    from lookalike.hybrid import heldout
    from lookalike.io import tables

    tally = heldout.CoTally(held, k, train)
    for query_ids, sizes, neighbour_ids, _ in tables.iter_ranked_lists(
        table, k, columns=["item_id", "rank", "neighbour_id"]
    ):
        tally.add(query_ids, sizes, neighbour_ids)
    return tally.result()


def frames(ids, users, items, mask):
    import pandas as pd

    return pd.DataFrame({"user_id": [f"user-{u}" for u in users[mask]], "item_id": ids[items[mask]]})


def session():
    from lookalike.config import Config, SparkConfig
    from lookalike.jobs.common import build_session, setup_logging

    setup_logging("WARNING")
    # The executors' Python workers: this interpreter, finding lookalike where the driver does.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(ROOT, "lib"), os.environ.get("PYTHONPATH")]))
    conf = {"spark.sql.shuffle.partitions": 8, "spark.ui.enabled": "false", "spark.driver.memory": "6g"}
    return build_session(Config(spark=SparkConfig(master="local[2]", app_name="bench-hybrid", conf=conf)))


def clothing(spark, args, work: str) -> list[dict]:
    import csv

    from lookalike.io import tables

    ids = np.array(tables.read_table(args.embeddings, ["item_id"]).column("item_id").to_pylist(), dtype=object)
    labels = {}
    with open(os.path.join(args.data, "labels.csv"), encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            labels[os.path.splitext(row["path"])[0]] = row["label"]
    kinds = np.array([labels[i] for i in ids], dtype=object)
    colours = np.array([colour_of(os.path.join(args.data, i + ".jpg")) for i in ids], dtype=object)
    users, items = simulate(kinds, colours, args.users, seed=args.seed)
    train, cold = split(users, items, len(ids), seed=args.seed + 1)
    print(
        f"clothing-small: {len(ids)} items ({cold.sum()} cold), {args.users} users, {len(users)} interactions "
        f"({train.sum()} train, {(~train).sum()} held out); colours "
        f"{dict(zip(*np.unique(colours, return_counts=True), strict=True))}"
    )
    interactions = write_interactions(os.path.join(work, "train.parquet"), ids, users[train], items[train])
    held, trained = frames(ids, users, items, ~train), frames(ids, users, items, train)
    rows = []
    for alpha in args.alphas:
        started = time.perf_counter()
        table, summary = run_job(spark, work, args.embeddings, interactions, alpha, f"alpha-{alpha}")
        seconds = time.perf_counter() - started
        figures = evaluate(table, held, trained)
        rows.append({"alpha": alpha, "job_seconds": round(seconds, 1), **figures, "sources": summary["sources"]})
        print(
            f"alpha {alpha:.2f}: recall@10 all {figures['all']['recall_at_k']:.3f} "
            f"warm {figures['warm']['recall_at_k']:.3f} "
            f"cold {figures['cold']['recall_at_k']:.3f} | hit rate warm {figures['warm']['hit_rate_at_k']:.3f} "
            f"cold {figures['cold']['hit_rate_at_k']:.3f} | {seconds:.0f}s",
            flush=True,
        )
    return rows


def synthetic_embeddings(path: str, kinds: np.ndarray, colours: np.ndarray, dim: int, seed: int) -> str:
    """Vectors that look like their kind and colour: a centroid per kind plus one per colour plus noise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    kind_names, colour_names = sorted(set(kinds)), list(COLOURS)
    kc = rng.normal(size=(len(kind_names), dim))
    cc = rng.normal(size=(len(colour_names), dim)) * 0.6
    k_idx = np.array([kind_names.index(k) for k in kinds])
    c_idx = np.array([colour_names.index(c) for c in colours])
    vectors = (kc[k_idx] + cc[c_idx] + rng.normal(size=(len(kinds), dim)) * 1.2).astype(np.float32)
    n = len(kinds)
    os.makedirs(path, exist_ok=True)
    table = pa.table(
        {
            "item_id": [f"item-{i:06d}" for i in range(n)],
            "model": ["synthetic"] * n,
            "pooling": ["avg"] * n,
            "weights": ["synthetic"] * n,
            "dim": pa.array(np.full(n, dim, np.int32)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim).cast(pa.list_(pa.float32())),
        }
    )
    for part in range(4):
        pq.write_table(
            table.slice(part * n // 4, (part + 1) * n // 4 - part * n // 4), os.path.join(path, f"part-{part}.parquet")
        )
    return path


def scale(spark, args, work: str) -> dict:
    rng = np.random.default_rng(args.seed)
    kind_names = sorted(COMPLEMENTS)
    kinds = np.array(kind_names, dtype=object)[rng.integers(0, len(kind_names), args.scale_items)]
    colours = np.array(COLOURS, dtype=object)[rng.integers(0, len(COLOURS), args.scale_items)]
    ids = np.array([f"item-{i:06d}" for i in range(args.scale_items)], dtype=object)
    mark = time.perf_counter()
    users, items = simulate(kinds, colours, args.scale_users, seed=args.seed, sessions=SESSIONS_PER_USER)
    simulate_seconds = time.perf_counter() - mark
    train, _ = split(users, items, len(ids), seed=args.seed + 1)
    embeddings = synthetic_embeddings(os.path.join(work, "scale-embeddings"), kinds, colours, args.scale_dim, args.seed)
    interactions = write_interactions(os.path.join(work, "scale-train.parquet"), ids, users[train], items[train])
    print(f"scale: {len(ids)} items, {len(users)} interactions ({train.sum()} train), dim {args.scale_dim}", flush=True)
    mark = time.perf_counter()
    table, summary = run_job(spark, work, embeddings, interactions, args.alpha, "scale")
    train_seconds = time.perf_counter() - mark
    mark = time.perf_counter()
    figures = evaluate(table, frames(ids, users, items, ~train), frames(ids, users, items, train))
    eval_seconds = time.perf_counter() - mark
    result = {
        "items": int(len(ids)),
        "interactions": int(len(users)),
        "train_interactions": int(train.sum()),
        "dim": args.scale_dim,
        "alpha": args.alpha,
        "simulate_seconds": round(simulate_seconds, 1),
        "job_seconds": round(train_seconds, 1),
        "evaluate_seconds": round(eval_seconds, 1),
        "phase_seconds": summary["phase_seconds"],
        "figures": figures,
    }
    print(
        f"scale: hybrid job (ALS + ridge + blend + exact top-10 + write) {train_seconds:.0f}s, "
        f"evaluation {eval_seconds:.0f}s; recall@10 warm {figures['warm']['recall_at_k']:.3f} "
        f"cold {figures['cold']['recall_at_k']:.3f}",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embeddings", help="embeddings table of clothing-small (the embed job's output)")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    parser.add_argument("--alpha", type=float, default=0.5, help="the scale run's alpha")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale-only", action="store_true")
    parser.add_argument("--no-scale", action="store_true")
    parser.add_argument("--scale-items", type=int, default=25_000)
    parser.add_argument("--scale-users", type=int, default=47_500)
    parser.add_argument("--scale-dim", type=int, default=1280)
    args = parser.parse_args()
    if not args.scale_only and not args.embeddings:
        parser.error("--embeddings is required (or --scale-only)")
    spark = session()
    result: dict = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="bench-hybrid-") as work:
        if not args.scale_only:
            result[f"clothing_small_{args.users}_users"] = clothing(spark, args, work)
        if not args.no_scale:
            result["scale"] = scale(spark, args, work)
    spark.stop()
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "hybrid.json")
    # The two parts may run apart (--scale-only, --no-scale): each keeps the other's figures.
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            result = {**json.load(handle), **result}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
