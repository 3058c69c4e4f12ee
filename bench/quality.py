"""Recommendation quality through the whole pipeline, per backbone and pooling, on labelled photos,
cross-checked against the same figures computed directly (no Spark).

For each configuration:
  pipeline  ``./spark-submit.sh embed`` and ``./spark-submit.sh neighbours`` (k = 10) as whole
            processes, then ``lookalike evaluate`` for k = 1, 5, 10 on their tables;
  direct    the same files decoded with ``lookalike.embed.images.decode`` (the job's decoder),
            the same Keras model (``lookalike.embed.model.Embedder``) called in this process,
            brute-force cosine top-10 in numpy over the full N x N score matrix (the job's
            canonical score and tie rule: float32 of the float64 dot product of float32 unit
            vectors; score descending, then item id ascending), and the metrics computed by an
            independent numpy implementation of the definitions (also compared with
            ``lookalike.tools.evaluate.evaluate``).
Every figure must agree within TOLERANCE; a row that does not prints FAIL and the script exits 1.

    .venv/bin/python bench/quality.py                                   # the default configurations
    .venv/bin/python bench/quality.py --configs vgg16-random-avg --limit 100   # a quick check
    .venv/bin/python bench/quality.py --configs efficientnet_lite0:avg:imagenet:500 --split train

Catalogue adaptation (neighbours.center, neighbours.augment; the direct pass computes it again in
numpy): ``:center`` and/or ``:augment=M`` after a configuration; configurations that differ only
in these share one embed run (pipeline and direct):

    .venv/bin/python bench/quality.py --configs lite0-avg,lite0-avg:center,lite0-avg:augment=2

A configuration is a name from CONFIGS or ``backbone:pooling:weights[:limit]``. ``--limit N`` (or a
configuration's own limit) takes a stratified subset: the first N // labels photos of every label,
sorted by path. Writes bench/results/quality.json.

A KerasHub preset (docs/backbones.md) is ``keras_hub:avg:imagenet`` with ``--preset DIR`` (and, for
DINOv2, ``--image-size 224``); its pooling is the family's own, whatever the configuration says:

    .venv/bin/python bench/quality.py --configs keras_hub:avg:imagenet --preset /models/clip_vit_base_patch16
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "clothing-small")
CONFIG_FILE = os.path.join(ROOT, "conf", "local.yaml")
KS = (1, 5, 10)
TOLERANCE = 1e-3


@dataclass(frozen=True)
class Setup:
    name: str
    backbone: str
    pooling: str
    weights: str
    # Photos used (stratified subset); None = every photo of the split.
    limit: int | None = None
    # Always explicit: model.precision=auto would pick bfloat16 on CPUs with AMX/AVX512-BF16, on
    # the executors, and the figures would depend on the machine.
    precision: str = "float32"
    runtime: str = "keras"
    # Catalogue adaptation (neighbours.center, neighbours.augment), in the job and the direct pass.
    center: bool = False
    augment: int = 0

    @property
    def embedding(self) -> tuple:
        """What decides the embeddings: setups that differ only in post-processing share one embed run."""
        return (self.backbone, self.pooling, self.weights, self.limit, self.precision, self.runtime)


CONFIGS = {
    s.name: s
    for s in (
        Setup("lite0-avg", "efficientnet_lite0", "avg", "imagenet"),
        Setup("lite0-max", "efficientnet_lite0", "max", "imagenet"),
        # The larger Lite models (240 and 260 px; their own pip packages; not run by default).
        Setup("lite1-avg", "efficientnet_lite1", "avg", "imagenet"),
        Setup("lite2-avg", "efficientnet_lite2", "avg", "imagenet"),
        # The floor: untrained convolutions. ~10 images/s per pass here, so a subset.
        Setup("vgg16-random-avg", "vgg16", "avg", "none", 1000),
        # What model.precision=auto chooses on CPUs with bfloat16 units (not run by default).
        Setup("lite0-avg-bf16", "efficientnet_lite0", "avg", "imagenet", precision="bfloat16"),
    )
}
DEFAULT_CONFIGS = ("lite0-avg", "lite0-max", "vgg16-random-avg")


def parse_setup(text: str) -> Setup:
    # Post-processing anywhere after the name: lite0-avg:center, efficientnet_lite0:avg:imagenet:augment=2.
    parts = text.split(":")
    post = [p for p in parts[1:] if p == "center" or p.startswith("augment=")]
    if post:
        base = parse_setup(":".join(p for p in parts if p not in post))
        augment = max([int(p.split("=", 1)[1]) for p in post if p.startswith("augment=")] or [0])
        return replace(base, name=text.replace(":", "-").replace("=", ""), center="center" in post, augment=augment)
    if text in CONFIGS:
        return CONFIGS[text]
    if len(parts) not in (3, 4, 5):
        raise SystemExit(
            f"--configs: {text!r} is neither one of {', '.join(CONFIGS)} nor "
            f"backbone:pooling:weights[:limit[:precision]]"
        )
    limit = int(parts[3]) if len(parts) >= 4 and parts[3] else None
    precision = parts[4] if len(parts) == 5 else "float32"
    return Setup(text.replace(":", "-"), parts[0], parts[1], parts[2], limit, precision)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------------------
# The photos


def read_labels(data: str) -> list[dict]:
    with open(os.path.join(data, "labels.csv"), encoding="utf-8-sig", newline="") as handle:
        return [{k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(handle)]


def select(rows: list[dict], split: str, limit: int | None) -> list[dict]:
    """The rows of ``split`` ('all': every row); with ``limit``, the first limit // labels rows of
    every label sorted by path (every row of a label that has fewer)."""
    chosen = [r for r in rows if split == "all" or r.get("split") == split]
    chosen.sort(key=lambda r: r["path"])
    if limit is None or limit >= len(chosen):
        return chosen
    labels = sorted({r["label"] for r in chosen})
    per_label = max(1, limit // len(labels))
    taken: dict[str, int] = {}
    subset = []
    for r in chosen:
        if taken.get(r["label"], 0) < per_label:
            taken[r["label"]] = taken.get(r["label"], 0) + 1
            subset.append(r)
    return subset


def item_id(path: str) -> str:
    """The embed job's default id: the key without its extension (lookalike.embed.listing)."""
    return os.path.splitext(path)[0]


def prepare_input(data: str, rows: list[dict], every_row: list[dict], work: str) -> str:
    """The directory the embed job reads: the data set itself when every photo is used, else a
    tree of symlinks with the same relative paths (the local listing lists symlinked files)."""
    if len(rows) == len(every_row):
        return os.path.abspath(data)
    root = os.path.join(work, "input")
    for r in rows:
        target = os.path.join(root, r["path"])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.path.abspath(os.path.join(data, r["path"])), target)
    return root


def write_labels(rows: list[dict], path: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for r in rows:
            writer.writerow([r["path"], r["label"]])


# ----------------------------------------------------------------------------------------------
# The pipeline: the real jobs as processes


def run_logged(command: list[str], log_path: str) -> tuple[float, str]:
    """Run ``command`` in the repository root with its output in ``log_path``: (wall seconds,
    stdout). Exits with the log's tail on failure."""
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        log.write("\n--- stdout ---\n" + process.stdout)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        with open(log_path, encoding="utf-8") as log:
            tail = log.read()[-4000:]
        raise SystemExit(f"failed (exit {process.returncode}): {' '.join(command)}\n{tail}\n(log: {log_path})")
    return seconds, process.stdout


def last_json(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def overrides(setup: Setup, input_uri: str, out: str) -> list[str]:
    return [
        f"input.uri={input_uri}",
        # A --limit subset is a tree of symlinks into the data set.
        "input.follow_links=true",
        f"model.name={setup.backbone}",
        f"model.weights={setup.weights}",
        f"model.pooling={setup.pooling}",
        f"model.precision={setup.precision}",
        f"model.runtime={setup.runtime}",
        f"output.embeddings={out}/emb",
        f"output.errors={out}/err",
        # Where it is by default (beside the embeddings), also when they are an earlier setup's.
        f"output.catalog.uri={out}/catalog.db",
        f"neighbours.k={max(KS)}",
        f"output.neighbours={out}/nb",
        f"neighbours.center={str(setup.center).lower()}",
        f"neighbours.augment={setup.augment}",
    ]


def run_pipeline(setup: Setup, sets: list[str], labels_csv: str, out: str, embedded: dict | None = None) -> dict:
    """``embedded``: an earlier setup's pipeline result with the same embeddings (its table is in
    ``sets``): the embed job is not run again."""
    submit = [os.path.join(ROOT, "spark-submit.sh")]
    args = ["--config", CONFIG_FILE]
    for s in sets:
        args += ["--set", s]
    if embedded is None:
        embed_s, embed_out = run_logged(submit + ["embed"] + args, os.path.join(out, "embed.log"))
        summary = last_json(embed_out)
        print(f"  pipeline: embed job {embed_s:.1f}s", flush=True)
    else:
        embed_s, summary = embedded["seconds"]["embed_job"], embedded["embed_summary"]
        print("  pipeline: the embeddings of an earlier configuration (same model settings)", flush=True)
    neighbours_s, _ = run_logged(submit + ["neighbours"] + args, os.path.join(out, "neighbours.log"))
    print(f"  pipeline: neighbours job {neighbours_s:.1f}s", flush=True)
    emb = next(s.split("=", 1)[1] for s in sets if s.startswith("output.embeddings="))
    lookalike = os.path.join(os.path.dirname(sys.executable), "lookalike")
    if not os.path.exists(lookalike):
        lookalike = os.path.join(ROOT, ".venv", "bin", "lookalike")
    by_k = {}
    started = time.perf_counter()
    for k in KS:
        target = os.path.join(out, f"evaluate-k{k}.json")
        run_logged(
            [
                lookalike,
                "evaluate",
                "--neighbours",
                f"{out}/nb",
                "--embeddings",
                emb,
                "--labels",
                labels_csv,
                "-k",
                str(k),
                "--json",
                target,
            ],
            os.path.join(out, f"evaluate-k{k}.log"),
        )
        with open(target, encoding="utf-8") as handle:
            by_k[k] = json.load(handle)
    evaluate_s = time.perf_counter() - started
    print(f"  pipeline: lookalike evaluate x{len(KS)} {evaluate_s:.1f}s", flush=True)
    return {
        "by_k": by_k,
        "embeddings": emb,
        "embed_summary": summary,
        "seconds": {"embed_job": embed_s, "neighbours_job": neighbours_s, "evaluate": evaluate_s},
    }


# ----------------------------------------------------------------------------------------------
# Direct: decoder, model, brute force and metrics in this process


def embed_direct(cfg, paths: list[str]) -> tuple[np.ndarray, str, dict]:
    """(vectors in ``paths`` order, (weights tag, precision, runtime), seconds) with the job's decoder
    and model core."""
    from lookalike.embed import images, model

    started = time.perf_counter()
    model_cfg = model.resolve(cfg.model, cfg.s3)  # what the job's driver does first
    embedder = model.Embedder(model_cfg, cfg.s3, threads=os.cpu_count() or 1)
    load_s = time.perf_counter() - started
    decode_s = infer_s = 0.0
    parts = []
    step = model_cfg.batch_size
    for start in range(0, len(paths), step):
        t0 = time.perf_counter()
        batch = []
        for path in paths[start : start + step]:
            with open(path, "rb") as handle:
                pixels, _ = images.decode(
                    handle.read(), cfg.input.max_pixels, embedder.input_size, embedder.interpolation
                )
            batch.append(pixels)
        t1 = time.perf_counter()
        # uint8 RGB -> the model with its preprocessing layer: embedder.inference_model.predict_on_batch
        parts.append(embedder.embed(np.stack(batch)))
        decode_s += t1 - t0
        infer_s += time.perf_counter() - t1
    used = (
        embedder.weights_tag,
        getattr(embedder, "precision", model_cfg.precision),
        getattr(embedder, "runtime", "keras"),
    )
    return np.concatenate(parts), used, {"load": load_s, "decode": decode_s, "model": infer_s}


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows of unit L2 norm (normalised in float64, like the job)."""
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.sqrt((x * x).sum(axis=1))
    if not (np.isfinite(norms).all() and (norms > 0).all()):
        raise SystemExit(f"{int((~(np.isfinite(norms) & (norms > 0))).sum())} vectors cannot be normalised")
    return (x / norms[:, None]).astype(np.float32)


def brute_force_topk(vectors: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N, k), scores (N, k)): every score of the N x N matrix, self excluded, ranked by
    score descending then index ascending (rows are in item id order, so: id ascending)."""
    unit = unit_rows(vectors).astype(np.float64)
    n = len(unit)
    top_i = np.empty((n, k), dtype=np.int64)
    top_s = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        # float64 products of float32 values are exact; the sum is rounded to float32 once.
        scores = (unit[start:stop] @ unit.T).astype(np.float32)
        scores[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # stable: ties by index
        top_i[start:stop] = order
        top_s[start:stop] = np.take_along_axis(scores, order, axis=1)
    return top_i, top_s


def adapted(vectors: np.ndarray, setup: Setup) -> np.ndarray:
    """The vectors the job scores with neighbours.center / neighbours.augment, written again here:
    unit rows minus their mean (float32), renormalised; then each plus its m nearest (self
    excluded, ties by index) weighted by max(score, 0), renormalised."""
    unit = unit_rows(vectors)
    if setup.center:
        mean = unit.astype(np.float64).mean(axis=0).astype(np.float32)
        unit = unit_rows(unit.astype(np.float64) - mean.astype(np.float64))
    if setup.augment:
        top, scores = brute_force_topk(unit, setup.augment)
        weights = np.maximum(scores.astype(np.float64), 0.0)
        total = unit.astype(np.float64).copy()
        for r in range(setup.augment):
            total += weights[:, r, None] * unit[top[:, r]].astype(np.float64)
        unit = unit_rows(total)
    return unit


def metrics(top: np.ndarray, labels: np.ndarray, k: int) -> dict:
    """The definitions of docs/querying.md, written again in numpy: macro averages over queries
    whose label has another item, for the first k columns of ``top``."""
    _, codes = np.unique(labels, return_inverse=True)
    n = len(codes)
    n_rel = np.bincount(codes)[codes] - 1
    keep = n_rel > 0
    rel = (codes[top[:, :k]] == codes[:, None]).astype(np.float64)
    hits = rel.sum(axis=1)
    precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    ap = (precision_at_i * rel).sum(axis=1) / np.minimum(k, np.maximum(n_rel, 1))
    per_query = {
        "precision_at_k": hits / k,
        "recall_at_k": hits / np.maximum(n_rel, 1),
        "map_at_k": ap,
        "chance": n_rel / (n - 1),
    }
    result = {name: float(v[keep].mean()) for name, v in per_query.items()}
    result["per_label"] = {
        str(label): {name: float(v[keep & (labels == label)].mean()) for name, v in per_query.items()}
        for label in sorted(set(labels[keep].tolist()))
    }
    result["queries"] = int(keep.sum())
    return result


def run_direct(
    cfg,
    ids: list[str],
    paths: list[str],
    labels: np.ndarray,
    label_of: dict,
    setup: Setup,
    embedded: dict | None = None,
) -> dict:
    """``embedded``: an earlier setup's direct result with the same embeddings (not computed again)."""
    from lookalike.tools import evaluate

    if embedded is None:
        vectors, used, seconds = embed_direct(cfg, paths)
        print(
            f"  direct: model load {seconds['load']:.1f}s, decode {seconds['decode']:.1f}s, "
            f"model {seconds['model']:.1f}s ({len(paths) / max(seconds['model'], 1e-9):.1f} images/s)",
            flush=True,
        )
    else:
        vectors, used, seconds = embedded["vectors"], embedded["used"], dict(embedded["seconds"])
    started = time.perf_counter()
    top, scores = brute_force_topk(adapted(vectors, setup), max(KS))
    seconds["topk"] = time.perf_counter() - started
    by_k, module_diff = {}, 0.0
    for k in KS:
        by_k[k] = metrics(top, labels, k)
        rankings = {ids[q]: [ids[j] for j in top[q, :k]] for q in range(len(ids))}
        check = evaluate.evaluate(rankings, label_of, k, universe=ids)
        for name in evaluate.METRICS:
            module_diff = max(module_diff, abs(check[name] - by_k[k][name]))
    return {
        "vectors": vectors,
        "top": top,
        "scores": scores,
        "used": used,
        "by_k": by_k,
        "numpy_vs_evaluate_module": module_diff,
        "seconds": seconds,
    }


# ----------------------------------------------------------------------------------------------


def confusion(top: np.ndarray, labels: np.ndarray) -> dict:
    """{query label: {neighbour label: share of its queries' neighbour slots}} of a top-k table."""
    result = {}
    for label in sorted(set(labels.tolist())):
        found = labels[top[labels == label]].ravel()
        names, counts = np.unique(found, return_counts=True)
        result[str(label)] = {str(n): round(float(c) / len(found), 4) for n, c in zip(names, counts, strict=False)}
    return result


def compare(setup: Setup, pipeline: dict, direct: dict, ids: list[str], out: str) -> dict:
    """|pipeline - direct| per metric, plus where a difference would come from: the embeddings
    (same vectors?) and the neighbour tables (same lists?)."""
    from lookalike.io import tables

    diffs = {
        f"{name.replace('_at_k', '')}@{k}": abs(pipeline["by_k"][k][name] - direct["by_k"][k][name])
        for k in KS
        for name in ("precision_at_k", "recall_at_k", "map_at_k", "chance")
    }
    emb_path = pipeline["embeddings"]
    emb = tables.read_table(emb_path, ["item_id", "embedding", "weights"])
    # What the job's rows say it computed with, against what the direct pass used.
    described = tables.read_table(
        emb_path, [c for c in ("weights", "precision", "runtime") if c in tables.dataset(emb_path).schema.names]
    )
    job_used = {c: sorted(set(described.column(c).to_pylist())) for c in described.column_names}
    direct_used = dict(zip(("weights", "precision", "runtime"), direct["used"], strict=False))
    order = np.argsort(np.asarray(emb.column("item_id").to_pylist(), dtype=object))
    pipe_ids = [emb.column("item_id")[int(i)].as_py() for i in order]
    if pipe_ids != ids:
        missing = sorted(set(ids) - set(pipe_ids))[:5]
        raise SystemExit(
            f"{setup.name}: the embeddings table has {len(pipe_ids)} items, expected {len(ids)} "
            f"(e.g. missing {missing}); see {out}/err"
        )
    pipe_vectors = np.asarray(emb.column("embedding").to_pylist(), dtype=np.float32)[order]
    a, b = unit_rows(pipe_vectors), unit_rows(direct["vectors"])
    cosines = (a.astype(np.float64) * b).sum(axis=1)
    scale = np.abs(direct["vectors"]).max()
    nb = tables.read_table(f"{out}/nb", ["item_id", "rank", "neighbour_id"]).to_pandas()
    position = {item: i for i, item in enumerate(ids)}
    job_top = np.full((len(ids), max(KS)), -1, dtype=np.int64)
    for item, rank, neighbour in zip(nb["item_id"], nb["rank"], nb["neighbour_id"], strict=False):
        job_top[position[item], rank - 1] = position[neighbour]
    # The neighbours job alone: the brute force on the job's own embeddings.
    own_top, _ = brute_force_topk(adapted(pipe_vectors, setup), max(KS))
    return {
        "metric_diffs": diffs,
        "max_diff": max(diffs.values()),
        "embeddings_bit_identical": bool(np.array_equal(pipe_vectors, direct["vectors"])),
        "embeddings_max_abs_diff_over_max_abs": float(np.abs(pipe_vectors - direct["vectors"]).max() / scale),
        "embeddings_min_cosine": float(cosines.min()),
        "weights_tags": sorted(set(emb.column("weights").to_pylist()) | {direct["used"][0]}),
        "job_used": job_used,
        "direct_used": direct_used,
        "same_settings": all(job_used.get(c, [v]) == [v] for c, v in direct_used.items()),
        "neighbour_rows_equal_direct": float((job_top == direct["top"]).mean()),
        "neighbour_rows_equal_brute_force_on_job_embeddings": float((job_top == own_top).mean()),
        "job_top": job_top,
    }


def short_weights(tags: list[str]) -> str:
    kinds = {
        "random-init" if t.startswith("random-init") else "imagenet" if t.startswith("imagenet") else t for t in tags
    }
    return "/".join(sorted(kinds))


def code_digest() -> dict:
    """{file: sha256 prefix} of lookalike's source: the jobs and the direct pass must run the same
    code (a module edited between the two makes them disagree for no fault of either)."""
    import hashlib

    import lookalike

    package = os.path.dirname(os.path.abspath(lookalike.__file__))
    found = {}
    for folder, _dirs, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, package)] = hashlib.sha256(handle.read()).hexdigest()[:16]
    return found


def run_setup(setup: Setup, args, every_row: list[dict], work: str) -> dict:
    from lookalike.config import load_config

    out = os.path.join(work, setup.name)
    os.makedirs(out)
    limit = args.limit if args.limit is not None else setup.limit
    rows = select(every_row, args.split, limit)
    n_all = len([r for r in every_row if args.split == "all" or r.get("split") == args.split])
    labels_csv = os.path.join(out, "labels.csv")
    write_labels(rows, labels_csv)
    input_uri = prepare_input(args.data, rows, every_row, out)
    ids = sorted(item_id(r["path"]) for r in rows)
    by_id = {item_id(r["path"]): r for r in rows}
    paths = [os.path.join(args.data, by_id[i]["path"]) for i in ids]
    labels = np.asarray([by_id[i]["label"] for i in ids], dtype=object).astype(str)
    label_of = {i: by_id[i]["label"] for i in ids}
    print(
        f"\n{setup.name}: {setup.backbone}, pooling {setup.pooling}, weights {setup.weights}; "
        f"{len(rows)} of {n_all} photos ({args.split}) from {input_uri}",
        flush=True,
    )

    sets = overrides(setup, input_uri, out)
    if setup.backbone == "keras_hub":
        if not args.preset:
            raise SystemExit("--configs keras_hub:...: give the preset with --preset DIR (or s3://...)")
        sets += [f"model.preset={args.preset}"] + ([f"model.image_size={args.image_size}"] if args.image_size else [])
    # Setups that differ only in post-processing share the first one's embeddings (both passes).
    earlier = args.embedded.get(setup.embedding)
    if earlier is not None:
        sets = [
            f"output.embeddings={earlier[0]['embeddings']}" if s.startswith("output.embeddings=") else s for s in sets
        ]
    pipeline = run_pipeline(setup, sets, labels_csv, out, earlier[0] if earlier else None)
    cfg = load_config(CONFIG_FILE, sets)
    direct = run_direct(cfg, ids, paths, labels, label_of, setup, earlier[1] if earlier else None)
    args.embedded.setdefault(setup.embedding, (pipeline, direct))
    check = compare(setup, pipeline, direct, ids, out)
    job_top = check.pop("job_top")
    # This process imported lookalike once, at the start; the jobs import it afresh each time.
    now = code_digest()
    check["source_changed_since_start"] = sorted(
        f for f in set(now) | set(args.code_digest) if now.get(f) != args.code_digest.get(f)
    )
    if check["source_changed_since_start"]:
        print(
            f"  WARNING: lookalike's source changed since this script started "
            f"({', '.join(check['source_changed_since_start'])}); the jobs and the direct pass may have run "
            f"different code",
            flush=True,
        )
    if not check["same_settings"]:
        print(
            f"  WARNING: the job computed with {check['job_used']}, the direct pass with {check['direct_used']}",
            flush=True,
        )
    passed = check["max_diff"] <= TOLERANCE and direct["numpy_vs_evaluate_module"] <= 1e-9
    print(
        f"  check: max |pipeline - direct| = {check['max_diff']:.2e}; embeddings bit-identical "
        f"{check['embeddings_bit_identical']}, min cosine {check['embeddings_min_cosine']:.7f}; neighbour "
        f"lists equal to direct {check['neighbour_rows_equal_direct']:.4f}, to brute force on the job's "
        f"embeddings {check['neighbour_rows_equal_brute_force_on_job_embeddings']:.4f} -> "
        f"{'PASS' if passed else 'FAIL'}",
        flush=True,
    )
    pipe = pipeline["by_k"]
    return {
        "config": asdict(replace(setup, limit=limit)),
        "n_images": len(rows),
        "n_split": n_all,
        "split": args.split,
        "labels": len(set(labels.tolist())),
        "weights": short_weights(check["weights_tags"]),
        "pipeline": {
            str(k): {m: pipe[k][m] for m in ("precision_at_k", "recall_at_k", "map_at_k", "chance")} for k in KS
        },
        "pipeline_per_label_k10": {label: v["precision_at_k"] for label, v in pipe[max(KS)]["per_label"].items()},
        "pipeline_per_label_k10_items": {label: v["items"] for label, v in pipe[max(KS)]["per_label"].items()},
        "pipeline_per_label_k10_chance": {label: v["chance"] for label, v in pipe[max(KS)]["per_label"].items()},
        # Which labels the neighbours have, per query label (the job's top-10 table).
        "pipeline_neighbour_labels_k10": confusion(job_top, labels),
        "direct": {
            str(k): {m: direct["by_k"][k][m] for m in ("precision_at_k", "recall_at_k", "map_at_k", "chance")}
            for k in KS
        },
        "direct_numpy_vs_evaluate_module": direct["numpy_vs_evaluate_module"],
        "check": check,
        "tolerance": TOLERANCE,
        "passed": bool(passed),
        "embed_job_summary": {
            key: pipeline["embed_summary"].get(key)
            for key in (
                "embedded",
                "errors",
                "seconds",
                "embed_seconds",
                "images_per_second",
                "model_loads",
                "partitions",
                "weights",
            )
            if key in pipeline["embed_summary"]
        },
        "seconds": {
            **{f"pipeline_{k}": round(v, 2) for k, v in pipeline["seconds"].items()},
            **{f"direct_{k}": round(v, 2) for k, v in direct["seconds"].items()},
        },
    }


def print_table(results: list[dict], header: str) -> None:
    columns = (
        "config",
        "backbone",
        "pooling",
        "weights",
        "precision",
        "N images",
        "P@1",
        "P@5",
        "P@10",
        "mAP@10",
        "chance",
        "max Δ vs direct",
        "embed s",
        "check",
    )
    lines = []
    for r in results:
        p = r["pipeline"]
        lines.append(
            (
                r["config"]["name"],
                r["config"]["backbone"],
                r["config"]["pooling"],
                r["weights"],
                r["config"]["precision"],
                f"{r['n_images']:,}" + ("" if r["n_images"] == r["n_split"] else f" of {r['n_split']:,}"),
                f"{p['1']['precision_at_k']:.3f}",
                f"{p['5']['precision_at_k']:.3f}",
                f"{p['10']['precision_at_k']:.3f}",
                f"{p['10']['map_at_k']:.3f}",
                f"{p['10']['chance']:.3f}",
                f"{r['check']['max_diff']:.1e}",
                f"{r['seconds']['pipeline_embed_job']:.1f}",
                "PASS" if r["passed"] else "FAIL",
            )
        )
    print("\n" + header)
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for line in lines:
        print("| " + " | ".join(line) + " |")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--data", default=DEFAULT_DATA, help="labelled photos with labels.csv (path,label,split)")
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma-separated: names ({', '.join(CONFIGS)}) or backbone:pooling:weights[:limit]",
    )
    parser.add_argument("--limit", type=int, help="photos per configuration (stratified), overriding each one's own")
    parser.add_argument("--split", default="all", help="train, validation, test or all (default)")
    parser.add_argument("--keep", metavar="DIR", help="keep the tables, logs and inputs in DIR (must not exist)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "quality.json"), help="where the JSON goes")
    parser.add_argument("--preset", help="keras_hub configurations: the KerasHub preset (directory or s3://)")
    parser.add_argument("--image-size", type=int, help="keras_hub DINOv2 presets: model.image_size")
    args = parser.parse_args(argv)
    args.data = os.path.abspath(args.data)
    setups = [parse_setup(c.strip()) for c in args.configs.split(",") if c.strip()]
    every_row = read_labels(args.data)
    args.code_digest = code_digest()
    args.embedded = {}
    from lookalike.embed import backbones, images, model  # noqa: F401 (the code the digest describes)

    if args.keep:
        os.makedirs(args.keep)
        work = os.path.abspath(args.keep)
    else:
        work = tempfile.mkdtemp(prefix="lookalike-quality-")
    cpu = cpu_name()
    started = time.perf_counter()
    load_start = os.getloadavg()
    results = []
    try:
        for setup in setups:
            results.append(run_setup(setup, args, every_row, work))
    except BaseException:
        print(f"\nstopped; outputs so far are in {work}", file=sys.stderr)
        raise
    total = time.perf_counter() - started
    header = (
        f"recommendation quality on {args.data} ({args.split} splits), k = 10 neighbours; {cpu}, "
        f"{os.cpu_count()} CPUs, load average at start {load_start[0]:.2f}; total {total:.0f}s"
    )
    print_table(results, header)
    failed = [r["config"]["name"] for r in results if not r["passed"]]
    print(
        f"pipeline against direct: tolerance {TOLERANCE:g} on P@1/5/10, recall@1/5/10, mAP@1/5/10, chance: "
        + ("PASS" if not failed else f"FAIL ({', '.join(failed)})")
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "data": args.data,
                "split": args.split,
                "cpu": cpu,
                "cpus": os.cpu_count(),
                "load_average_start": load_start,
                "total_seconds": round(total, 1),
                "ks": list(KS),
                "results": results,
            },
            handle,
            indent=2,
            sort_keys=True,
        )
    print(f"wrote {args.out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept the tables and logs in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
