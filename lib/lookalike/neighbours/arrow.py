"""Arrow helpers shared by the exact and the IVF stage: vectors out of the packed binary column,
a DataFrame collected as one Arrow table, and the PARTIAL rows that both scorers emit."""

from __future__ import annotations

import numpy as np

# Scored but not yet ranked: neighbour_index is the candidate's position in item_id order.
PARTIAL = "item_id string, neighbour_index long, neighbour_id string, score float"


def to_arrow(frame):
    """``frame.toArrow()``, which Spark 3.5 (EMR 7, make test-compat) lacks: there, the private
    collect that toArrow() wraps in Spark 4."""
    if hasattr(frame, "toArrow"):
        return frame.toArrow()
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    batches = frame._collect_as_arrow()
    return pa.Table.from_batches(batches) if batches else to_arrow_schema(frame.schema).empty_table()


def vectors(column, dim: int) -> np.ndarray:
    """A binary column of packed float32 vectors as an (n, dim) array, without a copy if it can."""
    import pyarrow as pa

    n = len(column)
    width = 8 if pa.types.is_large_binary(column.type) else 4
    buffers = column.buffers()
    offsets = np.frombuffer(
        buffers[1], dtype=np.int64 if width == 8 else np.int32, count=n + 1, offset=column.offset * width
    )
    if n and not (np.diff(offsets) == 4 * dim).all():
        raise ValueError(f"vectors of unexpected size in a block of {n} queries (want {dim} floats)")
    unpacked = np.frombuffer(buffers[2], dtype=np.float32, count=n * dim, offset=int(offsets[0])).reshape(n, dim)
    return unpacked if unpacked.flags.aligned else unpacked.copy()


def partial_batch(item_ids, neighbour_index, neighbour_ids, scores):
    """One Arrow batch of PARTIAL rows."""
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(
        [
            pa.array(item_ids, pa.string()),
            pa.array(neighbour_index, pa.int64()),
            pa.array(neighbour_ids, pa.string()),
            pa.array(scores, pa.float32()),
        ],
        names=["item_id", "neighbour_index", "neighbour_id", "score"],
    )
