"""Embed throughput: the Spark job against the script a user would write instead.

(a) raw Keras in one fresh process: load VGG16, then for each batch keras.utils.load_img
    (224x224) + vgg16.preprocess_input + predict_on_batch; wall time includes imports and the
    model load, as a user's script would pay them.
(b) the embed job through ./spark-submit.sh on local[*], cold (new JVM, new Python workers),
    end to end: listing, decoding, inference, Parquet writes, summary.

Both run on the same N images, one after the other in this run, with random-init weights
(ImageNet weights cannot be downloaded here; the compute is identical). Prints a table and writes
JSON to bench/results/embed_throughput.json.

    .venv/bin/python bench/embed_throughput.py [--images DIR] [--n 1000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "clothing-small"

RAW_SCRIPT = r"""
import os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
started = time.perf_counter()
import numpy as np, keras
from keras.applications import vgg16
paths = [line.strip() for line in open(sys.argv[1])]
batch_size = int(sys.argv[2])
keras.utils.set_random_seed(0)
model = vgg16.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3), pooling="avg")
loaded = time.perf_counter()
rows = 0
for start in range(0, len(paths), batch_size):
    batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(224, 224)))
                      for p in paths[start:start + batch_size]])
    rows += len(model.predict_on_batch(vgg16.preprocess_input(batch)))
print(f"RESULT {rows} {time.perf_counter() - started:.3f} {loaded - started:.3f}")
"""


def pick_images(source: Path, n: int) -> list[Path]:
    found = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(found) < n:
        sys.exit(f"only {len(found)} images under {source}, asked for {n}")
    # Every k-th file, so that all classes and sizes are represented.
    step = len(found) / n
    return [found[int(i * step)] for i in range(n)]


def run_raw(paths: list[Path], batch_size: int, workdir: Path) -> dict:
    listing = workdir / "paths.txt"
    listing.write_text("\n".join(str(p) for p in paths))
    script = workdir / "raw.py"
    script.write_text(RAW_SCRIPT)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(script), str(listing), str(batch_size)],
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    rows, inner, load = next(line for line in out.stdout.splitlines() if line.startswith("RESULT")).split()[1:]
    return {"images": int(rows), "seconds": round(wall, 2), "model_load_seconds": float(load),
            "images_per_second": round(int(rows) / wall, 3)}


def run_job(paths: list[Path], batch_size: int, workdir: Path) -> dict:
    images = workdir / "images"
    for index, path in enumerate(paths):
        link = images / path.parent.name / f"{index:05d}-{path.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    out = workdir / "out"
    command = [str(ROOT / "spark-submit.sh"), "embed", "--config", str(ROOT / "conf" / "local.yaml"),
               "--set", f"input.uri={images}", "--set", "model.weights=none", "--set", "model.seed=0",
               "--set", f"model.batch_size={batch_size}", "--set", "input.partition_size=64",
               "--set", f"output.embeddings={out}/emb", "--set", f"output.errors={out}/err"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"embed job failed:\n{result.stderr[-4000:]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return {"images": summary["embedded"], "seconds": round(wall, 2), "job_seconds": summary["seconds"],
            "model_loads": summary["model_loads"], "partitions": summary["partitions"],
            "images_per_second": round(summary["embedded"] / wall, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embed_throughput.json")
    args = parser.parse_args(argv)

    paths = pick_images(args.images, args.n)
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        raw = run_raw(paths, args.batch_size, Path(tmp))
        job = run_job(paths, args.batch_size, Path(tmp))
    ratio = job["images_per_second"] / raw["images_per_second"]
    result = {"n": args.n, "batch_size": args.batch_size, "raw_keras": raw, "embed_job": job,
              "job_over_raw": round(ratio, 3), "target": 0.9, "cpus": os.cpu_count(),
              "machine": platform.machine(), "weights": "random-init (same FLOPs as imagenet)"}
    print(f"\nembed throughput, N={args.n}, batch {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"{'':32s}{'images':>8s}{'seconds':>10s}{'img/s':>8s}")
    print(f"{'raw Keras (1 process)':32s}{raw['images']:8d}{raw['seconds']:10.1f}{raw['images_per_second']:8.2f}")
    print(f"{'embed job (spark-submit, cold)':32s}{job['images']:8d}{job['seconds']:10.1f}{job['images_per_second']:8.2f}")
    print(f"job / raw = {ratio:.2f} (target >= 0.9)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
