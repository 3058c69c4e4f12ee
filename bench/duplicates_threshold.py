"""Where duplicates.min_score should sit: cosines of photos with their own altered copies against
cosines of distinct photos, with EfficientNet-Lite0's ImageNet weights (packaged: no network).

Takes ``--photos`` photos from the labelled clothing set (the same number from every label, in path
order), and for ``--altered`` of them (spread evenly) altered copies, made with Pillow:

  resized   scaled to 60% of its width and height (saved as JPEG, quality 95)
  jpeg60    re-encoded as JPEG, quality 60
  cropped   5% cut from every side (saved as JPEG, quality 95)
  cropped2  2% cut from every side (saved as JPEG, quality 95): how fast a crop costs similarity

An altered photo's *group* is the original with its resized, jpeg60 and cropped copies (cropped2 is
measured against the original only).

Every image goes through the job's decoder (``lookalike.embed.images.decode``) and model
(``lookalike.embed.model.Embedder``, float32 on Keras: bit-reproducible, the reference), and is
compared by cosine (float64 dot product of unit vectors). Prints, and writes to
bench/results/duplicates_threshold.json:

  copies    per alteration, min / mean cosine between an original and that copy; and the min over
            every pair inside a group (copy against copy too)
  distinct  the max cosine between two different originals, the max between a copy and an original
            it was not made from, and the top pairs of different originals by name
  gap       the interval a threshold can sit in (empty where the two overlap), and its midpoint
  sweep     per candidate threshold (``--thresholds``): the share of copies of each kind at or above
            it, the share of groups that are one connected component at that threshold, and the
            pairs of different originals at or above it

    .venv/bin/python bench/duplicates_threshold.py                      # 100 photos, 30 altered
    .venv/bin/python bench/duplicates_threshold.py --photos 4000 --altered 100 --top 12   # all 3,781 (docs)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import time
from collections import defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "clothing-small")
SAMPLES = os.path.join(ROOT, "samples", "clothing")
ALTERATIONS = ("resized", "jpeg60", "cropped", "cropped2")
GROUP = ("original", "resized", "jpeg60", "cropped")
CROPS = {"cropped": 0.05, "cropped2": 0.02}


def choose_photos(data: str, n: int) -> list[str]:
    """``n`` photo paths, the same number per label (the first ones in path order), labels in turn."""
    by_label: dict = defaultdict(list)
    labels_csv = os.path.join(data, "labels.csv")
    if os.path.exists(labels_csv):
        with open(labels_csv, newline="") as handle:
            for row in csv.DictReader(handle):
                by_label[row["label"]].append(os.path.join(data, row["path"]))
    else:  # samples/clothing: one folder per label
        for label in sorted(os.listdir(data)):
            folder = os.path.join(data, label)
            if os.path.isdir(folder):
                by_label[label] = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jpg")]
    queues = [sorted(paths) for _, paths in sorted(by_label.items())]
    chosen: list[str] = []
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def altered(data: bytes, kind: str) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        width, height = img.size
        quality = 95
        if kind == "resized":
            img = img.resize((round(width * 0.6), round(height * 0.6)), Image.BICUBIC)
        elif kind == "jpeg60":
            quality = 60
        elif kind in CROPS:
            dx, dy = round(width * CROPS[kind]), round(height * CROPS[kind])
            img = img.crop((dx, dy, width - dx, height - dy))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=quality)
        return out.getvalue()


def embed(blobs: list[bytes], precision: str, runtime: str) -> tuple[np.ndarray, str]:
    from lookalike.config import ModelConfig
    from lookalike.embed import images, model

    cfg = ModelConfig(
        name="efficientnet_lite0", weights="imagenet", precision=precision, runtime=runtime, batch_size=32
    )
    embedder = model.Embedder(cfg, threads=os.cpu_count() or 1)
    pixels = np.stack([images.decode(blob, 0, embedder.input_size)[0] for blob in blobs])
    return embedder.embed(pixels), embedder.weights_tag


def sweep(
    threshold: float,
    cos: np.ndarray,
    owner: np.ndarray,
    kind: np.ndarray,
    sources: list[int],
    originals_cos: np.ndarray,
) -> dict:
    """What one min_score would find: copies found per kind, groups found whole, false pairs."""
    copies = {}
    for alteration in ALTERATIONS:
        rows = np.flatnonzero(kind == alteration)
        copies[alteration] = float((cos[rows, owner[rows]] >= threshold).mean())
    whole = 0
    for index in sources:
        members = np.flatnonzero((owner == index) & np.isin(kind, GROUP))
        linked = cos[np.ix_(members, members)] >= threshold
        reached = {0}
        while True:  # a handful of members: a plain closure
            grown = reached | {int(j) for i in reached for j in np.flatnonzero(linked[i])}
            if grown == reached:
                break
            reached = grown
        whole += len(reached) == len(members)
    return {
        "threshold": threshold,
        "copies": copies,
        "whole_group": whole / len(sources),
        "distinct_pairs": int((originals_cos >= threshold).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA if os.path.isdir(DEFAULT_DATA) else SAMPLES)
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--altered", type=int, default=30)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--runtime", default="keras")
    parser.add_argument("--top", type=int, default=5, help="closest pairs of distinct photos to list")
    parser.add_argument(
        "--thresholds",
        default="0.85,0.88,0.90,0.91,0.92,0.93,0.94,0.95,0.96",
        help="candidate min_score values to tabulate (comma-separated)",
    )
    args = parser.parse_args()

    started = time.perf_counter()
    photos = choose_photos(args.data, args.photos)
    originals = [open(path, "rb").read() for path in photos]
    step = max(1, len(photos) // max(args.altered, 1))
    sources = list(range(0, len(photos), step))[: args.altered]
    blobs, owner, kind = list(originals), list(range(len(photos))), ["original"] * len(photos)
    for index in sources:
        for alteration in ALTERATIONS:
            blobs.append(altered(originals[index], alteration))
            owner.append(index)
            kind.append(alteration)
    vectors, weights = embed(blobs, args.precision, args.runtime)
    x = vectors.astype(np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = unit @ unit.T
    owner_a, kind_a = np.array(owner), np.array(kind)
    n = len(photos)

    copies = {}
    for alteration in ALTERATIONS:
        rows = np.flatnonzero(kind_a == alteration)
        values = cos[rows, owner_a[rows]]
        copies[alteration] = {"min": float(values.min()), "mean": float(values.mean()), "n": int(len(values))}
    within = [
        cos[np.ix_(members, members)][np.triu_indices(len(members), 1)].min()
        for members in (np.flatnonzero((owner_a == index) & np.isin(kind_a, GROUP)) for index in sources)
    ]
    copy_min = min(c["min"] for kind_name, c in copies.items() if kind_name in GROUP)

    upper = np.triu_indices(n, 1)
    originals_cos = cos[:n, :n][upper]
    other = owner_a[None, :] != owner_a[:, None]
    copy_vs_other = cos[n:][other[n:]]
    order = np.argsort(-originals_cos)[: args.top]
    rel = [os.path.relpath(p, args.data) for p in photos]
    distinct_max = float(max(originals_cos.max(), copy_vs_other.max() if len(copy_vs_other) else -1))
    result = {
        "data": os.path.relpath(os.path.abspath(args.data), ROOT),
        "photos": n,
        "altered": len(sources),
        "model": "efficientnet_lite0",
        "weights": weights,
        "precision": args.precision,
        "runtime": args.runtime,
        "copies": copies,
        "copy_min": copy_min,
        "group_min": float(min(within)),
        "distinct": {
            "originals_max": float(originals_cos.max()),
            "originals_p99": float(np.percentile(originals_cos, 99)),
            "originals_p999": float(np.percentile(originals_cos, 99.9)),
            "copy_vs_other_max": float(copy_vs_other.max()) if len(copy_vs_other) else None,
            "max": distinct_max,
            "pairs": int(len(originals_cos)),
            "top": [[rel[upper[0][i]], rel[upper[1][i]], float(originals_cos[i])] for i in order],
        },
        "gap": [distinct_max, float(min(copy_min, min(within)))],
        "midpoint": (distinct_max + min(copy_min, min(within))) / 2,
        "sweep": [
            sweep(t, cos, owner_a, kind_a, sources, originals_cos)
            for t in (float(v) for v in args.thresholds.split(","))
        ],
        "seconds": round(time.perf_counter() - started, 1),
        "machine": platform.machine(),
    }
    print(
        f"{n} photos from {result['data']}, {len(sources)} with {len(ALTERATIONS)} altered copies; "
        f"efficientnet_lite0 imagenet, {args.precision} on {args.runtime}"
    )
    print("original vs its copy      min      mean")
    for alteration, c in copies.items():
        print(f"  {alteration:<22}{c['min']:.4f}   {c['mean']:.4f}")
    print(f"  any two in a group      {result['group_min']:.4f}")
    print(
        f"distinct photos: max {result['distinct']['originals_max']:.4f} over {len(originals_cos)} pairs "
        f"(p99 {result['distinct']['originals_p99']:.4f}, p99.9 {result['distinct']['originals_p999']:.4f}); "
        f"copy vs another photo max {result['distinct']['copy_vs_other_max']:.4f}"
    )
    for a, b, score in result["distinct"]["top"]:
        print(f"  {score:.4f}  {a}  {b}")
    print(
        f"gap: {result['gap'][0]:.4f} .. {result['gap'][1]:.4f}, midpoint {result['midpoint']:.4f} "
        f"({result['seconds']}s)"
    )
    print("threshold  " + "  ".join(f"{a:>8}" for a in ALTERATIONS) + "  group whole  distinct pairs")
    for row in result["sweep"]:
        print(
            f"{row['threshold']:<9.2f}  "
            + "  ".join(f"{row['copies'][a]:>8.3f}" for a in ALTERATIONS)
            + f"  {row['whole_group']:>11.3f}  {row['distinct_pairs']:>13d}"
        )
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "duplicates_threshold.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
