"""neighbours.incremental with method ivf: the lists' centroids kept beside the lists table (the
``neighbours_centroids`` table), so that a later run puts new and changed items in the same lists
and scores them with IVF's rule (a candidate only in the lists its query probes) inside the exact
kernel of the incremental pass. Every list then equals what an IVF search with those centroids
returns on the current embeddings.

Centroids trained on yesterday's catalogue fit today's a little worse every day. Each
incremental run measures recall@depth on a sample of queries (IVF with the kept centroids against
exact search, as a full IVF run does) and retrains, with a full run, once the recall has fallen
more than RETRAIN_DROP below the recall measured when the centroids were trained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from lookalike import schemas
from lookalike.config import NeighboursConfig, S3Config
from lookalike.io.current import Current
from lookalike.neighbours import arrow, ivf_recall
from lookalike.neighbours.prepare import Prepared

log = logging.getLogger(__name__)

# Retrain once the sampled recall@depth is this far below the recall measured at training.
RETRAIN_DROP = 0.02


@dataclass(frozen=True)
class KeptLists:
    """The IVF lists of the previous run: its centroids, nprobe, and the recall measured when the
    centroids were trained (None if it was not measured)."""

    centroids: np.ndarray  # (nlist, d) float32
    nprobe: int
    trained_recall: float | None


def read_kept(spark, previous: Current | None, lists_summary: dict, s3: S3Config | None) -> KeptLists | None:
    """The centroids table as ``publish.current`` found it, with the lists table's summary; None
    when there is none or it cannot be read (the run is then a full one, which trains again)."""
    from lookalike.io.sparkparquet import read_parquet

    if previous is None or not previous.files or "nprobe" not in lists_summary:
        return None
    try:
        table = arrow.to_arrow(read_parquet(spark, previous, s3).orderBy("list"))
    except Exception as exc:  # a damaged state costs a full run, never a wrong table
        log.warning("cannot read the IVF centroids at %s (%s): training them again", previous.location, exc)
        return None
    if table.num_rows == 0:
        return None
    centroids = np.asarray(table.column("centroid").to_pylist(), dtype=np.float32)
    trained = lists_summary.get("trained_recall")
    return KeptLists(centroids, int(lists_summary["nprobe"]), None if trained is None else float(trained))


def write_centroids(directory: str, centroids: np.ndarray, s3: S3Config | None) -> None:
    """The centroids table's one file (nlist rows: a few MB at most), written from the driver."""
    import pyarrow as pa

    from lookalike.io.partfiles import PartWriter

    schema = schemas.arrow_schema(schemas.IVF_CENTROIDS)
    table = pa.table(
        {
            "list": pa.array(np.arange(len(centroids), dtype=np.int32)),
            "centroid": pa.array(list(np.asarray(centroids, dtype=np.float32)), pa.list_(pa.float32())),
        },
        schema=schema,
    )
    writer = PartWriter(directory, "part-00000.parquet", schema, s3)
    writer.add(table)
    writer.close()


def sampled_recall(
    spark, items: Prepared, settings: NeighboursConfig, held: list, kept: KeptLists, k: int, offsets_bc
) -> tuple[float | None, int]:
    """(recall@k of IVF with the kept lists against exact search, on neighbours.recall_sample
    queries; the queries sampled). (None, 0) when recall_sample is 0. One scan: IVF finds an
    exact neighbour exactly when its list is probed (ivf.recall_by_nprobe), so the exact
    neighbours' lists give IVF's recall without running it."""
    if not settings.recall_sample:
        return None, 0
    ids, vectors, codes = ivf_recall.sample_queries(
        items.ordered, items.queries, settings.recall_sample, settings.seed, items.layout
    )
    sample_bc = spark.sparkContext.broadcast((ids, vectors, codes))
    held.append(sample_bc)
    _, lists = ivf_recall.exact_for_sample(
        items.ordered, offsets_bc, sample_bc, k, settings.min_score, items.dim, items.layout, kept.centroids
    )
    recalls = ivf_recall.recall_by_nprobe(vectors, items.dim, kept.centroids, lists)
    recall = recalls[min(kept.nprobe, len(kept.centroids))]
    return (None if np.isnan(recall) else float(recall)), len(ids)


def check(
    spark, items: Prepared, settings: NeighboursConfig, held: list, decided, kept: KeptLists | None, k: int, offsets_bc
):
    """(the plan, (centroids, nprobe) to score with or None, summary entries) of an incremental
    IVF run: a full one (retraining) when no lists were kept or they drifted. ``offsets_bc``:
    the broadcast ``prepare.candidate_offsets``."""
    if kept is None:
        return replace(decided, full_reason="no IVF centroids kept with the previous lists"), None, {}
    recall, sampled = sampled_recall(spark, items, settings, held, kept, k, offsets_bc)
    summary = {
        "recall_at_k": None if recall is None else round(recall, 4),
        "recall_sample": {"queries": sampled, "k": k, "recall_at_k": None if recall is None else round(recall, 4)},
        "ivf": {
            "nlist": len(kept.centroids),
            "nprobe": kept.nprobe,
            "lists": "kept from the previous run",
            "trained_recall": kept.trained_recall,
        },
    }
    log.info(
        "IVF: recall@%d = %s on %d sampled queries with the kept lists (%s when they were trained)",
        k,
        "n/a" if recall is None else f"{recall:.4f}",
        sampled,
        "n/a" if kept.trained_recall is None else f"{kept.trained_recall:.4f}",
    )
    if recall is not None and kept.trained_recall is not None and recall < kept.trained_recall - RETRAIN_DROP:
        why = (
            f"the IVF lists drifted: recall@{k} {recall:.3f} on {sampled} sampled queries, "
            f"{kept.trained_recall:.3f} when they were trained (retraining)"
        )
        return replace(decided, full_reason=why), None, {}
    return decided, (kept.centroids, kept.nprobe), summary
