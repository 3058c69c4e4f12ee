"""The embed stage as DataFrame -> DataFrame: keys in, one result row per key out.

Each Python worker builds its S3 client and its Keras model once (``model.get_embedder``) and
reuses them for every batch of every task it runs; decoding of the next batch overlaps inference
of the current one on a small thread pool.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from lookalike import schemas
from lookalike.config import Config
from lookalike.embed import images, model
from lookalike.io import storage
from lookalike.io.storage import Entry, StorageError
from lookalike.io.uris import is_hadoop, is_s3, local_path

log = logging.getLogger(__name__)

ITEMS = [
    schemas.Column("item_id", "string", False, ""),
    schemas.Column("uri", "string", False, ""),
    schemas.Column("source_version", "string", True, ""),
    schemas.Column("source_bytes", "long", True, ""),
]

# One row per key: the embeddings columns (embedding null on failure) plus the error columns.
RESULT = [c._replace(nullable=True) if c.name in ("embedding", "embedded_at") else c for c in schemas.EMBEDDINGS] + [
    schemas.Column("error", "string", True, ""),
    schemas.Column("message", "string", True, ""),
]


def items_frame(listed: list[tuple[str, Entry]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [item_id for item_id, _ in listed],
            "uri": [obj.uri for _, obj in listed],
            "source_version": [obj.version for _, obj in listed],
            "source_bytes": pd.array([obj.size for _, obj in listed], dtype="Int64"),
        },
        columns=schemas.names(ITEMS),
    )


class Phases:
    """Seconds spent in each phase of the embed stage, summed over every task (Spark accumulators).

    fetch and decode run on the decode threads, overlapped with inference; ``wait`` is the time the
    model sat idle waiting for decoded pixels: where it is large, decoding is the bottleneck."""

    NAMES = ("fetch", "decode", "infer", "wait")

    def __init__(self, spark):
        context = spark.sparkContext
        self.loads = context.accumulator(0)
        self.seconds = {name: context.accumulator(0.0) for name in self.NAMES}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name].add(seconds)

    def summary(self) -> dict:
        # Milliseconds: a small catalogue on a fast model spends a few of them per phase.
        return {name: round(acc.value, 3) for name, acc in self.seconds.items()}


def _load(uri: str, cfg: Config, input_size: tuple[int, int], interpolation: str = "bilinear"):
    """Fetch and decode one image at the model's input size:
    (pixels or None, size, error kind, message, fetch seconds, decode seconds)."""
    pixels, size, kind, message = None, (0, 0), "", ""
    started = fetched = time.perf_counter()
    try:
        if not cfg.input.follow_links:
            _refuse_links_out(uri, cfg.input.uri)
        data = storage.fetch(uri, cfg.s3, cfg.input.max_bytes)
        fetched = time.perf_counter()
        pixels, size = images.decode(data, cfg.input.max_pixels, input_size, interpolation)
    except (StorageError, images.ImageError) as exc:
        kind, message = exc.kind, exc.message
    except Exception as exc:  # one odd file must never fail the task and its neighbours
        kind, message = "decode_error", f"unexpected {type(exc).__name__}: {exc}"
    return pixels, size, kind, message, fetched - started, time.perf_counter() - fetched


def _refuse_links_out(uri: str, root: str | None) -> None:
    """StorageError when the local file ``uri`` resolves (through symbolic links) to a place
    outside ``root`` (input.uri). Object stores have no links: nothing to check there."""
    if root is None or is_s3(uri) or is_hadoop(uri):
        return
    path = local_path(uri)
    if not os.path.islink(path) and os.path.realpath(os.path.dirname(path)) == os.path.dirname(path):
        return  # no link on the way: the common case costs one lstat
    target, base = os.path.realpath(path), os.path.realpath(local_path(root))
    if target != base and not target.startswith(base.rstrip(os.sep) + os.sep):
        raise StorageError(
            "unsupported",
            f"a symbolic link to {target}, outside input.uri; set input.follow_links: true to embed it",
        )


def worker_threads(cfg: Config, task_cpus: int) -> int:
    return cfg.model.threads or max(1, task_cpus)


def make_embed_function(cfg: Config, run_id: str, task_cpus: int = 1, phases: Phases | None = None):
    """The mapInPandas function for ``cfg``. ``phases`` (accumulators) counts model builds and
    the seconds of each phase."""
    batch_size = cfg.model.batch_size
    threads = worker_threads(cfg, task_cpus)

    def embed_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        before = model.LOADS["count"]
        embedder = model.get_embedder(cfg.model, cfg.s3, threads)
        if phases is not None and model.LOADS["count"] > before:
            phases.loads.add(1)
        # As many decode threads as the task has cores (at least two, so that one decodes while
        # another waits on S3): decoding the next batch overlaps inference of this one.
        pool = ThreadPoolExecutor(max_workers=max(2, threads), thread_name_prefix="lookalike-decode")
        try:
            for frame in frames:
                yield _embed_frame(frame, embedder, pool, cfg, batch_size, run_id, phases)
        finally:
            # An interrupted task (killed, cancelled) leaves no queued fetch running behind it.
            pool.shutdown(wait=False, cancel_futures=True)

    return embed_partition


def _embed_frame(frame, embedder, pool, cfg, batch_size, run_id, phases=None) -> pd.DataFrame:
    n = len(frame)
    uris = frame["uri"].tolist()
    vectors: list = [None] * n
    widths = np.zeros(n, dtype=np.int32)
    heights = np.zeros(n, dtype=np.int32)
    errors: list = [None] * n
    messages: list = [None] * n
    starts = list(range(0, n, batch_size))
    spent = dict.fromkeys(Phases.NAMES, 0.0)

    def submit(start: int):
        return [
            pool.submit(_load, uri, cfg, embedder.input_size, embedder.interpolation)
            for uri in uris[start : start + batch_size]
        ]

    pending = submit(starts[0]) if starts else []
    for index, start in enumerate(starts):
        waited = time.perf_counter()
        loaded = [f.result() for f in pending]
        spent["wait"] += time.perf_counter() - waited
        # Decode the next batch while the model works on this one.
        pending = submit(starts[index + 1]) if index + 1 < len(starts) else []
        good = []
        for offset, (pixels, size, kind, message, fetch_s, decode_s) in enumerate(loaded):
            row = start + offset
            spent["fetch"] += fetch_s
            spent["decode"] += decode_s
            if pixels is None:
                errors[row], messages[row] = kind, message
            else:
                good.append((row, pixels))
                widths[row], heights[row] = size
        if good:
            inferred = time.perf_counter()
            out = embedder.embed(np.stack([p for _, p in good]))
            spent["infer"] += time.perf_counter() - inferred
            for (row, _), vector in zip(good, out, strict=True):
                vectors[row] = vector
    if phases is not None:
        for name, seconds in spent.items():
            phases.add(name, seconds)

    now = pd.Timestamp.now(tz="UTC")
    ok = np.array([v is not None for v in vectors], dtype=bool)
    return pd.DataFrame(
        {
            "item_id": frame["item_id"],
            "uri": frame["uri"],
            "source_version": frame["source_version"],
            "source_bytes": frame["source_bytes"],
            "width": pd.Series(widths, dtype="Int32").where(ok),
            "height": pd.Series(heights, dtype="Int32").where(ok),
            "model": cfg.model.name,
            "weights": embedder.weights_tag,
            "pooling": cfg.model.pooling,
            "precision": embedder.precision,
            "runtime": embedder.runtime,
            "dim": embedder.dim,
            "embedding": vectors,
            "model_fingerprint": embedder.fingerprint,
            "run_id": run_id,
            "embedded_at": [now if good_row else None for good_row in ok],
            "error": errors,
            "message": messages,
        }
    )[schemas.names(RESULT)]


def embed_items(items, cfg: Config, run_id: str, phases: Phases | None = None):
    """items: DataFrame(item_id, uri, source_version, source_bytes) -> RESULT rows, one per item."""
    spark = items.sparkSession
    task_cpus = int(spark.conf.get("spark.task.cpus", "1"))
    function = make_embed_function(cfg, run_id, task_cpus, phases)
    return items.mapInPandas(function, schema=schemas.spark_schema(RESULT))


def split_results(results):
    """RESULT rows -> (embeddings DataFrame, errors DataFrame) in the published schemas."""
    from pyspark.sql import functions as F

    embeddings = results.filter(F.col("error").isNull()).select(*schemas.names(schemas.EMBEDDINGS))
    errors = (
        results.filter(F.col("error").isNotNull())
        .withColumn("failed_at", F.current_timestamp())
        .select(*schemas.names(schemas.ERRORS))
    )
    return embeddings, errors
