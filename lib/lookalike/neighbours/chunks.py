"""The candidates as the driver broadcasts them: chunks of at most ``neighbours.broadcast_max_mb``
in item_id order (``candidate_chunks``), or, with neighbours.same, whole groups packed into chunks
(``group_packs``, ``grouped_candidate_chunks``) so that each chunk is scored only by the queries of
its groups. Shared by the exact search and the duplicates job's pair search."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lookalike.neighbours import arrow, rules
from lookalike.neighbours.prepare import USABLE

# Per-candidate overhead of a broadcast chunk besides the vector (the pickled id and its slot).
ID_BYTES = 64


@dataclass(frozen=True)
class Chunk:
    """Candidates ``offset .. offset + len(ids) - 1`` in item_id order, as broadcast."""

    offset: int
    ids: np.ndarray  # object array of str, sorted
    vectors: np.ndarray  # float32 (len(ids), dim), unit rows; with neighbours.same, rows ``order``
    codes: np.ndarray | None = None  # (len(ids), width) int64 rule codes, id order
    # neighbours.same: the vectors are stored by (group, id), so that a group is one slice and a
    # query block is scored against its own group only (sum of n_g^2 work, not N^2). ``order``:
    # the chunk position of each stored row (candidates without a group are left out).
    order: np.ndarray | None = None
    group_values: np.ndarray | None = None  # sorted group codes present
    group_bounds: np.ndarray | None = None  # (len(group_values) + 1,) slices of the stored rows

    @property
    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self.codes, self.order) if a is not None)
        return int(self.vectors.nbytes + ID_BYTES * len(self.ids) + extra)

    def group_slice(self, value: int) -> tuple[int, int]:
        if self.group_values is None or self.group_bounds is None:
            raise ValueError("the chunk's candidates are not stored by group (neighbours.same)")
        at = int(np.searchsorted(self.group_values, value))
        if at == len(self.group_values) or self.group_values[at] != value:
            return 0, 0
        return int(self.group_bounds[at]), int(self.group_bounds[at + 1])


def rows_per_chunk(broadcast_max_mb: float, dim: int) -> int:
    return max(1, int(broadcast_max_mb * 2**20 // (4 * dim + ID_BYTES)))


def queries(ordered):
    """The valid rows of ``ordered_items``: every one is a query."""
    return ordered.filter("valid")


def _chunk(
    offset: int, ids: list, vectors: np.ndarray, codes: np.ndarray | None = None, layout: rules.Layout = rules.NO_RULES
) -> Chunk:
    sorted_ids = np.array(ids, dtype=object)
    if len(sorted_ids) > 1 and not (sorted_ids[1:] > sorted_ids[:-1]).all():
        raise RuntimeError("candidates arrived out of item_id order")
    if not layout.same:
        return Chunk(offset, sorted_ids, np.ascontiguousarray(vectors), codes)
    if codes is None:
        raise ValueError("neighbours.same needs the candidates' rule codes")
    group = codes[:, 0]
    grouped = np.flatnonzero(group != rules.NULL)
    # Stable: within a group, stored order is id order, so a column's rank is its id's rank.
    order = grouped[np.argsort(group[grouped], kind="stable")]
    values, starts = np.unique(group[order], return_index=True)
    return Chunk(
        offset,
        sorted_ids,
        np.ascontiguousarray(vectors[order]),
        codes,
        order,
        values,
        np.append(starts, len(order)).astype(np.int64),
    )


def candidate_chunks(
    ordered, n_candidates: int, chunk_rows: int, dim: int, layout: rules.Layout = rules.NO_RULES, base: int = 0
) -> Iterator[Chunk]:
    """Candidates brought to the driver in item_id order, at most ``chunk_rows`` at a time, the
    first numbered ``base``.

    Partitions are range-sorted, so reading them one after another is global id order. When all
    fit in one chunk they come in one Arrow collect; otherwise partition by partition, so that the
    driver never holds more than a chunk and a partition."""
    rows = ordered.filter(USABLE).select("item_id", "vector", "codes")
    if n_candidates <= chunk_rows:
        table = arrow.to_arrow(rows)
        unit = arrow.vectors(table.column("vector").combine_chunks(), dim)
        table_codes = rules.codes_of(table.column("codes").combine_chunks(), layout)
        yield _chunk(base, table.column("item_id").to_pylist(), unit, table_codes, layout)
        return
    ids: list[str] = []
    blobs: list = []
    codes: list = []
    offset = base
    last: str | None = None

    def cut():
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
        packed = np.array(codes, dtype=np.int64).reshape(len(ids), layout.width) if layout.active else None
        return _chunk(offset, ids, vectors, packed, layout)

    for item_id, vector, item_codes in rows.toLocalIterator(True):
        if last is not None and not item_id > last:
            raise RuntimeError(f"candidates arrived out of item_id order ({last!r} then {item_id!r})")
        last = item_id
        ids.append(item_id)
        blobs.append(vector)
        codes.append(item_codes)
        if len(ids) == chunk_rows:
            yield cut()
            offset += len(ids)
            ids, blobs, codes = [], [], []
    if ids:
        yield cut()


@dataclass(frozen=True)
class Pack:
    """The candidates of groups ``low`` .. ``high`` - 1 (``same`` codes), ``rows`` of them."""

    low: int
    high: int
    rows: int

    def of(self, frame):
        """The rows of ``frame`` whose group is in the pack."""
        from pyspark.sql import functions as F

        group = F.col("codes")[0]
        # Codes are hashes (keys._numbered): NULL (no group) may fall inside a pack's range.
        return frame.filter((group >= self.low) & (group < self.high) & (group != rules.NULL))


def group_packs(codes: np.ndarray, counts: np.ndarray, chunk_rows: int) -> list[Pack]:
    """Consecutive ``same`` codes packed into as few chunks as whole groups allow: a pack holds at
    most ``chunk_rows`` candidates, except a group larger than that, which is a pack of its own
    (``candidate_chunks`` then cuts it into pieces). ``codes`` ascending, with each's candidate
    count; a pack is the range of codes from its first to the next pack's first."""
    packs: list[Pack] = []
    low, rows = None, 0
    for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
        if low is not None and rows + count > chunk_rows:
            packs.append(Pack(low, code, rows))
            low, rows = None, 0
        if low is None:
            low = code
        rows += count
    if low is not None:
        packs.append(Pack(low, int(codes[-1]) + 1, rows))
    return packs


def grouped_candidate_chunks(
    ordered, chunk_rows: int, dim: int, layout: rules.Layout
) -> tuple[list[Pack], Iterator[tuple[Pack, Chunk]]]:
    """neighbours.same over more candidates than one chunk: the packs, and each pack's chunks (one,
    or a large group's pieces) in order, numbered consecutively. A candidate's number is then its
    rank by (pack, item_id), not by item_id; within a group, the only place a query's candidates
    come from, both orders agree, so ties still break by id."""
    from pyspark.sql import functions as F

    group = F.col("codes")[0]
    sizes = arrow.to_arrow(
        ordered.filter(USABLE).filter(group != rules.NULL).groupBy(group.alias("code")).count().orderBy("code")
    )
    packs = group_packs(sizes.column("code").to_numpy(), sizes.column("count").to_numpy(), chunk_rows)

    def chunks():
        base = 0
        for pack in packs:
            for chunk in candidate_chunks(pack.of(ordered), pack.rows, chunk_rows, dim, layout, base):
                yield pack, chunk
            base += pack.rows

    return packs, chunks()
