"""Arrow list columns of vectors as numpy matrices, and unit rows."""

from __future__ import annotations

import numpy as np


def matrix(column, dim: int) -> np.ndarray:
    """A pyarrow list<float> column of vectors of length ``dim`` (no nulls) -> float32 (n, dim)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if len(values) != len(column) * dim:
        raise ValueError(f"expected vectors of length {dim}, got {len(values)} values for {len(column)} rows")
    return values.reshape(len(column), dim)


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (float64 sum); a zero row stays zero."""
    norms = np.sqrt(np.einsum("ij,ij->i", rows.astype(np.float64), rows.astype(np.float64)))
    return (rows / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
