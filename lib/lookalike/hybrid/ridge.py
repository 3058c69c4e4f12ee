"""The ridge map from pictures to behaviour: W minimising |[x 1] W - y|^2 + ridge * |W without its
bias row|^2 over the warm items, x an item's unit visual embedding and y its unit ALS factor.

The normal equations' two sums, X^T X and X^T Y, are added up partition by partition on the
executors and across partitions by a tree reduce, so no executor or the driver ever holds the
item matrix; the (d+1) x (d+1) system is solved on the driver. The bias is not penalised: the
average taste of the catalogue is not shrunk towards nothing."""

from __future__ import annotations

import numpy as np

PARTIAL = "xtx binary, xty binary, rows long"


def design(unit_visual: np.ndarray) -> np.ndarray:
    """The rows of X: each unit visual embedding with a 1 appended (the bias)."""
    return np.hstack([unit_visual.astype(np.float64), np.ones((len(unit_visual), 1))])


def normal_sums(unit_visual: np.ndarray, unit_factor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(X^T X, X^T Y) of some warm items, in float64."""
    x = design(unit_visual)
    return x.T @ x, x.T @ unit_factor.astype(np.float64)


def solve(xtx: np.ndarray, xty: np.ndarray, ridge: float) -> np.ndarray:
    """W, (d+1) x rank, from the summed normal equations."""
    penalty = np.full(len(xtx), float(ridge))
    penalty[-1] = 0.0
    system = xtx + np.diag(penalty)
    try:
        return np.linalg.solve(system, xty)
    except np.linalg.LinAlgError:
        # Singular (ridge 0 and fewer warm items than dimensions): the least-norm solution.
        return np.linalg.lstsq(system, xty, rcond=None)[0]


def predict(weights: np.ndarray, unit_visual: np.ndarray) -> np.ndarray:
    """Predicted factors (not normalised) of items from their unit visual embeddings."""
    return design(unit_visual) @ weights


def _partial_function(dim: int, rank: int):
    def partial(batches):
        import pyarrow as pa

        from lookalike.hybrid import vectors

        xtx = np.zeros((dim + 1, dim + 1))
        xty = np.zeros((dim + 1, rank))
        rows = 0
        for batch in batches:
            if not batch.num_rows:
                continue
            visual = vectors.matrix(batch.column(batch.schema.get_field_index("embedding")), dim)
            factor = vectors.matrix(batch.column(batch.schema.get_field_index("factor")), rank)
            # A broken picture (NaN, all zeros) teaches the map nothing; the kernels leave it out too.
            keep = np.isfinite(visual).all(axis=1) & (np.abs(visual).sum(axis=1) > 0) & np.isfinite(factor).all(axis=1)
            a, b = normal_sums(vectors.unit_rows(visual[keep]), vectors.unit_rows(factor[keep]))
            xtx += a
            xty += b
            rows += int(keep.sum())
        yield pa.RecordBatch.from_pylist(
            [{"xtx": xtx.tobytes(), "xty": xty.tobytes(), "rows": rows}],
            schema=pa.schema([("xtx", pa.binary()), ("xty", pa.binary()), ("rows", pa.int64())]),
        )

    return partial


def fit(warm, dim: int, rank: int, ridge: float) -> tuple[np.ndarray, int]:
    """(W, warm items used) from a DataFrame of warm items with ``embedding`` (dim floats) and
    ``factor`` (rank floats)."""

    def decoded(row):
        return (
            np.frombuffer(row["xtx"], np.float64).reshape(dim + 1, dim + 1),
            np.frombuffer(row["xty"], np.float64).reshape(dim + 1, rank),
            row["rows"],
        )

    def added(a, b):
        return a[0] + b[0], a[1] + b[1], a[2] + b[2]

    xtx, xty, rows = (
        warm.select("embedding", "factor")
        .mapInArrow(_partial_function(dim, rank), PARTIAL)
        .rdd.map(decoded)
        .treeReduce(added)
    )
    return solve(xtx, xty, ridge), int(rows)
