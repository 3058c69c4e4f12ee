"""KerasHub image towers on this CPU: images/s of the model alone (Embedder.embed on decoded pixels)
in Keras float32, OpenVINO float32 and OpenVINO bfloat16, and how far bfloat16 is from float32.

The towers have the published base architectures (CLIP ViT-B/16 at 224 px, SigLIP base patch 16 at
224 px, DINOv2 base patch 14 at model.image_size 224 and at its 518) with random-init weights
(no network here to fetch the real ones; the FLOPs are the same), saved with save_to_preset and run
through model.name=keras_hub as the jobs run them. The text towers are tiny: they are never run.

    .venv/bin/python bench/keras_hub_throughput.py [--families clip,siglip,dinov2] [--n 64]

Prints a table and writes bench/results/keras_hub_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
SAMPLE = ROOT / "samples" / "clothing"


def build(family: str, directory: Path) -> Path:
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    text = {"vocabulary_size": 100, "embedding_dim": 64, "hidden_dim": 64, "num_layers": 1, "num_heads": 1}
    base = {"hidden_dim": 768, "num_layers": 12, "num_heads": 12, "intermediate_dim": 3072}
    if family == "clip":
        backbone = keras_hub.models.CLIPBackbone(
            vision_encoder=keras_hub.models.CLIPVisionEncoder(patch_size=16, image_shape=(224, 224, 3), **base),
            text_encoder=keras_hub.models.CLIPTextEncoder(intermediate_dim=64, max_sequence_length=8, **text),
            projection_dim=512,
        )
        converter = keras_hub.layers.CLIPImageConverter(
            image_size=(224, 224), scale=1 / 255 / 0.27, offset=-0.45 / 0.27, interpolation="bicubic"
        )
    elif family == "siglip":
        backbone = keras_hub.models.SigLIPBackbone(
            vision_encoder=keras_hub.models.SigLIPVisionEncoder(patch_size=16, image_shape=(224, 224, 3), **base),
            text_encoder=keras_hub.models.SigLIPTextEncoder(intermediate_dim=64, max_sequence_length=8, **text),
        )
        converter = keras_hub.layers.SigLIPImageConverter(image_size=(224, 224), scale=1 / 127.5, offset=-1.0)
    else:
        backbone = keras_hub.models.DINOV2Backbone(
            patch_size=14, image_shape=(518, 518, 3), position_embedding_shape=(518, 518, 3), **base
        )
        converter = keras_hub.layers.DINOV2ImageConverter(
            image_size=(518, 518), scale=1 / 255 / 0.226, offset=-0.45 / 0.226, interpolation="bicubic"
        )
    backbone.save_to_preset(str(directory))
    converter.save_to_preset(str(directory))
    return directory


def measure(cfg, pixels_of, repeats: int = 2) -> tuple[float, np.ndarray, float]:
    """(images/s of embed, the embeddings, load seconds): the best of ``repeats`` passes after a warm-up batch."""
    from lookalike.embed.model import Embedder

    started = time.perf_counter()
    embedder = Embedder(cfg, threads=os.cpu_count() or 1)
    load = time.perf_counter() - started
    pixels = pixels_of(embedder)
    embedder.embed(pixels[: cfg.batch_size])
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        out = embedder.embed(pixels)
        best = min(best, time.perf_counter() - started)
    return len(pixels) / best, out, load


def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="clip,siglip,dinov2")
    parser.add_argument("--n", type=int, default=64, help="photos per pass (from samples/clothing)")
    parser.add_argument("--out", default=str(RESULTS / "keras_hub_throughput.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from lookalike.config import ModelConfig
    from lookalike.embed import images

    photos = [p.read_bytes() for p in sorted(SAMPLE.rglob("*.jpg"))][: args.n]

    def pixels_of(embedder):
        return np.stack([images.decode(d, 0, embedder.input_size, embedder.interpolation)[0] for d in photos])

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for family in args.families.split(","):
            preset = build(family, Path(work) / family)
            for image_size in (224, None) if family == "dinov2" else (None,):
                common = dict(name="keras_hub", preset=str(preset), image_size=image_size, batch_size=16)
                common["cache_dir"] = str(Path(work) / "ir")
                label = f"{family}" + (f" @{image_size or 518}" if family == "dinov2" else "")
                speed, want, load = measure(ModelConfig(**common, precision="float32", runtime="keras"), pixels_of)
                row = {"model": label, "keras_f32": speed, "keras_load_s": load}
                for precision in ("float32", "bfloat16"):
                    got_speed, got, load = measure(
                        ModelConfig(**common, precision=precision, runtime="openvino"), pixels_of
                    )
                    key = "openvino_" + ("f32" if precision == "float32" else "bf16")
                    row[key], row[key + "_min_cosine"], row[key + "_load_s"] = (
                        got_speed,
                        float(cosines(got, want).min()),
                        load,
                    )
                rows.append(row)
                print(json.dumps(row), flush=True)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\nimages/s, model alone, {os.cpu_count()} cores ({cpu}), {args.n} sample photos, batch 16")
    print("| model | Keras float32 | OpenVINO float32 | OpenVINO bfloat16 | bf16 min cosine vs Keras f32 |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['keras_f32']:.1f} | {r['openvino_f32']:.1f} | {r['openvino_bf16']:.1f} "
            f"| {r['openvino_bf16_min_cosine']:.4f} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cpu": cpu, "cores": os.cpu_count(), "n": args.n, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
