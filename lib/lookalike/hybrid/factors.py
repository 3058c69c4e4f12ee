"""Every item's behaviour factor and blended vector, on the executors.

Warm items (with interactions) keep their ALS factor; cold items get the ridge map's prediction
from their picture. Both are normalised, then blended with the unit visual embedding
(blend.blended_vectors) into the ``embedding`` column the neighbours kernels read."""

from __future__ import annotations

import numpy as np

from lookalike.hybrid import blend, ridge, vectors

BLENDED = (
    "item_id string, model string, pooling string, weights string, dim int, embedding array<float>, "
    "factor array<float>, warm boolean"
)


def _finite_rows(rows: np.ndarray) -> np.ndarray:
    return np.isfinite(rows).all(axis=1) & (np.abs(rows).sum(axis=1) > 0)


def _blend_function(weights_bc, alpha: float, dim: int, rank: int):
    def blend_batches(batches):
        import pyarrow as pa
        import pyarrow.compute as pc

        schema = None
        for batch in batches:
            n = batch.num_rows
            if not n:
                continue
            field = batch.schema.get_field_index
            embedding = batch.column(field("embedding"))
            lengths = pc.fill_null(pc.list_value_length(embedding), -1).to_numpy(zero_copy_only=False)
            fits = np.flatnonzero(lengths == dim)
            visual = np.zeros((n, dim), np.float32)
            if len(fits):
                visual[fits] = vectors.matrix(embedding.take(pa.array(fits)), dim)
            ok = np.zeros(n, bool)
            ok[fits] = _finite_rows(visual[fits])
            visual[~ok] = 0.0
            unit_visual = vectors.unit_rows(visual)
            factor_column = batch.column(field("factor"))
            warm = factor_column.is_valid().to_numpy(zero_copy_only=False)
            factor = np.zeros((n, rank), np.float32)
            if warm.any():
                factor[warm] = vectors.matrix(factor_column.filter(pa.array(warm)), rank)
            cold = ~warm & ok
            if cold.any():
                factor[cold] = ridge.predict(weights_bc.value, unit_visual[cold])
            unit_factor = vectors.unit_rows(factor)
            mixed = blend.blended_vectors(unit_factor, unit_visual, alpha)
            # An item without a usable picture gets a zero vector: the kernels leave it out as invalid.
            mixed[~ok] = 0.0
            out = pa.RecordBatch.from_arrays(
                [batch.column(field(name)) for name in ("item_id", "model", "pooling", "weights")]
                + [
                    pa.array(np.full(n, rank + dim, np.int32)),
                    pa.FixedSizeListArray.from_arrays(pa.array(mixed.ravel()), rank + dim).cast(pa.list_(pa.float32())),
                    pa.FixedSizeListArray.from_arrays(pa.array(unit_factor.ravel()), rank).cast(pa.list_(pa.float32())),
                    pa.array(warm),
                ],
                names=["item_id", "model", "pooling", "weights", "dim", "embedding", "factor", "warm"],
            )
            schema = schema or out.schema
            yield out

    return blend_batches


def with_factors(embeddings, item_factors):
    """The embeddings' item_id, kind columns and embedding, with each warm item's ALS ``factor``
    (null for cold items)."""
    rows = embeddings.select("item_id", "model", "pooling", "weights", "embedding")
    return rows.join(item_factors, "item_id", "left")


def fit_map(joined, dim: int, rank: int, ridge_lambda: float) -> tuple[np.ndarray, int]:
    """The ridge map learned on the warm items of ``with_factors``."""
    from pyspark.sql import functions as F

    warm = joined.filter(F.col("factor").isNotNull() & (F.size("embedding") == dim))
    return ridge.fit(warm, dim, rank, ridge_lambda)


def blended(spark, joined, weights: np.ndarray, alpha: float, dim: int, rank: int, held: list):
    """DataFrame of BLENDED rows: an embeddings table for the kernels (``embedding`` the blended
    vector, ``dim`` its length), each item's unit ``factor`` and whether it is ``warm``."""
    weights_bc = spark.sparkContext.broadcast(weights)
    held.append(weights_bc)
    return joined.mapInArrow(_blend_function(weights_bc, alpha, dim, rank), BLENDED)
