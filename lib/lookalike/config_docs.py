"""One sentence per config key. The key table in docs/configuration.md is rendered from this:
`python -m lookalike.config_docs` prints it, `python -m lookalike.config_docs --write` puts it
between the markers of docs/configuration.md. tests/test_docs.py checks that every field of the
Config dataclasses has a sentence here and that docs/configuration.md holds the current table."""

from __future__ import annotations

import dataclasses

from lookalike.config import Config

DOCS = {
    "spark.master": "Spark master (`local[*]`, `spark://host:7077`, `yarn`) unless spark-submit is given one: a master given to spark-submit wins (docs/cluster.md).",
    "spark.app_name": "Application name shown in the Spark UI.",
    "spark.conf": "Extra Spark settings for the session, e.g. `{spark.executor.memory: 4g}`.",
    "input.uri": "Where the images are: `s3://bucket/prefix/`, a local directory, `file://` or `hdfs://` URI.",
    "input.pattern": "File-name globs separated by pipes, matched case-insensitively.",
    "input.id_regex": "Regex over the key relative to `input.uri`; group `id` (or group 1) is the item id. Default: the relative key without extension.",
    "input.manifest": "A Parquet/CSV table of keys (e.g. an S3 Inventory report) read in parallel instead of listing.",
    "input.manifest_key_column": "Column of `input.manifest` that holds the keys.",
    "input.manifest_schema": "Column names of a header-less S3 Inventory CSV, e.g. `Bucket, Key, Size, ETag` (read from manifest.json when given one).",
    "input.max_pixels": "Images declaring more pixels than this are refused before decoding (`too_large`); 0 = no limit.",
    "input.max_bytes": "Files larger than this are refused without downloading them (`too_large`).",
    "input.max_error_fraction": "Fail the run and publish nothing when more than this share of images fail.",
    "input.incremental": "Re-embed only new or changed images (key + ETag/size-mtime) and drop deleted ones.",
    "input.partition_size": "Images per Spark task: small enough for even load, retries and progress.",
    "s3.endpoint_url": "S3-compatible endpoint, e.g. `http://127.0.0.1:9000`; null for AWS.",
    "s3.region": "Region name for the S3 client.",
    "s3.max_attempts": "Attempts per S3 request, first one included (boto3 retries with backoff).",
    "s3.retry_mode": "boto3 retry mode: `standard`, `adaptive` or `legacy`.",
    "s3.connect_timeout": "Seconds to wait for a connection.",
    "s3.read_timeout": "Seconds to wait for data on an open connection.",
    "s3.max_pool_connections": "Connections per S3 client (one client per decode thread and worker).",
    "model.name": "The backbone: `vgg16`, `resnet50`, `efficientnetv2b0` (Keras Applications), `efficientnet_lite0` (ImageNet weights from a pip package: works offline) or `keras_file` (your own model). See [backbones](backbones.md).",
    "model.weights": "`imagenet` (Keras' download; for `efficientnet_lite0` the installed package's checkpoint), a local `.h5` path (`.pth` for `efficientnet_lite0`), an `s3://` URI, or `none` (random init, for tests).",
    "model.weights_md5": "Expected md5 of the weights file or `model.file`; files named like the published ones are always checked.",
    "model.on_missing_weights": "When ImageNet weights cannot be downloaded: `fail`, `efficientnet_lite0` (the demo: a trained model that needs no download, loudly) or `random` (random init, rows marked).",
    "model.pooling": "`avg`, `max` or `flatten`; the dimension depends on the backbone (vgg16: 512, 512, 25,088; see [backbones](backbones.md)).",
    "model.batch_size": "Images per forward pass.",
    "model.seed": "Seed for random-init weights.",
    "model.precision": "`auto` (bfloat16 where every executor computes it natively: AMX-BF16/AVX512-BF16 CPUs, Ampere+ GPUs; else float32), `float32` (bit-reproducible), `bfloat16` or `float16` (GPUs). See [benchmarks](benchmarks.md#embedding-throughput).",
    "model.runtime": "`auto` (OpenVINO on CPU executors that have it, Keras on GPUs), `keras` or `openvino` (the Keras model converted once per host, cached in `model.cache_dir`).",
    "model.jit_compile": "XLA compilation: null = Keras' choice (on for GPUs and JAX), true/false to force it.",
    "model.threads": "TensorFlow threads per Python worker; 0 = `spark.task.cpus`.",
    "model.file": "`keras_file` only: the `.keras` model, a local path or `s3://` URI.",
    "model.preprocessing": "`keras_file` only: the normalisation it was trained with: `caffe`, `torch`, `tf`, `lite` or `raw`.",
    "model.cache_dir": "Where `s3://` weights and converted checkpoints are cached on each host.",
    "neighbours.k": "Neighbours per item.",
    "neighbours.min_score": "Drop neighbours below this cosine.",
    "neighbours.broadcast_max_mb": "Largest candidate chunk broadcast to executors; more candidates are processed in several chunks.",
    "neighbours.block_rows": "Query rows per matrix product: memory per task is about block_rows x chunk rows x 4 bytes.",
    "neighbours.candidates": "Item ids that may be recommended: a list, or a CSV/Parquet table with `item_id`. Queries still cover every item.",
    "neighbours.method": "`exact` (brute force in blocks) or `ivf` (approximate, for very large catalogues).",
    "neighbours.symmetric": "Exact: when every item may be recommended, score each block of the item × item matrix once for both sides (about 25% less scoring work at N = 100,000; `false` scores every pair twice, one side at a time).",
    "neighbours.nlist": "IVF: number of lists (0 = about sqrt(N)).",
    "neighbours.nprobe": "IVF: lists scanned per query.",
    "neighbours.recall_sample": "IVF: queries sampled to measure recall@k against exact search, reported in the run summary (0 = off).",
    "neighbours.seed": "IVF: seed of the k-means initialisation and of the training and recall samples.",
    "neighbours.partitions": "Query partitions (0 = automatic).",
    "neighbours.row_group_rows": "Rows per Parquet row group of the neighbour table, cut between items: what a point lookup reads.",
    "neighbours.attributes": "A CSV (header) or Parquet table of `item_id` and any columns (category, brand, product family, ...), local, `s3://` or `hdfs://`; one row per item. Used by `same` and `exclude_same`. See [neighbours](neighbours.md#same-category-hidden-variants-and-near-duplicates).",
    "neighbours.same": "An `attributes` column: an item's neighbours all share its value (items without a value get none). Scored per group: the work is the sum of the groups' squared sizes, not N².",
    "neighbours.exclude_same": "An `attributes` column: never recommend an item with the query's value (its own colour variants, product family); applied inside the top-k, so lists stay k long. A null value excludes nothing.",
    "neighbours.hide_duplicates": "Keep at most one member (the best-scored) of each near-duplicate group of `output.duplicates` in a list, and none of the item's own group. Needs the duplicates job's table.",
    "duplicates.enabled": "Run the near-duplicate groups stage in the pipeline job, before neighbours (`./spark-submit.sh duplicates` runs it whatever this says). See [duplicates](duplicates.md).",
    "duplicates.min_score": "Two items whose cosine is at least this are near-duplicates; groups are the connected components of those pairs. The default is measured in [duplicates](duplicates.md#choosing-min_score).",
    "duplicates.broadcast_max_mb": "Largest chunk of items broadcast to executors while finding pairs; more items are processed in several chunks.",
    "duplicates.block_rows": "Items scored per matrix product while finding pairs: memory per task is about block_rows x 4096 x 4 bytes.",
    "duplicates.partitions": "Item partitions for finding pairs (0 = automatic, as `neighbours.partitions`).",
    "output.embeddings": "Embeddings table (Parquet directory).",
    "output.errors": "Error table (Parquet directory).",
    "output.neighbours": "Neighbour table (Parquet directory).",
    "output.duplicates": "Near-duplicate groups table (Parquet directory), written by the duplicates job.",
    "output.force_unlock": "Take over a lock left by a crashed run (see docs/scheduled-runs.md).",
}


def keys() -> list[tuple[str, object]]:
    """(dotted key, default) for every config field."""
    out = []
    defaults = Config()
    for section in dataclasses.fields(Config):
        value = getattr(defaults, section.name)
        for item in dataclasses.fields(value):
            out.append((f"{section.name}.{item.name}", getattr(value, item.name)))
    return out


def markdown() -> str:
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default in keys():
        shown = "null" if default is None else ("{}" if default == {} else str(default).replace("|", "\\|"))
        rows.append(f"| `{key}` | `{shown}` | {DOCS.get(key, '')} |")
    return "\n".join(rows)


START = "<!-- config-table:start (generated by python -m lookalike.config_docs --write) -->"
END = "<!-- config-table:end -->"


def write(path: str = "docs/configuration.md") -> None:
    """Replace the table between START and END in `path` (run from the repository root)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not (start and end):
        raise SystemExit(f"{path}: markers {START!r} ... {END!r} not found")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{START}\n{markdown()}\n{END}{tail}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        write(*sys.argv[2:3])
    else:
        print(markdown())
