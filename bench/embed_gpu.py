"""The embed core on one accelerator: images/s for decode + preprocess + model, against the model alone.

For each precision and batch size:
  model   Embedder.embed on uint8 batches already in memory (host->device copy included), after a
          warm-up that compiles it: the ceiling the core can reach.
  core    the embed job's own partition function (lookalike.embed.stage.make_embed_function) on JPEG
          files: fetch, decode and resize on a thread pool that works on the next batch while the
          model runs on this one, exactly as in a Spark task with spark.task.cpus = --threads.
and once:
  decode  the same thread pool decoding alone: the CPU side's ceiling.

Runs with any Keras 3 backend: on a GPU machine without TensorFlow, ``KERAS_BACKEND=jax`` with
``pip install keras==3.15.1 pillow pandas pyyaml`` and ``PYTHONPATH=lib``. Prints a table and writes
bench/results/embed_gpu.json.

    KERAS_BACKEND=jax PYTHONPATH=lib python bench/embed_gpu.py [--images N] [--batch-sizes 64,128,256,512]
        [--precisions float32,bfloat16] [--threads T] [--source DIR] [--jit auto|on|off] [--runtime auto]
    .venv/bin/python bench/embed_gpu.py --smoke      # tiny settings: checks that it runs, on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lookalike.config import Config, InputConfig, ModelConfig  # noqa: E402
from lookalike.embed import hardware, images, model  # noqa: E402
from lookalike.embed import stage as embed  # noqa: E402
from lookalike.io import storage  # noqa: E402
from lookalike.io.uris import file_uri  # noqa: E402

SOURCES = [ROOT.parent / "shared" / "data" / "clothing-small", ROOT / "samples" / "clothing"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192, help="JPEG files decoded per core measurement")
    parser.add_argument("--batch-sizes", default="64,128,256,512")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="decode threads (spark.task.cpus)")
    parser.add_argument("--repeats", type=int, default=20, help="timed batches for the model-only figure")
    parser.add_argument("--jit", choices=("auto", "on", "off"), default="auto", help="model.jit_compile")
    parser.add_argument(
        "--runtime",
        choices=("auto", "keras", "openvino"),
        default="auto",
        help="model.runtime; auto is Keras on a GPU (OpenVINO is CPU-only) and OpenVINO on a CPU",
    )
    parser.add_argument(
        "--source", type=Path, default=None, help="directory of JPEGs (default: shared data or samples)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny settings for a quick check on CPU")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embed_gpu.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.batch_sizes, args.repeats, args.threads = 16, "2,4", 2, min(args.threads, 2)
    return args


def device_description() -> dict:
    backend = model.keras_backend()
    devices = []
    try:
        if backend == "jax":
            import jax

            devices = [f"{d.platform}:{getattr(d, 'device_kind', d)}" for d in jax.devices()]
        elif backend == "tensorflow":
            import tensorflow as tf

            devices = [d.name for d in tf.config.list_physical_devices()]
        elif backend == "torch":
            import torch

            devices = [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cpu"]
    except Exception as exc:  # a description only; never fail the benchmark over it
        devices = [f"unknown ({exc})"]
    gpu = shutil.which("nvidia-smi")
    name = os.popen(f"{gpu} --query-gpu=name --format=csv,noheader").read().strip() if gpu else ""
    return {
        "backend": backend,
        "devices": devices,
        "gpu": name or None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def stage_images(source: Path, n: int, into: Path) -> list[str]:
    """``n`` distinct files (copies of the source JPEGs, cycled), as the file:// URIs the job uses."""
    found = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not found:
        raise SystemExit(f"no JPEG files under {source}")
    uris = []
    for i in range(n):
        target = into / f"{i:07d}.jpg"
        shutil.copyfile(found[i % len(found)], target)
        uris.append(file_uri(str(target)))
    return uris


def decode_rate(uris: list[str], threads: int) -> float:
    def load(uri):
        return images.decode(storage.fetch(uri, Config().s3, 1 << 26))[0]

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(load, uris[: min(len(uris), 256)]))  # warm the page cache and Pillow
        started = time.perf_counter()
        list(pool.map(load, uris))
        return len(uris) / (time.perf_counter() - started)


def model_rate(cfg: Config, repeats: int) -> tuple[float, str]:
    embedder = model.get_embedder(cfg.model, cfg.s3)
    batch = np.random.default_rng(0).integers(0, 256, (cfg.model.batch_size, 224, 224, 3), dtype=np.uint8)
    embedder.embed(batch)
    embedder.embed(batch)  # compile and settle
    started = time.perf_counter()
    for _ in range(repeats):
        embedder.embed(batch)
    return repeats * len(batch) / (time.perf_counter() - started), embedder.runtime


def core_rate(cfg: Config, uris: list[str], threads: int) -> tuple[float, int]:
    function = embed.make_embed_function(cfg, "bench", task_cpus=threads)
    frame = pd.DataFrame(
        {
            "item_id": [str(i) for i in range(len(uris))],
            "uri": uris,
            "source_version": None,
            "source_bytes": pd.array([None] * len(uris), dtype="Int64"),
        }
    )
    list(function(iter([frame.head(cfg.model.batch_size * 2)])))  # model built and compiled already
    started = time.perf_counter()
    out = pd.concat(list(function(iter([frame]))))
    seconds = time.perf_counter() - started
    return len(uris) / seconds, int(out["error"].notna().sum())


def main(argv=None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    source = args.source or next((s for s in SOURCES if s.is_dir()), SOURCES[-1])
    info = device_description()
    print(
        f"backend {info['backend']}, devices {info['devices']}, gpu {info['gpu']}, {info['cpus']} CPUs; "
        f"{args.images} images from {source}, {args.threads} decode threads"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        uris = stage_images(source, args.images, Path(tmp))
        decode = decode_rate(uris, args.threads)
        print(
            f"decode alone: {decode:,.0f} images/s on {args.threads} threads "
            f"({args.threads / decode * 1000:.2f} ms per image per thread)"
        )
        jit = {"auto": None, "on": True, "off": False}[args.jit]
        for precision in args.precisions.split(","):
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                cfg = Config(
                    model=ModelConfig(
                        weights="none",
                        precision=precision,
                        batch_size=batch_size,
                        jit_compile=jit,
                        threads=args.threads,
                        runtime=args.runtime,
                    ),
                    input=InputConfig(uri=tmp),
                )
                # A job decides auto on its executors first; here this process's device decides.
                cfg = Config(model=hardware.resolve_here(cfg.model), input=cfg.input)
                model_ips, runtime = model_rate(cfg, args.repeats)
                core_ips, errors = core_rate(cfg, uris, args.threads)
                row = {
                    "precision": precision,
                    "runtime": runtime,
                    "batch_size": batch_size,
                    "model_images_per_s": round(model_ips, 1),
                    "core_images_per_s": round(core_ips, 1),
                    "core_share_of_model": round(core_ips / model_ips, 3),
                    "errors": errors,
                }
                rows.append(row)
                print(
                    f"  {precision:9s} {runtime:8s} batch {batch_size:4d}: "
                    f"model {model_ips:9,.0f}/s   core {core_ips:9,.0f}/s "
                    f"({row['core_share_of_model']:.0%} of model)"
                )
    print("\n| precision | runtime | batch | model alone (images/s) | decode + preprocess + model (images/s) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['precision']} | {r['runtime']} | {r['batch_size']} | "
            f"{r['model_images_per_s']:,.0f} | {r['core_images_per_s']:,.0f} |"
        )
    print(f"\ndecode + resize alone: {decode:,.0f} images/s on {args.threads} threads")
    result = {
        "device": info,
        "images": args.images,
        "source": str(source),
        "threads": args.threads,
        "jit_compile": args.jit,
        "decode_images_per_s": round(decode, 1),
        "rows": rows,
        "smoke": args.smoke,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
