"""IVF's recall, measured by the job every run: a seeded sample of queries gets its exact top-k by
broadcasting the sample and scanning every candidate where it lies (S x N work, 1/N of an exact
run per query), compared with what IVF found for the same queries. With centroids, the scan also
says which list each exact neighbour belongs to, which is what chooses nprobe for
neighbours.target_recall (ivf.recall_by_nprobe)."""

from __future__ import annotations

import numpy as np

from lookalike.neighbours import arrow, ivf, rules, topk
from lookalike.neighbours.prepare import with_candidate_indices


def sample_queries(ordered, n_queries: int, size: int, seed: int, layout: rules.Layout = rules.NO_RULES):
    """(ids, vectors, rule codes or None) of about ``size`` valid items, reproducibly."""
    rows = ordered.filter("valid").select("item_id", "vector", "codes")
    if size < n_queries:
        rows = rows.sample(False, min(1.0, 1.2 * size / n_queries), seed=seed)
    table = arrow.to_arrow(rows).slice(0, size)
    return (
        np.array(table.column("item_id").to_pylist(), dtype=object),
        table.column("vector").combine_chunks(),
        rules.codes_of(table.column("codes").combine_chunks(), layout),
    )


def exact_for_sample(
    ordered,
    offsets_bc,
    sample_bc,
    k: int,
    min_score: float | None,
    dim: int,
    layout: rules.Layout,
    centroids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(sample, k) global indices of the exact top-k of each sampled query over every candidate,
    and the list (nearest of ``centroids``) of each of those neighbours; -1 where none. The sample
    is broadcast and the candidates scanned where they are, so no N x N work."""

    def scan(batches):
        import pyarrow as pa

        ids, column, sample_codes = sample_bc.value
        queries = arrow.vectors(column, dim)
        for batch, usable, index in with_candidate_indices(offsets_bc, batches):
            cand = np.flatnonzero(usable)
            if not len(cand):
                continue
            cand_ids = batch.column(batch.schema.get_field_index("item_id")).to_numpy(zero_copy_only=False)[cand]
            vectors = arrow.vectors(batch.column(batch.schema.get_field_index("vector")), dim)[cand]
            codes = rules.codes_of(batch.column(batch.schema.get_field_index("codes")), layout)
            mask = rules.make(layout, sample_codes, None if codes is None else codes[cand])
            scores, found = topk.topk_block(
                queries, vectors, k, self_index=topk.self_positions(ids, cand_ids), min_score=min_score, rules=mask
            )
            present = found != topk.EMPTY_ID
            rows = np.nonzero(present)[0]
            lists = ivf.nearest(vectors[found[present]], centroids, 1)[:, 0]
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(rows, pa.int64()),
                    pa.array(index[cand][found[present]]),
                    pa.array(scores[present]),
                    pa.array(lists, pa.int32()),
                ],
                names=["query", "neighbour_index", "score", "list"],
            )

    parts = arrow.to_arrow(
        ordered.filter("valid")
        .select("item_id", "is_candidate", "vector", "codes")
        .mapInArrow(scan, "query long, neighbour_index long, score float, list int")
    )
    n = len(sample_bc.value[0])
    _, best = topk.keep_best(
        parts.column("query").to_numpy(),
        parts.column("neighbour_index").to_numpy(),
        parts.column("score").to_numpy(),
        n,
        k,
    )
    list_of = dict(zip(parts.column("neighbour_index").to_pylist(), parts.column("list").to_pylist(), strict=True))
    return best, np.vectorize(lambda i: list_of.get(i, -1), otypes=[np.int64])(best)


def recall_by_nprobe(
    vectors, dim: int, centroids: np.ndarray, exact_lists: np.ndarray, population: int | None = None
) -> ivf.SampledRecall:
    """The sample's recall@k at every nprobe (ivf.recall_by_nprobe), from its queries' packed
    ``vectors`` and the lists of their exact neighbours (``exact_for_sample``); ``population``:
    the queries it was drawn from."""
    ranking = ivf.nearest(arrow.vectors(vectors, dim), centroids, len(centroids))
    return ivf.recall_by_nprobe(ranking, [row[row >= 0] for row in exact_lists], population)


def found_for_sample(partials, ids: np.ndarray, k: int) -> dict:
    """{query id: set of global indices} of the IVF top-k of the sampled queries."""
    from pyspark.sql import functions as F

    wanted = partials.sparkSession.createDataFrame([(str(i),) for i in ids], "item_id string")
    table = arrow.to_arrow(partials.join(F.broadcast(wanted), "item_id"))
    if table.num_rows == 0:
        return {}
    items, codes = np.unique(table.column("item_id").to_numpy(zero_copy_only=False), return_inverse=True)
    _, best = topk.keep_best(
        codes, table.column("neighbour_index").to_numpy(), table.column("score").to_numpy(), len(items), k
    )
    return {item: set(row[row != topk.EMPTY_ID].tolist()) for item, row in zip(items, best, strict=True)}
